/*
 * IntMap: a hash map from Python ints to objects, for the connection table.
 *
 * Why: ip_vs_conn_in_get() walks one hash bucket and compares the entry's
 * own fields, a cache miss or two.  A Python dict keyed by int costs four
 * dependent misses at 10^6 entries: its index array, its entries array, the
 * key object it must compare (the probe is a different int object), then the
 * entry.  IntMap keeps keys below 2**64 inline, beside the value pointer, in
 * one open-addressed array: one miss finds the slot, key and value together.
 * Keys outside [0, 2**64) (IPv6 client keys) go to an ordinary dict.
 *
 * Layout: linear probing over a power-of-two array of {key, value} slots,
 * value NULL meaning empty; deletion shifts the following cluster back (no
 * tombstones, so churn never forces a rehash); the table doubles when more
 * than two thirds full, as a dict does.  Like a dict it never shrinks on
 * deletion (clear() releases the array): a rehash is a stall (~7-9 ms at
 * 10^6 entries), and expiry must never hold the daemon that long.  The slot index is
 * fmix64(key ^ seed): with a secret seed, clients cannot aim their
 * addresses and ports at one cluster (the kernel seeds jhash the same way).
 *
 * Semantics are those of a dict restricted to int keys: get, [], in, del,
 * len, keys/values/items (lists, in no particular order), clear.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>

#if ULONG_MAX != 0xffffffffffffffffULL
#error "IntMap needs a 64-bit unsigned long (LP64)"
#endif

typedef struct {
    uint64_t key;
    PyObject *value; /* NULL: empty slot */
} Slot;

typedef struct {
    PyObject_HEAD
    Slot *slots;
    size_t mask;     /* capacity - 1; capacity is a power of two */
    Py_ssize_t used; /* occupied slots */
    PyObject *big;   /* dict for keys outside [0, 2**64), created on demand */
    uint64_t seed;
} IntMap;

#define MIN_CAPACITY 8

static inline uint64_t fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

static inline size_t home(const IntMap *m, uint64_t key) { return (size_t)fmix64(key ^ m->seed) & m->mask; }

/* 1: *out is the key as uint64; 0: the key is an int outside the inline
   range (use m->big); -1: not an int (TypeError set). */
static int inline_key(PyObject *key, uint64_t *out)
{
    if (!PyLong_Check(key)) {
        PyErr_Format(PyExc_TypeError, "IntMap keys are ints, not %.100s", Py_TYPE(key)->tp_name);
        return -1;
    }
    /* PyLong_AsUnsignedLong walks the digits; the LongLong variant goes
       through a byte-array conversion, several times slower */
    unsigned long v = PyLong_AsUnsignedLong(key);
    if (v == (unsigned long)-1 && PyErr_Occurred()) {
        PyErr_Clear(); /* negative or >= 2**64 */
        return 0;
    }
    *out = (uint64_t)v;
    return 1;
}

/* The slot holding key, or the empty slot where it would go. */
static inline Slot *find(const IntMap *m, uint64_t key)
{
    size_t i = home(m, key);
    for (;;) {
        Slot *s = &m->slots[i];
        if (s->value == NULL || s->key == key)
            return s;
        i = (i + 1) & m->mask;
    }
}

/* Move every entry into a new array of `capacity` slots (no refcount change). */
static int resize(IntMap *m, size_t capacity)
{
    Slot *fresh = PyMem_Calloc(capacity, sizeof(Slot));
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Slot *old = m->slots;
    size_t old_capacity = m->mask + 1;
    m->slots = fresh;
    m->mask = capacity - 1;
    for (size_t i = 0; i < old_capacity; i++) {
        if (old[i].value != NULL)
            *find(m, old[i].key) = old[i];
    }
    PyMem_Free(old);
    return 0;
}

/* Empty slot s and pull the rest of its cluster back (backward-shift deletion). */
static void remove_slot(IntMap *m, Slot *s)
{
    size_t hole = (size_t)(s - m->slots);
    size_t j = hole;
    for (;;) {
        j = (j + 1) & m->mask;
        Slot *t = &m->slots[j];
        if (t->value == NULL)
            break;
        size_t h = home(m, t->key);
        /* t may fill the hole if its home is not cyclically in (hole, j] */
        if (((j - h) & m->mask) >= ((j - hole) & m->mask)) {
            m->slots[hole] = *t;
            hole = j;
        }
    }
    m->slots[hole].value = NULL;
    m->slots[hole].key = 0;
    m->used--;
}

static PyObject *lookup(IntMap *m, PyObject *key)
{
    uint64_t k;
    int r = inline_key(key, &k);
    if (r < 0)
        return NULL;
    if (r == 0) {
        if (m->big == NULL)
            return NULL;
        return PyDict_GetItemWithError(m->big, key); /* borrowed */
    }
    return find(m, k)->value; /* borrowed, NULL when absent */
}

