/* ingestd.book._cbook: the order book of ingestd/book/book.py, compiled (CPython C API).
 *
 * Same contract as the pure-Python OrderBook (ingestd/book/book.py), which stays the reference and
 * the fallback: two price -> qty maps keyed by the float64 price itself (exact comparison, no
 * rounding), a quantity that is numerically zero deletes the level. Each side is an open-addressing hash table of
 * doubles (linear probing, backward-shift deletion, load <= 1/2) instead of a dict of Python
 * floats, so applying a level costs a hash and a probe, no Python object; its best prices are
 * cached (see TOPK), so the tops the sync machine reads after every diff cost nothing.
 *
 * Levels are read from any iterable of 2-item sequences of numbers; a list of (float, float)
 * tuples (what the parser builds) takes a fast path without iterator or number protocol calls.
 * A NaN price cannot be a book key (it equals nothing, itself included): such a level is skipped,
 * as the pure-Python book does. -0.0 and 0.0 are one key, as they are in a dict.
 *
 * Converting a number that is not a float runs Python code (__float__, __index__), which may
 * change the list being read or the book itself: no borrowed reference is held across it, sizes
 * are read again after it, and the book's state is only touched between conversions. Results are
 * copied out of the tables before Python objects are made (an allocation may run the garbage
 * collector, and a finalizer may change the book). tests/test_cext_safety.py covers this.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* one side: an open-addressing table of (price, qty) and a cache of its best prices            */

#define TOPK 64
/* Best prices kept sorted per side. The cache holds every key of the side at or better than
 * `edge` (bids: price >= edge), at most TOPK of them: a key set in that range enters it, a key
 * deleted in it leaves it; when a new key does not fit, the worst cached one is dropped and `edge`
 * moves up to the new worst. Only a cache emptied by deletions (the market moved past everything
 * cached) is rebuilt from the table, on the next read: on USDⓈ-M BTCUSDT the touch is deleted once
 * per ~14 diffs, which the pure-Python book answers with a pass over the whole side each time. */

typedef struct {
    double *keys; /* NaN marks an empty slot (a NaN price is never stored) */
    double *vals;
    Py_ssize_t cap; /* a power of two, or 0 before the first insert */
    Py_ssize_t count;
    int shift; /* 64 - log2(cap), for Fibonacci hashing */
    int desc;  /* bids: best = highest */
    int top_ok;
    int top_n;
    double edge;      /* every key at or better than this is cached */
    double top[TOPK]; /* best first */
} Side;

static inline int
better(const Side *s, double a, double b)
{
    return s->desc ? a > b : a < b;
}

static inline uint64_t
key_bits(double k)
{
    uint64_t b;
    if (k == 0.0) k = 0.0; /* -0.0 and 0.0 are one key */
    memcpy(&b, &k, sizeof b);
    return b;
}

static inline Py_ssize_t
slot_of(const Side *s, double k)
{
    return (Py_ssize_t)((key_bits(k) * 0x9E3779B97F4A7C15ULL) >> s->shift);
}

static void
side_init(Side *s, int desc)
{
    memset(s, 0, sizeof *s);
    s->shift = 64;
    s->desc = desc;
    s->top_ok = 1; /* empty side, empty cache: every key would enter */
    s->edge = desc ? -INFINITY : INFINITY;
}

static int
side_alloc(Side *s, Py_ssize_t cap)
{
    if (cap > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(double)) {
        PyErr_NoMemory();
        return -1;
    }
    double *keys = PyMem_Malloc((size_t)cap * sizeof(double));
    double *vals = PyMem_Malloc((size_t)cap * sizeof(double));
    if (keys == NULL || vals == NULL) {
        PyMem_Free(keys);
        PyMem_Free(vals);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < cap; i++) keys[i] = NAN;
    s->keys = keys;
    s->vals = vals;
    s->cap = cap;
    s->count = 0;
    int log2 = 0;
    while (((Py_ssize_t)1 << log2) < cap) log2++;
    s->shift = 64 - log2;
    return 0;
}

/* Forget every level (keeps the orientation). */
static void
side_clear(Side *s)
{
    PyMem_Free(s->keys);
    PyMem_Free(s->vals);
    side_init(s, s->desc);
}

