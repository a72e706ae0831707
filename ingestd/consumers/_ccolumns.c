/* ingestd.consumers._ccolumns: the column builder of ingestd/consumers/columns.py, compiled.
 *
 * Columns(plan) copies each appended record's stored fields into per-column C buffers laid out as
 * Arrow wants them (little-endian float64/int64 values, LSB-first validity and boolean bits, int32
 * list offsets), so the record can be freed at once. finish() hands the buffers over as bytes
 * (the parts format of columns.to_table) and starts empty again. The pure-Python PyColumns in
 * columns.py is the reference: both give the same tables (tests/test_columns.py).
 *
 * plan: a tuple of (attribute name, code, converter or None); codes as in columns.py: 0 float64,
 * 1 int64, 2 bool, 3 any object (kept in a list; the converter, if any, is applied first),
 * 4 depth levels (an iterable of (price, qty) pairs); +8: the value may be None.
 * A record whose fields do not fit raises TypeError/ValueError/OverflowError and is not appended
 * (every column is rolled back to the previous row).
 *
 * Reading a record runs Python code (attribute getters, converters, __float__ of a value that is
 * not a float): nothing borrowed is held across such a call (items are strong references, sizes
 * are read again, buffer pointers are taken after the conversion), and a call back into the
 * builder from that code (append or finish while an append is running) raises RuntimeError
 * instead of moving the buffers under the running append. finish() changes nothing until every
 * part is made: when it fails (MemoryError) every row is still there for the next finish().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { C_F64 = 0, C_I64 = 1, C_BOOL = 2, C_OBJ = 3, C_LEVELS = 4, C_NULLABLE = 8 };

typedef struct {
    char *data;
    Py_ssize_t len; /* bytes used */
    Py_ssize_t cap;
} Buf;