static int assign(IntMap *m, PyObject *key, PyObject *value)
{
    uint64_t k;
    int r = inline_key(key, &k);
    if (r < 0)
        return -1;
    if (r == 0) {
        if (value == NULL) {
            if (m->big == NULL) {
                PyErr_SetObject(PyExc_KeyError, key);
                return -1;
            }
            return PyDict_DelItem(m->big, key);
        }
        if (m->big == NULL && (m->big = PyDict_New()) == NULL)
            return -1;
        return PyDict_SetItem(m->big, key, value);
    }
    Slot *s = find(m, k);
    if (value == NULL) {
        if (s->value == NULL) {
            PyErr_SetObject(PyExc_KeyError, key);
            return -1;
        }
        PyObject *old = s->value;
        remove_slot(m, s);
        Py_DECREF(old); /* last: a finalizer may use the map */
        return 0;
    }
    Py_INCREF(value);
    if (s->value != NULL) {
        PyObject *old = s->value;
        s->value = value;
        Py_DECREF(old);
        return 0;
    }
    s->key = k;
    s->value = value;
    m->used++;
    if ((size_t)m->used * 3 > (m->mask + 1) * 2 && resize(m, (m->mask + 1) * 2) < 0) {
        /* could not grow: undo the insertion, so the map stays valid */
        remove_slot(m, find(m, k));
        Py_DECREF(value);
        return -1;
    }
    return 0;
}

/* -- the Python type --------------------------------------------------------- */

static PyObject *IntMap_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"seed", NULL};
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|K:IntMap", kwlist, &seed))
        return NULL;
    IntMap *m = (IntMap *)type->tp_alloc(type, 0);
    if (m == NULL)
        return NULL;
    m->slots = PyMem_Calloc(MIN_CAPACITY, sizeof(Slot));
    if (m->slots == NULL) {
        Py_DECREF(m);
        return PyErr_NoMemory();
    }
    m->mask = MIN_CAPACITY - 1;
    m->seed = (uint64_t)seed;
    return (PyObject *)m;
}

static int IntMap_traverse(IntMap *m, visitproc visit, void *arg)
{
    if (m->slots != NULL) {
        for (size_t i = 0; i <= m->mask; i++)
            Py_VISIT(m->slots[i].value);
    }
    Py_VISIT(m->big);
    return 0;
}

/* Drop every entry; the map stays usable (empty). */
static int IntMap_clear(IntMap *m)
{
    Slot *old = m->slots;
    size_t old_capacity = m->mask + 1;
    PyObject *big = m->big;
    Slot *fresh = PyMem_Calloc(MIN_CAPACITY, sizeof(Slot));
    if (fresh == NULL && old != NULL) {
        /* no memory for a fresh array: empty the old one in place */
        m->slots = NULL;
    } else {
        m->slots = fresh;
    }
    m->mask = MIN_CAPACITY - 1;
    m->used = 0;
    m->big = NULL;
    if (old != NULL) {
        for (size_t i = 0; i < old_capacity; i++)
            Py_CLEAR(old[i].value);
        if (m->slots == NULL) {
            memset(old, 0, old_capacity * sizeof(Slot));
            m->slots = old;
            m->mask = old_capacity - 1;
        } else {
            PyMem_Free(old);
        }
    }
    Py_XDECREF(big);
    return 0;
}