/* Insert a key known to be absent, with room guaranteed (rehashing: the cache is unchanged). */
static void
side_put_new(Side *s, double k, double v)
{
    Py_ssize_t mask = s->cap - 1;
    Py_ssize_t i = slot_of(s, k);
    while (s->keys[i] == s->keys[i]) i = (i + 1) & mask;
    s->keys[i] = k;
    s->vals[i] = v;
    s->count++;
}

static int
side_rehash(Side *s, Py_ssize_t cap)
{
    double *keys = s->keys, *vals = s->vals;
    Py_ssize_t old_cap = s->cap, count = s->count;
    int shift = s->shift;
    if (side_alloc(s, cap) < 0) {
        s->keys = keys;
        s->vals = vals;
        s->cap = old_cap;
        s->count = count;
        s->shift = shift;
        return -1;
    }
    for (Py_ssize_t i = 0; i < old_cap; i++) {
        if (keys[i] == keys[i]) side_put_new(s, keys[i], vals[i]);
    }
    PyMem_Free(keys);
    PyMem_Free(vals);
    return 0;
}

/* Position of k in the cache, or of where it would go (binary search, best first). */
static int
top_pos(const Side *s, double k)
{
    int lo = 0, hi = s->top_n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (better(s, s->top[mid], k)) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* A key was added to the table. */
static void
top_added(Side *s, double k)
{
    if (!s->top_ok || better(s, s->edge, k)) return;
    int at = top_pos(s, k);
    int n = s->top_n;
    if (n == TOPK) {
        /* Full: the worst cached key leaves, and the range shrinks to what is still cached. */
        if (at == TOPK) {
            s->edge = s->top[TOPK - 1];
            return;
        }
        n = TOPK - 1;
    }
    memmove(&s->top[at + 1], &s->top[at], (size_t)(n - at) * sizeof(double));
    s->top[at] = k;
    s->top_n = n + 1;
    if (n + 1 == TOPK) s->edge = s->top[TOPK - 1];
}

/* A key was deleted from the table. */
static void
top_removed(Side *s, double k)
{
    if (!s->top_ok || better(s, s->edge, k)) return;
    int at = top_pos(s, k);
    if (at < s->top_n && s->top[at] == k) {
        memmove(&s->top[at], &s->top[at + 1], (size_t)(s->top_n - at - 1) * sizeof(double));
        s->top_n--;
    }
    if (s->top_n == 0 && s->count > 0) s->top_ok = 0;
}

/* Set k -> v (k is not NaN). */
static int
side_set(Side *s, double k, double v)
{
    if (k == 0.0) k = 0.0;
    if ((s->count + 1) * 2 > s->cap) {
        if (side_rehash(s, s->cap ? s->cap * 2 : 16) < 0) return -1;
    }
    Py_ssize_t mask = s->cap - 1;
    Py_ssize_t i = slot_of(s, k);
    for (;;) {
        double cur = s->keys[i];
        if (cur != cur) break;
        if (cur == k) {
            s->vals[i] = v;
            return 0;
        }
        i = (i + 1) & mask;
    }
    s->keys[i] = k;
    s->vals[i] = v;
    s->count++;
    top_added(s, k);
    return 0;
}

/* Delete k; 1 when it was there. Backward-shift deletion keeps probe chains tombstone-free. */
static int
side_del(Side *s, double k)
{
    if (s->count == 0) return 0;
    if (k == 0.0) k = 0.0;
    Py_ssize_t mask = s->cap - 1;
    Py_ssize_t i = slot_of(s, k);
    for (;;) {
        double cur = s->keys[i];
        if (cur != cur) return 0;
        if (cur == k) break;
        i = (i + 1) & mask;
    }
    Py_ssize_t hole = i;
    Py_ssize_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        double kj = s->keys[j];
        if (kj != kj) break;
        Py_ssize_t home = slot_of(s, kj);
        /* Move kj into the hole unless its home lies cyclically in (hole, j]. */
        int stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (!stays) {
            s->keys[hole] = kj;
            s->vals[hole] = s->vals[j];
            hole = j;
        }
    }
    s->keys[hole] = NAN;
    s->count--;
    top_removed(s, k);
    return 1;
}