static int
buf_reserve(Buf *b, Py_ssize_t need)
{
    if (need <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap = cap > PY_SSIZE_T_MAX / 2 ? need : cap * 2;
    char *p = PyMem_Realloc(b->data, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    /* Bit buffers are written bit by bit: new bytes must start cleared. */
    memset(p + b->cap, 0, (size_t)(cap - b->cap));
    b->data = p;
    b->cap = cap;
    return 0;
}

static void
buf_free(Buf *b)
{
    PyMem_Free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static PyObject *
buf_bytes(const Buf *b, Py_ssize_t len)
{
    return PyBytes_FromStringAndSize(b->data ? b->data : "", len);
}

/* Set bit i of b (growing it), to v. */
static int
bit_set(Buf *b, Py_ssize_t i, int v)
{
    if (buf_reserve(b, i / 8 + 1) < 0) return -1;
    uint8_t *byte = (uint8_t *)b->data + i / 8;
    uint8_t mask = (uint8_t)(1u << (i % 8));
    *byte = v ? (uint8_t)(*byte | mask) : (uint8_t)(*byte & ~mask);
    return 0;
}

typedef struct {
    PyObject *name;
    int code;
    PyObject *conv;  /* OBJ: applied before storing, or NULL */
    Buf data;        /* values (F64, I64), bits (BOOL), prices (LEVELS) */
    Buf valid;       /* validity bits (nullable), qtys (LEVELS) */
    Buf offs;        /* LEVELS: int32 offsets, rows + 1 of them */
    Py_ssize_t nulls;
    PyObject *list;  /* OBJ values */
} Col;

typedef struct {
    PyObject_HEAD
    Py_ssize_t ncols;
    Col *cols;
    Py_ssize_t rows;
    int busy; /* an append is running (re-entrant calls are refused) */
} Columns;

static int
refuse_reentry(Columns *self, const char *what)
{
    if (!self->busy) return 0;
    PyErr_Format(PyExc_RuntimeError,
                 "Columns.%s() called while an append() is running (a re-entrant call from a "
                 "record's attribute, converter or __float__)",
                 what);
    return -1;
}

static void
col_free(Col *c)
{
    Py_CLEAR(c->name);
    Py_CLEAR(c->conv);
    Py_CLEAR(c->list);
    buf_free(&c->data);
    buf_free(&c->valid);
    buf_free(&c->offs);
}

/* An empty column of `code`: its list (OBJ) and first offset (LEVELS) allocated. */
static int
col_setup(Col *c)
{
    if ((c->code & ~C_NULLABLE) == C_OBJ) {
        c->list = PyList_New(0);
        if (c->list == NULL) return -1;
    }
    if (c->code == C_LEVELS) {
        if (buf_reserve(&c->offs, 4) < 0) return -1;
        memset(c->offs.data, 0, 4);
        c->offs.len = 4;
    }
    return 0;
}

/* Empty a column whose values finish() has copied out; `list` is its new empty list (OBJ, else
 * NULL). Cannot fail: the LEVELS offsets keep their first (zero) entry and shrink to it when the
 * allocator lets them. */
static void
col_reset(Col *c, PyObject *list)
{
    buf_free(&c->data);
    buf_free(&c->valid);
    c->nulls = 0;
    if (list != NULL) Py_XSETREF(c->list, list);
    if (c->code == C_LEVELS) {
        char *p = PyMem_Realloc(c->offs.data, 4);
        if (p != NULL) {
            c->offs.data = p;
            c->offs.cap = 4;
        }
        memset(c->offs.data, 0, 4);
        c->offs.len = 4;
    }
}

static void
Columns_dealloc(Columns *self)
{
    for (Py_ssize_t i = 0; i < self->ncols; i++) col_free(&self->cols[i]);
    PyMem_Free(self->cols);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Columns_init(Columns *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"plan", NULL};
    PyObject *plan;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!:Columns", kwlist, &PyTuple_Type, &plan)) return -1;
    if (self->cols != NULL) {
        PyErr_SetString(PyExc_TypeError, "Columns is already initialised");
        return -1;
    }
    /* Built aside and installed whole: a bad entry leaves the builder as it was (no columns). */
    Py_ssize_t n = PyTuple_GET_SIZE(plan);
    Col *cols = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Col));
    if (cols == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t i = 0;
    for (; i < n; i++) {
        Col *c = &cols[i];
        PyObject *entry = PyTuple_GET_ITEM(plan, i), *name, *conv;
        int code;
        if (!PyTuple_Check(entry)) {
            PyErr_Format(PyExc_TypeError, "plan entry %zd: expected a tuple, got %T", i, entry);
            break;
        }
        if (!PyArg_ParseTuple(entry, "UiO:plan entry", &name, &code, &conv)) break;
        int base = code & ~C_NULLABLE;
        if (base < C_F64 || base > C_LEVELS || code == (C_LEVELS | C_NULLABLE) || code < 0) {
            PyErr_Format(PyExc_ValueError, "plan entry %zd: unknown column code %d", i, code);
            break;
        }
        /* An exact str (a subclass's hashing or comparing would run Python code), interned. */
        c->name = PyUnicode_FromObject(name);
        if (c->name == NULL) break;
        PyUnicode_InternInPlace(&c->name);
        c->code = code;
        c->conv = conv == Py_None ? NULL : Py_NewRef(conv);
        if (col_setup(c) < 0) break;
    }
    if (i < n) {
        for (Py_ssize_t j = 0; j <= i && j < n; j++) col_free(&cols[j]);
        PyMem_Free(cols);
        return -1;
    }
    if (self->cols != NULL) { /* initialised by a converter's __index__ meanwhile */
        for (Py_ssize_t j = 0; j < n; j++) col_free(&cols[j]);
        PyMem_Free(cols);
        PyErr_SetString(PyExc_TypeError, "Columns is already initialised");
        return -1;
    }
    self->cols = cols;
    self->ncols = n;
    return 0;
}

/* Levels of one row into c->data (prices) and c->valid (qtys), then one offset. The levels are
 * read by index with the size read again each time and strong references held, as a conversion
 * may change the list (the row then ends where the list now ends, as a Python for loop does). */
static int
append_levels(Col *c, PyObject *levels)
{
    PyObject *seq = PySequence_Fast(levels, "depth levels must be an iterable of (price, qty) pairs");
    if (seq == NULL) return -1;
    Py_ssize_t start = c->data.len; /* bytes; start / 8 levels already in this file */
    Py_ssize_t i = 0;
    int rc = 0;
    for (; i < PySequence_Fast_GET_SIZE(seq); i++) {
        if (start / 8 + i + 1 > INT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "too many levels in one file");
            rc = -1;
            break;
        }
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *a, *b;
        if ((PyList_CheckExact(item) || PyTuple_Check(item)) && PySequence_Fast_GET_SIZE(item) == 2) {
            /* Both taken before either is converted, as `p, q = item` does. */
            a = Py_NewRef(PySequence_Fast_GET_ITEM(item, 0));
            b = Py_NewRef(PySequence_Fast_GET_ITEM(item, 1));
        } else {
            PyErr_SetString(PyExc_ValueError, "a level must be a (price, qty) pair");
            rc = -1;
            break;
        }
        double p = PyFloat_CheckExact(a) ? PyFloat_AS_DOUBLE(a) : PyFloat_AsDouble(a);
        double q = p == -1.0 && PyErr_Occurred() ? -1.0
                   : PyFloat_CheckExact(b)       ? PyFloat_AS_DOUBLE(b)
                                                 : PyFloat_AsDouble(b);
        Py_DECREF(a);
        Py_DECREF(b);
        if ((p == -1.0 || q == -1.0) && PyErr_Occurred()) {
            rc = -1;
            break;
        }
        /* The buffers are only reserved (and their pointers taken) after the conversions. */
        Py_ssize_t at = start + i * 8;
        if (buf_reserve(&c->data, at + 8) < 0 || buf_reserve(&c->valid, at + 8) < 0) {
            rc = -1;
            break;
        }
        memcpy(c->data.data + at, &p, 8);
        memcpy(c->valid.data + at, &q, 8);
    }
    Py_DECREF(seq);
    if (rc < 0 || buf_reserve(&c->offs, c->offs.len + 4) < 0) return -1;
    int32_t end = (int32_t)(start / 8 + i);
    memcpy(c->offs.data + c->offs.len, &end, 4);
    c->data.len = c->valid.len = start + i * 8;
    c->offs.len += 4;
    return 0;
}

/* One value into column c at row `row`. Conversions (which may run Python code) come first, then
 * the buffers are grown and written. */
static int
col_append(Col *c, Py_ssize_t row, PyObject *v)
{
    int base = c->code & ~C_NULLABLE;
    int nullable = c->code & C_NULLABLE;
    if (base == C_OBJ) {
        if (c->conv == NULL) return PyList_Append(c->list, v);
        PyObject *w = PyObject_CallOneArg(c->conv, v);
        if (w == NULL) return -1;
        int rc = PyList_Append(c->list, w);
        Py_DECREF(w);
        return rc;
    }
    if (base == C_LEVELS) return append_levels(c, v);
    int null = v == Py_None;
    if (null && !nullable) {
        PyErr_Format(PyExc_TypeError, "column %U: None in a non-nullable column", c->name);
        return -1;
    }
    double d = 0.0;
    int64_t y = 0;
    if (!null && base == C_BOOL && !PyBool_Check(v)) {
        PyErr_Format(PyExc_TypeError, "column %U: expected bool, got %T", c->name, v);
        return -1;
    }
    if (!null && base == C_F64) {
        d = PyFloat_CheckExact(v) ? PyFloat_AS_DOUBLE(v) : PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) return -1;
    }
    if (!null && base == C_I64) {
        if (!PyLong_Check(v)) {
            PyErr_Format(PyExc_TypeError, "column %U: expected int, got %T", c->name, v);
            return -1;
        }
        long long x = PyLong_AsLongLong(v);
        if (x == -1 && PyErr_Occurred()) return -1;
        y = (int64_t)x;
    }
    if (nullable && bit_set(&c->valid, row, !null) < 0) return -1;
    if (base == C_BOOL) {
        if (bit_set(&c->data, row, v == Py_True) < 0) return -1;
    } else {
        if (buf_reserve(&c->data, (row + 1) * 8) < 0) return -1;
        char *at = c->data.data + row * 8;
        if (base == C_F64) memcpy(at, &d, 8);
        else memcpy(at, &y, 8);
        c->data.len = (row + 1) * 8;
    }
    if (null) c->nulls++;
    return 0;
}

