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
    while (cap < need) cap *= 2;
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
} Columns;

static int
col_reset(Col *c)
{
    buf_free(&c->data);
    buf_free(&c->valid);
    buf_free(&c->offs);
    c->nulls = 0;
    if ((c->code & ~C_NULLABLE) == C_OBJ) {
        Py_XSETREF(c->list, PyList_New(0));
        if (c->list == NULL) return -1;
    }
    if (c->code == C_LEVELS) {
        if (buf_reserve(&c->offs, 4) < 0) return -1;
        memset(c->offs.data, 0, 4);
        c->offs.len = 4;
    }
    return 0;
}

static void
Columns_dealloc(Columns *self)
{
    for (Py_ssize_t i = 0; i < self->ncols; i++) {
        Col *c = &self->cols[i];
        Py_XDECREF(c->name);
        Py_XDECREF(c->conv);
        Py_XDECREF(c->list);
        buf_free(&c->data);
        buf_free(&c->valid);
        buf_free(&c->offs);
    }
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
    Py_ssize_t n = PyTuple_GET_SIZE(plan);
    self->cols = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Col));
    if (self->cols == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->ncols = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Col *c = &self->cols[i];
        PyObject *name, *conv;
        int code;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(plan, i), "UiO:plan entry", &name, &code, &conv)) return -1;
        int base = code & ~C_NULLABLE;
        if (base < C_F64 || base > C_LEVELS || code == (C_LEVELS | C_NULLABLE) || code < 0) {
            PyErr_Format(PyExc_ValueError, "plan entry %zd: unknown column code %d", i, code);
            return -1;
        }
        Py_INCREF(name);
        PyUnicode_InternInPlace(&name);
        c->name = name;
        c->code = code;
        c->conv = conv == Py_None ? NULL : Py_NewRef(conv);
        if (col_reset(c) < 0) return -1;
    }
    return 0;
}

/* Levels of one row into c->data (prices) and c->valid (qtys), then one offset. */
static int
append_levels(Col *c, PyObject *levels)
{
    PyObject *seq = PySequence_Fast(levels, "depth levels must be an iterable of (price, qty) pairs");
    if (seq == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_ssize_t start = c->data.len;
    if (start / 8 + n > INT32_MAX) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_OverflowError, "too many levels in one file");
        return -1;
    }
    if (buf_reserve(&c->data, start + n * 8) < 0 || buf_reserve(&c->valid, start + n * 8) < 0) {
        Py_DECREF(seq);
        return -1;
    }
    double *ps = (double *)(c->data.data + start), *qs = (double *)(c->valid.data + start);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *a, *b;
        if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2) {
            a = PyTuple_GET_ITEM(item, 0);
            b = PyTuple_GET_ITEM(item, 1);
        } else if ((PyList_CheckExact(item) || PyTuple_Check(item)) && PySequence_Fast_GET_SIZE(item) == 2) {
            a = PySequence_Fast_GET_ITEM(item, 0);
            b = PySequence_Fast_GET_ITEM(item, 1);
        } else {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "a level must be a (price, qty) pair");
            return -1;
        }
        double p = PyFloat_CheckExact(a) ? PyFloat_AS_DOUBLE(a) : PyFloat_AsDouble(a);
        if (p == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        double q = PyFloat_CheckExact(b) ? PyFloat_AS_DOUBLE(b) : PyFloat_AsDouble(b);
        if (q == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        ps[i] = p;
        qs[i] = q;
    }
    Py_DECREF(seq);
    if (buf_reserve(&c->offs, c->offs.len + 4) < 0) return -1;
    int32_t end = (int32_t)(start / 8 + n);
    memcpy(c->offs.data + c->offs.len, &end, 4);
    c->data.len = c->valid.len = start + n * 8;
    c->offs.len += 4;
    return 0;
}

/* One value into column c at row `row`. */
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
    if (nullable && bit_set(&c->valid, row, !null) < 0) return -1;
    if (base == C_BOOL) {
        if (!null && !PyBool_Check(v)) {
            PyErr_Format(PyExc_TypeError, "column %U: expected bool, got %T", c->name, v);
            return -1;
        }
        if (bit_set(&c->data, row, v == Py_True) < 0) return -1;
    } else {
        if (buf_reserve(&c->data, (row + 1) * 8) < 0) return -1;
        char *at = c->data.data + row * 8;
        if (base == C_F64) {
            double d = 0.0;
            if (!null) {
                d = PyFloat_CheckExact(v) ? PyFloat_AS_DOUBLE(v) : PyFloat_AsDouble(v);
                if (d == -1.0 && PyErr_Occurred()) return -1;
            }
            memcpy(at, &d, 8);
        } else {
            long long x = 0;
            if (!null) {
                if (!PyLong_Check(v)) {
                    PyErr_Format(PyExc_TypeError, "column %U: expected int, got %T", c->name, v);
                    return -1;
                }
                x = PyLong_AsLongLong(v);
                if (x == -1 && PyErr_Occurred()) return -1;
            }
            int64_t y = (int64_t)x;
            memcpy(at, &y, 8);
        }
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
            if (PyList_GET_SIZE(c->list) > rows) PyList_SetSlice(c->list, rows, PY_SSIZE_T_MAX, NULL);
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
    Py_ssize_t small[32];
    Py_ssize_t *nulls = self->ncols <= 32 ? small : PyMem_Malloc((size_t)self->ncols * sizeof(Py_ssize_t));
    if (nulls == NULL) return PyErr_NoMemory();
    int rc = append_one(self, record, nulls);
    if (nulls != small) PyMem_Free(nulls);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Columns_finish(Columns *self, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t n = self->rows;
    PyObject *parts = PyList_New(self->ncols);
    if (parts == NULL) return NULL;
    for (Py_ssize_t i = 0; i < self->ncols; i++) {
        Col *c = &self->cols[i];
        int base = c->code & ~C_NULLABLE;
        PyObject *part;
        if (base == C_OBJ) {
            part = Py_BuildValue("(iO)", C_OBJ, c->list);
        } else if (base == C_LEVELS) {
            part = Py_BuildValue("(inNNN)", C_LEVELS, n, buf_bytes(&c->offs, c->offs.len),
                                 buf_bytes(&c->data, c->data.len), buf_bytes(&c->valid, c->valid.len));
        } else {
            Py_ssize_t len = base == C_BOOL ? (n + 7) / 8 : n * 8;
            PyObject *valid = c->nulls ? buf_bytes(&c->valid, (n + 7) / 8) : Py_NewRef(Py_None);
            part = Py_BuildValue("(innNN)", c->code, n, c->nulls, valid, buf_bytes(&c->data, len));
        }
        if (part == NULL || col_reset(c) < 0) {
            Py_XDECREF(part);
            Py_DECREF(parts);
            return NULL;
        }
        PyList_SET_ITEM(parts, i, part);
    }
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