static int
side_get(const Side *s, double k, double *v)
{
    if (s->count == 0) return 0;
    Py_ssize_t mask = s->cap - 1;
    Py_ssize_t i = slot_of(s, k);
    for (;;) {
        double cur = s->keys[i];
        if (cur != cur) return 0;
        if (cur == k) {
            *v = s->vals[i];
            return 1;
        }
        i = (i + 1) & mask;
    }
}

/* The side's keys copied into a new buffer (count of them); NULL with MemoryError. */
static double *
side_keys(const Side *s)
{
    double *tmp = PyMem_Malloc((size_t)(s->count ? s->count : 1) * sizeof(double));
    if (tmp == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    Py_ssize_t m = 0;
    for (Py_ssize_t i = 0; i < s->cap; i++) {
        if (s->keys[i] == s->keys[i]) tmp[m++] = s->keys[i];
    }
    return tmp;
}

static int
cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

static int
cmp_asc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Move the k best keys of a[0..n) to its front, in any order (quickselect, Hoare partition). */
static void
select_top(double *a, Py_ssize_t n, Py_ssize_t k, int desc)
{
    Py_ssize_t lo = 0, hi = n - 1;
    while (lo < hi) {
        double pivot = a[lo + (hi - lo) / 2];
        Py_ssize_t i = lo, j = hi;
        while (i <= j) {
            if (desc) {
                while (a[i] > pivot) i++;
                while (a[j] < pivot) j--;
            } else {
                while (a[i] < pivot) i++;
                while (a[j] > pivot) j--;
            }
            if (i <= j) {
                double t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else return;
    }
}

/* The k best keys, best first, into a new buffer; NULL with MemoryError. */
static double *
side_best_keys(const Side *s, Py_ssize_t k)
{
    double *tmp = side_keys(s);
    if (tmp == NULL) return NULL;
    if (k < s->count) select_top(tmp, s->count, k, s->desc);
    qsort(tmp, (size_t)k, sizeof(double), s->desc ? cmp_desc : cmp_asc);
    return tmp;
}

/* Rebuild the cache from the table when it is stale; -1 with MemoryError. */
static int
side_top_ready(Side *s)
{
    if (s->top_ok) return 0;
    Py_ssize_t k = s->count < TOPK ? s->count : TOPK;
    if (k > 0) {
        double *best = side_best_keys(s, k);
        if (best == NULL) return -1;
        memcpy(s->top, best, (size_t)k * sizeof(double));
        PyMem_Free(best);
    }
    s->top_n = (int)k;
    s->top_ok = 1;
    /* Everything is cached when the side fits; else the range ends at the worst cached key. */
    s->edge = k < s->count ? s->top[k - 1] : (s->desc ? -INFINITY : INFINITY);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* reading levels                                                                              */

/* Calls fn(ctx, price, qty) for each level of `levels`; -1 with an exception set on bad input
 * (levels before the bad one have been handled, as with the pure-Python loop). */
typedef int (*level_fn)(void *ctx, double p, double q);

/* The two numbers of one level. `item` must be a strong reference: converting a non-float runs
 * Python code (__float__, __index__) that may drop every other reference to it. Both items are
 * taken (as `p, q = item` does) and held before either is converted, since a conversion may
 * empty or refill a list item under us. */
static int
pair_values(PyObject *item, double *p, double *q)
{
    if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2) {
        PyObject *a = PyTuple_GET_ITEM(item, 0), *b = PyTuple_GET_ITEM(item, 1);
        if (PyFloat_CheckExact(a) && PyFloat_CheckExact(b)) {
            *p = PyFloat_AS_DOUBLE(a);
            *q = PyFloat_AS_DOUBLE(b);
            return 0;
        }
    }
    PyObject *seq = PySequence_Fast(item, "a level must be a (price, qty) pair");
    if (seq == NULL) return -1;
    if (PySequence_Fast_GET_SIZE(seq) != 2) {
        PyErr_Format(PyExc_ValueError, "a level must be a (price, qty) pair, got %zd item(s)",
                     PySequence_Fast_GET_SIZE(seq));
        Py_DECREF(seq);
        return -1;
    }
    PyObject *pa = Py_NewRef(PySequence_Fast_GET_ITEM(seq, 0));
    PyObject *qa = Py_NewRef(PySequence_Fast_GET_ITEM(seq, 1));
    Py_DECREF(seq);
    double a = PyFloat_AsDouble(pa);
    double b = a == -1.0 && PyErr_Occurred() ? -1.0 : PyFloat_AsDouble(qa);
    Py_DECREF(pa);
    Py_DECREF(qa);
    if ((a == -1.0 || b == -1.0) && PyErr_Occurred()) return -1;
    *p = a;
    *q = b;
    return 0;
}

static int
for_each_level(PyObject *levels, level_fn fn, void *ctx)
{
    double p, q;
    if (PyList_CheckExact(levels) || PyTuple_CheckExact(levels)) {
        /* Indexing with the size read again each time and a strong reference on the item: a
         * conversion in pair_values may run Python code that shrinks, clears or grows the list
         * (the loop then ends where the list now ends, as a Python for loop does). */
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(levels); i++) {
            PyObject *item = Py_NewRef(PySequence_Fast_GET_ITEM(levels, i));
            int rc = pair_values(item, &p, &q);
            Py_DECREF(item);
            if (rc < 0 || fn(ctx, p, q) < 0) return -1;
        }
        return 0;
    }
    PyObject *it = PyObject_GetIter(levels);
    if (it == NULL) return -1;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        int bad = pair_values(item, &p, &q) < 0 || fn(ctx, p, q) < 0;
        Py_DECREF(item);
        if (bad) {
            Py_DECREF(it);
            return -1;
        }
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* the OrderBook type                                                                          */

typedef struct {
    PyObject_HEAD
    Side bids;
    Side asks;
    PyObject *last_update_id; /* int or None */
} Book;

static PyObject *
Book_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Book *self = (Book *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    side_init(&self->bids, 1);
    side_init(&self->asks, 0);
    self->last_update_id = Py_NewRef(Py_None);
    return (PyObject *)self;
}

static int
Book_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    if ((kwds != NULL && PyDict_GET_SIZE(kwds)) || PyTuple_GET_SIZE(args)) {
        PyErr_SetString(PyExc_TypeError, "OrderBook() takes no arguments");
        return -1;
    }
    return 0;
}

static void
Book_dealloc(Book *self)
{
    side_clear(&self->bids);
    side_clear(&self->asks);
    Py_CLEAR(self->last_update_id);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The best price of a side: 1 and *p, 0 when the side is empty, -1 with an exception. */
static int
side_best(Side *s, double *p)
{
    if (side_top_ready(s) < 0) return -1;
    if (s->top_n == 0) return 0;
    *p = s->top[0];
    return 1;
}

static int
apply_bid(void *vside, double p, double q)
{
    Side *s = vside;
    if (p != p) return 0; /* NaN price: never a key */
    if (q == 0.0) {
        side_del(s, p);
        return 0;
    }
    return side_set(s, p, q);
}

static int
load_level(void *vside, double p, double q)
{
    if (p != p || q == 0.0) return 0;
    return side_set((Side *)vside, p, q);
}

static void
set_last_update_id(Book *self, PyObject *value)
{
    Py_XSETREF(self->last_update_id, Py_NewRef(value));
}

static PyObject *
Book_clear(Book *self, PyObject *Py_UNUSED(ignored))
{
    side_clear(&self->bids);
    side_clear(&self->asks);
    set_last_update_id(self, Py_None);
    Py_RETURN_NONE;
}

static PyObject *
Book_load_snapshot(Book *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"bids", "asks", "last_update_id", NULL};
    PyObject *bids, *asks, *last;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:load_snapshot", kwlist, &bids, &asks, &last))
        return NULL;
    set_last_update_id(self, last);
    side_clear(&self->bids);
    side_clear(&self->asks);
    /* Bulk load: the caches are built once, on the first read. */
    self->bids.top_ok = self->asks.top_ok = 0;
    int rc = for_each_level(bids, load_level, &self->bids);
    if (rc == 0) rc = for_each_level(asks, load_level, &self->asks);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Book_apply(Book *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"bids", "asks", "final_update_id", NULL};
    PyObject *bids, *asks, *final = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O:apply", kwlist, &bids, &asks, &final))
        return NULL;
    if (final != Py_None) set_last_update_id(self, final);
    if (for_each_level(bids, apply_bid, &self->bids) < 0) return NULL;
    if (for_each_level(asks, apply_bid, &self->asks) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *
best_price(Side *s)
{
    double p;
    int rc = side_best(s, &p);
    if (rc < 0) return NULL;
    if (rc == 0) Py_RETURN_NONE;
    return PyFloat_FromDouble(p);
}

static PyObject *
Book_best_bid_price(Book *self, PyObject *Py_UNUSED(ignored))
{
    return best_price(&self->bids);
}

static PyObject *
Book_best_ask_price(Book *self, PyObject *Py_UNUSED(ignored))
{
    return best_price(&self->asks);
}

static PyObject *
level_tuple(double p, double q)
{
    PyObject *pf = PyFloat_FromDouble(p);
    PyObject *qf = pf ? PyFloat_FromDouble(q) : NULL;
    if (qf == NULL) {
        Py_XDECREF(pf);
        return NULL;
    }
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(pf);
        Py_DECREF(qf);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, pf);
    PyTuple_SET_ITEM(t, 1, qf);
    return t;
}

static PyObject *
best_level(Side *s)
{
    double p, q = 0.0;
    int rc = side_best(s, &p);
    if (rc < 0) return NULL;
    if (rc == 0) Py_RETURN_NONE;
    side_get(s, p, &q);
    return level_tuple(p, q);
}

static PyObject *
Book_best_bid(Book *self, PyObject *Py_UNUSED(ignored))
{
    return best_level(&self->bids);
}

static PyObject *
Book_best_ask(Book *self, PyObject *Py_UNUSED(ignored))
{
    return best_level(&self->asks);
}

static PyObject *
Book_crossed(Book *self, PyObject *Py_UNUSED(ignored))
{
    double bid, ask;
    int hb = side_best(&self->bids, &bid);
    if (hb < 0) return NULL;
    int ha = side_best(&self->asks, &ask);
    if (ha < 0) return NULL;
    return PyBool_FromLong(hb && ha && bid >= ask);
}

/* The n best levels as a list of (price, qty) tuples, best first. Every pair is copied out of
 * the side before the first Python object is made: an allocation may run the garbage collector,
 * and a finalizer may change the book. */
static PyObject *
side_top(Side *s, Py_ssize_t n)
{
    if (side_top_ready(s) < 0) return NULL;
    Py_ssize_t k = n < s->count ? n : s->count;
    if (k == 0) return PyList_New(0);
    double *pairs = PyMem_Malloc((size_t)k * 2 * sizeof(double));
    if (pairs == NULL) return PyErr_NoMemory();
    double *keys = NULL;
    const double *best = s->top;
    if (k > s->top_n) {
        keys = side_best_keys(s, k);
        if (keys == NULL) {
            PyMem_Free(pairs);
            return NULL;
        }
        best = keys;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        double q = 0.0;
        side_get(s, best[i], &q);
        pairs[2 * i] = best[i];
        pairs[2 * i + 1] = q;
    }
    PyMem_Free(keys);
    PyObject *out = PyList_New(k);
    for (Py_ssize_t i = 0; out != NULL && i < k; i++) {
        PyObject *t = level_tuple(pairs[2 * i], pairs[2 * i + 1]);
        if (t == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, i, t);
    }
    PyMem_Free(pairs);
    return out;
}

static PyObject *
Book_levels(Book *self, PyObject *arg)
{
    Py_ssize_t n = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0) n = 0;
    PyObject *bids = side_top(&self->bids, n);
    if (bids == NULL) return NULL;
    PyObject *asks = side_top(&self->asks, n);
    if (asks == NULL) {
        Py_DECREF(bids);
        return NULL;
    }
    return Py_BuildValue("(NN)", bids, asks);
}

/* The side as a new dict. As in side_top, the pairs are copied out first: making the dict's
 * objects may run the garbage collector, whose finalizers may change the book. */
static PyObject *
side_dict(const Side *s)
{
    Py_ssize_t n = s->count;
    double *pairs = PyMem_Malloc((size_t)(n ? n : 1) * 2 * sizeof(double));
    if (pairs == NULL) return PyErr_NoMemory();
    Py_ssize_t m = 0;
    for (Py_ssize_t i = 0; i < s->cap; i++) {
        double k = s->keys[i];
        if (k != k) continue;
        pairs[2 * m] = k;
        pairs[2 * m + 1] = s->vals[i];
        m++;
    }
    PyObject *d = PyDict_New();
    for (Py_ssize_t i = 0; d != NULL && i < m; i++) {
        PyObject *pk = PyFloat_FromDouble(pairs[2 * i]), *pv = PyFloat_FromDouble(pairs[2 * i + 1]);
        int rc = pk && pv ? PyDict_SetItem(d, pk, pv) : -1;
        Py_XDECREF(pk);
        Py_XDECREF(pv);
        if (rc < 0) Py_CLEAR(d);
    }
    PyMem_Free(pairs);
    return d;
}

static PyObject *
Book_get_bids(Book *self, void *closure)
{
    return side_dict(&self->bids);
}

static PyObject *
Book_get_asks(Book *self, void *closure)
{
    return side_dict(&self->asks);
}

static PyObject *
Book_get_last(Book *self, void *closure)
{
    return Py_NewRef(self->last_update_id);
}

static int
Book_set_last(Book *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete last_update_id");
        return -1;
    }
    set_last_update_id(self, value);
    return 0;
}

static Py_ssize_t
Book_len(Book *self)
{
    return self->bids.count + self->asks.count;
}

static PyObject *
Book_repr(Book *self)
{
    PyObject *bb = Book_best_bid(self, NULL);
    if (bb == NULL) return NULL;
    PyObject *ba = Book_best_ask(self, NULL);
    if (ba == NULL) {
        Py_DECREF(bb);
        return NULL;
    }
    PyObject *r = PyUnicode_FromFormat("<OrderBook %zd bids / %zd asks, top %R / %R>", self->bids.count,
                                       self->asks.count, bb, ba);
    Py_DECREF(bb);
    Py_DECREF(ba);
    return r;
}

static PyMethodDef Book_methods[] = {
    {"clear", (PyCFunction)Book_clear, METH_NOARGS, "Forget every level."},
    {"load_snapshot", (PyCFunction)(void (*)(void))Book_load_snapshot, METH_VARARGS | METH_KEYWORDS,
     "Replace the whole book with a REST snapshot (zero quantities are skipped)."},
    {"apply", (PyCFunction)(void (*)(void))Book_apply, METH_VARARGS | METH_KEYWORDS,
     "Apply one diff's absolute quantities: set each level, or delete it when qty is 0."},
    {"best_bid_price", (PyCFunction)Book_best_bid_price, METH_NOARGS, "Highest bid price, or None."},
    {"best_ask_price", (PyCFunction)Book_best_ask_price, METH_NOARGS, "Lowest ask price, or None."},
    {"best_bid", (PyCFunction)Book_best_bid, METH_NOARGS, "(price, qty) of the highest bid, or None."},
    {"best_ask", (PyCFunction)Book_best_ask, METH_NOARGS, "(price, qty) of the lowest ask, or None."},
    {"crossed", (PyCFunction)Book_crossed, METH_NOARGS, "True when the best bid is at or above the best ask."},
    {"levels", (PyCFunction)Book_levels, METH_O,
     "The top n levels: (bids, highest first; asks, lowest first)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Book_getset[] = {
    {"bids", (getter)Book_get_bids, NULL, "The bids as a new price -> qty dict.", NULL},
    {"asks", (getter)Book_get_asks, NULL, "The asks as a new price -> qty dict.", NULL},
    {"last_update_id", (getter)Book_get_last, (setter)Book_set_last,
     "The update id the book is at: the snapshot's, then each applied diff's final id.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Book_as_sequence = {
    .sq_length = (lenfunc)Book_len,
};

static PyTypeObject BookType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ingestd.book._cbook.OrderBook",
    .tp_doc = PyDoc_STR("Bids and asks of one symbol (compiled; see ingestd.book.book.PyOrderBook)."),
    .tp_basicsize = sizeof(Book),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, /* the replay and the export subclass it */
    .tp_new = Book_new,
    .tp_init = Book_init,
    .tp_dealloc = (destructor)Book_dealloc,
    .tp_methods = Book_methods,
    .tp_getset = Book_getset,
    .tp_as_sequence = &Book_as_sequence,
    .tp_repr = (reprfunc)Book_repr,
};

static struct PyModuleDef cbook_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ingestd.book._cbook",
    .m_doc = "The compiled order book (ingestd.book.book.OrderBook when available).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__cbook(void)
{
    if (PyType_Ready(&BookType) < 0) return NULL;
    PyObject *m = PyModule_Create(&cbook_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "OrderBook", (PyObject *)&BookType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