/* Undo a partly appended row: every column back to `rows` rows. */
static void
rollback(Columns *self, Py_ssize_t upto, Py_ssize_t *nulls)
{
    Py_ssize_t rows = self->rows;
    for (Py_ssize_t i = 0; i <= upto && i < self->ncols; i++) {
        Col *c = &self->cols[i];
        int base = c->code & ~C_NULLABLE;
        c->nulls = nulls[i];
        if (base == C_OBJ) {
            /* The row's value is dropped by shrinking the size (no allocation, cannot fail), then
             * released: its finalizer may run Python code, which finds the builder still busy. */
            while (PyList_GET_SIZE(c->list) > rows) {
                PyObject *last = PyList_GET_ITEM(c->list, PyList_GET_SIZE(c->list) - 1);
                Py_SET_SIZE(c->list, PyList_GET_SIZE(c->list) - 1);
                Py_DECREF(last);
            }
        } else if (base == C_LEVELS) {
            c->offs.len = (rows + 1) * 4;
            int32_t end;
            memcpy(&end, c->offs.data + rows * 4, 4);
            c->data.len = c->valid.len = (Py_ssize_t)end * 8;
        } else if (base != C_BOOL) {
            c->data.len = rows * 8;
        }
    }
}

static int
append_one(Columns *self, PyObject *record, Py_ssize_t *nulls)
{
    for (Py_ssize_t i = 0; i < self->ncols; i++) {
        Col *c = &self->cols[i];
        nulls[i] = c->nulls;
        PyObject *v = PyObject_GetAttr(record, c->name);
        int rc = v == NULL ? -1 : col_append(c, self->rows, v);
        Py_XDECREF(v);
        if (rc < 0) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            rollback(self, i, nulls);
            PyErr_Restore(type, value, tb);
            return -1;
        }
    }
    self->rows++;
    return 0;
}