static void IntMap_dealloc(IntMap *m)
{
    PyObject_GC_UnTrack(m);
    if (m->slots != NULL) {
        for (size_t i = 0; i <= m->mask; i++)
            Py_CLEAR(m->slots[i].value);
        PyMem_Free(m->slots);
        m->slots = NULL;
    }
    Py_CLEAR(m->big);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static Py_ssize_t IntMap_length(IntMap *m)
{
    return m->used + (m->big != NULL ? PyDict_GET_SIZE(m->big) : 0);
}

static PyObject *IntMap_subscript(IntMap *m, PyObject *key)
{
    PyObject *v = lookup(m, key);
    if (v == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    return Py_NewRef(v);
}

static int IntMap_ass_subscript(IntMap *m, PyObject *key, PyObject *value)
{
    return assign(m, key, value);
}

static int IntMap_contains(IntMap *m, PyObject *key)
{
    PyObject *v = lookup(m, key);
    if (v == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return 1;
}

static PyObject *IntMap_get(IntMap *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get expected 1 or 2 arguments, got %zd", nargs);
        return NULL;
    }
    PyObject *v = lookup(m, args[0]);
    if (v == NULL) {
        if (PyErr_Occurred())
            return NULL;
        v = nargs == 2 ? args[1] : Py_None;
    }
    return Py_NewRef(v);
}

enum { KEYS, VALUES, ITEMS };

/* keys, values or (key, value) pairs as a new list.  The slots are read in
   one pass that allocates nothing (an allocation may run the GC, and a
   finalizer could change the map under the scan); objects are made after. */
static PyObject *listing(IntMap *m, int what)
{
    Py_ssize_t n;
    uint64_t *keys = NULL;
    PyObject *values = NULL;
    for (;;) {
        n = m->used;
        keys = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(uint64_t));
        values = PyList_New(n);
        if (keys == NULL || values == NULL) {
            PyMem_Free(keys);
            Py_XDECREF(values);
            return PyErr_NoMemory();
        }
        if (m->used == n)
            break; /* nothing changed while we allocated */
        PyMem_Free(keys);
        Py_DECREF(values);
    }
    Py_ssize_t j = 0;
    for (size_t i = 0; i <= m->mask; i++) {
        Slot *s = &m->slots[i];
        if (s->value != NULL) {
            keys[j] = s->key;
            PyList_SET_ITEM(values, j, Py_NewRef(s->value));
            j++;
        }
    }
    PyObject *out = values;
    if (what != VALUES) {
        out = PyList_New(n);
        for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
            PyObject *key = PyLong_FromUnsignedLongLong(keys[i]);
            PyObject *item = key == NULL ? NULL
                             : what == KEYS ? key
                                            : PyTuple_Pack(2, key, PyList_GET_ITEM(values, i));
            if (what == ITEMS)
                Py_XDECREF(key);
            if (item == NULL)
                Py_CLEAR(out);
            else
                PyList_SET_ITEM(out, i, item);
        }
        Py_DECREF(values);
    }
    PyMem_Free(keys);
    if (out != NULL && m->big != NULL) {
        PyObject *rest = what == KEYS ? PyDict_Keys(m->big) : what == VALUES ? PyDict_Values(m->big)
                                                                              : PyDict_Items(m->big);
        if (rest == NULL || PyList_SetSlice(out, n, n, rest) < 0)
            Py_CLEAR(out);
        Py_XDECREF(rest);
    }
    return out;
}

static PyObject *IntMap_keys(IntMap *m, PyObject *noargs) { return listing(m, KEYS); }
static PyObject *IntMap_values(IntMap *m, PyObject *noargs) { return listing(m, VALUES); }
static PyObject *IntMap_items(IntMap *m, PyObject *noargs) { return listing(m, ITEMS); }

static PyObject *IntMap_iter(IntMap *m)
{
    PyObject *keys = listing(m, KEYS);
    if (keys == NULL)
        return NULL;
    PyObject *it = PyObject_GetIter(keys);
    Py_DECREF(keys);
    return it;
}

static PyObject *IntMap_clear_method(IntMap *m, PyObject *noargs)
{
    IntMap_clear(m);
    Py_RETURN_NONE;
}

static PyObject *IntMap_capacity(IntMap *m, void *closure) { return PyLong_FromSize_t(m->mask + 1); }

static PyMethodDef IntMap_methods[] = {
    {"get", (PyCFunction)(void (*)(void))IntMap_get, METH_FASTCALL, "get(key, default=None)"},
    {"keys", (PyCFunction)IntMap_keys, METH_NOARGS, "a list of the keys"},
    {"values", (PyCFunction)IntMap_values, METH_NOARGS, "a list of the values"},
    {"items", (PyCFunction)IntMap_items, METH_NOARGS, "a list of (key, value) pairs"},
    {"clear", (PyCFunction)IntMap_clear_method, METH_NOARGS, "remove every entry"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef IntMap_getset[] = {
    {"capacity", (getter)IntMap_capacity, NULL, "slots in the inline array", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMappingMethods IntMap_as_mapping = {
    (lenfunc)IntMap_length,
    (binaryfunc)IntMap_subscript,
    (objobjargproc)IntMap_ass_subscript,
};

static PySequenceMethods IntMap_as_sequence = {
    .sq_contains = (objobjproc)IntMap_contains,
};

static PyTypeObject IntMapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "lvs._intmap.IntMap",
    .tp_basicsize = sizeof(IntMap),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "IntMap(seed=0): a hash map from ints to objects, keys below 2**64 stored inline",
    .tp_new = IntMap_new,
    .tp_dealloc = (destructor)IntMap_dealloc,
    .tp_traverse = (traverseproc)IntMap_traverse,
    .tp_clear = (inquiry)IntMap_clear,
    .tp_iter = (getiterfunc)IntMap_iter,
    .tp_methods = IntMap_methods,
    .tp_getset = IntMap_getset,
    .tp_as_mapping = &IntMap_as_mapping,
    .tp_as_sequence = &IntMap_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_intmap",
    .m_doc = "IntMap: the connection table's hash map (see IntMap's doc).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__intmap(void)
{
    if (PyType_Ready(&IntMapType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL)
        return NULL;
    if (PyModule_AddObjectRef(mod, "IntMap", (PyObject *)&IntMapType) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