static PyObject *
Columns_append(Columns *self, PyObject *record)
{
    if (refuse_reentry(self, "append") < 0) return NULL;
    Py_ssize_t small[32];
    Py_ssize_t *nulls = self->ncols <= 32 ? small : PyMem_Malloc((size_t)self->ncols * sizeof(Py_ssize_t));
    if (nulls == NULL) return PyErr_NoMemory();
    self->busy = 1;
    int rc = append_one(self, record, nulls);
    self->busy = 0;
    if (nulls != small) PyMem_Free(nulls);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

/* The parts of every column (nothing changes), then, once all exist, every column emptied. */
static PyObject *
Columns_finish(Columns *self, PyObject *Py_UNUSED(ignored))
{
    if (refuse_reentry(self, "finish") < 0) return NULL;
    Py_ssize_t n = self->rows;
    PyObject *parts = PyList_New(self->ncols);
    if (parts == NULL) return NULL;
    PyObject **lists = PyMem_Calloc((size_t)(self->ncols ? self->ncols : 1), sizeof(PyObject *));
    if (lists == NULL) {
        Py_DECREF(parts);
        return PyErr_NoMemory();
    }
    Py_ssize_t i = 0;
    for (; i < self->ncols; i++) {
        Col *c = &self->cols[i];
        int base = c->code & ~C_NULLABLE;
        PyObject *part;
        if (base == C_OBJ) {
            /* The values go out in the column's own list; an empty one replaces it afterwards. */
            lists[i] = PyList_New(0);
            part = lists[i] == NULL ? NULL : Py_BuildValue("(iO)", C_OBJ, c->list);
        } else if (base == C_LEVELS) {
            part = Py_BuildValue("(inNNN)", C_LEVELS, n, buf_bytes(&c->offs, c->offs.len),
                                 buf_bytes(&c->data, c->data.len), buf_bytes(&c->valid, c->valid.len));
        } else {
            Py_ssize_t len = base == C_BOOL ? (n + 7) / 8 : n * 8;
            PyObject *valid = c->nulls ? buf_bytes(&c->valid, (n + 7) / 8) : Py_NewRef(Py_None);
            part = Py_BuildValue("(innNN)", c->code, n, c->nulls, valid, buf_bytes(&c->data, len));
        }
        if (part == NULL) break;
        PyList_SET_ITEM(parts, i, part);
    }
    if (i < self->ncols) { /* MemoryError: every row stays for the next finish() */
        for (Py_ssize_t j = 0; j <= i && j < self->ncols; j++) Py_XDECREF(lists[j]);
        PyMem_Free(lists);
        Py_DECREF(parts);
        return NULL;
    }
    for (i = 0; i < self->ncols; i++) col_reset(&self->cols[i], lists[i]);
    PyMem_Free(lists);
    self->rows = 0;
    return parts;
}

static PyObject *
Columns_get_rows(Columns *self, void *closure)
{
    return PyLong_FromSsize_t(self->rows);
}

static PyObject *
Columns_get_nbytes(Columns *self, void *closure)
{
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < self->ncols; i++) {
        Col *c = &self->cols[i];
        total += c->data.len + c->valid.len + c->offs.len;
        if (c->list != NULL) total += 8 * PyList_GET_SIZE(c->list);
    }
    return PyLong_FromSsize_t(total);
}

static PyMethodDef Columns_methods[] = {
    {"append", (PyCFunction)Columns_append, METH_O,
     "Append one record's stored fields; on error nothing is appended."},
    {"finish", (PyCFunction)Columns_finish, METH_NOARGS,
     "The columns' parts (see columns.to_table); the builder is empty afterwards."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Columns_getset[] = {
    {"rows", (getter)Columns_get_rows, NULL, "Rows appended.", NULL},
    {"nbytes", (getter)Columns_get_nbytes, NULL, "Bytes the appended values take (8 per object).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ColumnsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ingestd.consumers._ccolumns.Columns",
    .tp_doc = PyDoc_STR("Columns(plan): records → Arrow-layout column buffers (see columns.py)."),
    .tp_basicsize = sizeof(Columns),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Columns_init,
    .tp_dealloc = (destructor)Columns_dealloc,
    .tp_methods = Columns_methods,
    .tp_getset = Columns_getset,
};

static struct PyModuleDef ccolumns_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ingestd.consumers._ccolumns",
    .m_doc = "The compiled column builder (ingestd.consumers.columns.Columns when available).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__ccolumns(void)
{
    if (PyType_Ready(&ColumnsType) < 0) return NULL;
    PyObject *m = PyModule_Create(&ccolumns_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Columns", (PyObject *)&ColumnsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
