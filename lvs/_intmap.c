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
 * 10^6 entries), and expiry must never hold the daemon that long.  The slot
 * index is fmix64(key ^ seed): with a secret seed, clients cannot aim their
 * addresses and ports at one cluster (the kernel seeds jhash the same way).
 *
 * Semantics are those of a dict restricted to int keys: get, [], in, del,
 * len, keys/values/items (lists, in no particular order), clear.
 *
 * ChainFinder (below) is the connection table's two per-packet look-ups on
 * top of an IntMap, one C call each instead of a Python frame.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
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


/* -- ChainFinder: ip_vs_conn_in_get / ip_vs_conn_out_get in one C call ------
 *
 * The connection table keys entries by client endpoint and chains entries
 * with the same key through a link slot; a look-up builds the key, takes the
 * chain head and returns the first entry whose two compared slots equal the
 * given address and port and whose flags lack the skip bits (templates).
 * lvs/conntab.py has the same function in Python (the fallback, and the
 * reference the tests compare this with).  The key is client_key() of
 * lvs/conn.py: (((caddr << 16) | cport) << 9) | (protocol << 1) | (af == 10);
 * tests/test_intmap.py checks the two agree.  Entries are read through the
 * member offsets of the class's slots, checked to be object slots at setup.
 */
#define AF_INET6_VALUE 10

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    IntMap *map;
    PyTypeObject *cls;
    Py_ssize_t off_addr, off_port, off_flags, off_link;
    long skip;
} ChainFinder;

static PyTypeObject ChainFinderType;
static PyObject *ChainFinder_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames);

/* The offset of cls's object slot `name`, or -1 with an exception set. */
static Py_ssize_t slot_offset(PyTypeObject *cls, const char *name)
{
    PyObject *descr = PyObject_GetAttrString((PyObject *)cls, name);
    if (descr == NULL)
        return -1;
    Py_ssize_t offset = -1;
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *def = ((PyMemberDescrObject *)descr)->d_member;
        if (def->type == T_OBJECT_EX || def->type == T_OBJECT)
            offset = def->offset;
    }
    Py_DECREF(descr);
    if (offset < 0)
        PyErr_Format(PyExc_TypeError, "%.100s.%.100s is not a __slots__ attribute", cls->tp_name, name);
    return offset;
}

static PyObject *IntMap_finder(IntMap *m, PyObject *args)
{
    PyTypeObject *cls;
    const char *addr, *port, *flags, *link;
    long skip;
    if (!PyArg_ParseTuple(args, "O!sssls:finder", &PyType_Type, &cls, &addr, &port, &flags, &skip, &link))
        return NULL;
    Py_ssize_t oa = slot_offset(cls, addr), op = oa < 0 ? -1 : slot_offset(cls, port);
    Py_ssize_t of = op < 0 ? -1 : slot_offset(cls, flags), ol = of < 0 ? -1 : slot_offset(cls, link);
    if (ol < 0)
        return NULL;
    ChainFinder *f = PyObject_GC_New(ChainFinder, &ChainFinderType);
    if (f == NULL)
        return NULL;
    f->vectorcall = ChainFinder_vectorcall;
    f->map = (IntMap *)Py_NewRef(m);
    f->cls = (PyTypeObject *)Py_NewRef(cls);
    f->off_addr = oa;
    f->off_port = op;
    f->off_flags = of;
    f->off_link = ol;
    f->skip = skip;
    PyObject_GC_Track(f);
    return (PyObject *)f;
}

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* client_key(protocol, af, caddr, cport) as a new int (the slow path). */
static PyObject *client_key_object(PyObject *protocol, PyObject *af, PyObject *caddr, PyObject *cport)
{
    PyObject *sixteen = PyLong_FromLong(16), *nine = PyLong_FromLong(9), *one = PyLong_FromLong(1);
    PyObject *ten = PyLong_FromLong(AF_INET6_VALUE);
    PyObject *a = NULL, *b = NULL, *c = NULL, *d = NULL, *e = NULL, *key = NULL;
    int v6 = ten == NULL ? -1 : PyObject_RichCompareBool(af, ten, Py_EQ);
    Py_XDECREF(ten);
    if (sixteen && nine && one && v6 >= 0 && (a = PyNumber_Lshift(caddr, sixteen)) && (b = PyNumber_Or(a, cport)) &&
        (c = PyNumber_Lshift(b, nine)) && (d = PyNumber_Lshift(protocol, one)) && (e = PyNumber_Or(c, d)))
        key = PyNumber_Or(e, v6 ? Py_True : Py_False);
    Py_XDECREF(sixteen);
    Py_XDECREF(nine);
    Py_XDECREF(one);
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(c);
    Py_XDECREF(d);
    Py_XDECREF(e);
    return key;
}

/* 1: *out is client_key(...) computed in 64 bits (IPv4-sized arguments);
   0: the arguments need the slow path.  Never leaves an exception set. */
static int fast_key(PyObject *protocol, PyObject *af, PyObject *caddr, PyObject *cport, uint64_t *out)
{
    unsigned long p = PyLong_Check(protocol) ? PyLong_AsUnsignedLong(protocol) : ULONG_MAX;
    unsigned long ca = PyLong_Check(caddr) ? PyLong_AsUnsignedLong(caddr) : ULONG_MAX;
    unsigned long cp = PyLong_Check(cport) ? PyLong_AsUnsignedLong(cport) : ULONG_MAX;
    long family = PyLong_Check(af) ? PyLong_AsLong(af) : -1;
    if (PyErr_Occurred())
        PyErr_Clear(); /* out of range: the slow path decides */
    if (p >= 256 || ca > 0xffffffffUL || cp >= 65536 || family < 0)
        return 0;
    *out = ((((uint64_t)ca << 16) | cp) << 9) | (p << 1) | (family == AF_INET6_VALUE);
    return 1;
}

/* 1: equal, 0: not, -1: error; `slot` (borrowed from the entry) is held
   during the comparison, as the interpreter holds what it compares. */
static int slot_equals(PyObject *entry, Py_ssize_t off, const char *name, PyObject *value)
{
    PyObject *v = SLOT(entry, off);
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '%.100s'", Py_TYPE(entry)->tp_name,
                     name);
        return -1;
    }
    Py_INCREF(v);
    int r = PyObject_RichCompareBool(v, value, Py_EQ);
    Py_DECREF(v);
    return r;
}

static PyObject *ChainFinder_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    ChainFinder *f = (ChainFinder *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 6 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "expected (protocol, af, caddr, cport, addr, port)");
        return NULL;
    }
    PyObject *protocol = args[0], *af = args[1], *caddr = args[2], *cport = args[3];
    PyObject *addr = args[4], *port = args[5];
    PyObject *head;
    uint64_t k;
    if (fast_key(protocol, af, caddr, cport, &k)) {
        head = find(f->map, k)->value;
    } else {
        PyObject *key = client_key_object(protocol, af, caddr, cport);
        if (key == NULL)
            return NULL;
        head = lookup(f->map, key);
        Py_DECREF(key);
        if (head == NULL && PyErr_Occurred())
            return NULL;
    }
    /* walk the chain; hold each entry while comparing (an __eq__ may run code) */
    PyObject *c = head != NULL ? Py_NewRef(head) : NULL;
    while (c != NULL && c != Py_None) {
        if (!PyObject_TypeCheck(c, f->cls)) {
            PyErr_Format(PyExc_TypeError, "a %.100s in the chain", Py_TYPE(c)->tp_name);
            Py_DECREF(c);
            return NULL;
        }
        int r = slot_equals(c, f->off_port, "port", port);
        if (r > 0)
            r = slot_equals(c, f->off_addr, "addr", addr);
        if (r > 0) {
            PyObject *flags = SLOT(c, f->off_flags);
            long fl = flags == NULL ? -1 : PyLong_AsLong(flags);
            if (fl == -1 && (flags == NULL || PyErr_Occurred())) {
                if (flags == NULL)
                    PyErr_SetString(PyExc_AttributeError, "entry without flags");
                r = -1;
            } else if (!(fl & f->skip)) {
                return c; /* the reference we hold */
            }
        }
        if (r < 0) {
            Py_DECREF(c);
            return NULL;
        }
        PyObject *next = SLOT(c, f->off_link);
        Py_XINCREF(next);
        Py_DECREF(c);
        c = next;
    }
    Py_XDECREF(c);
    Py_RETURN_NONE;
}

static PyObject *ChainFinder_key(ChainFinder *f, PyObject *args)
{
    PyObject *protocol, *af, *caddr, *cport;
    if (!PyArg_ParseTuple(args, "OOOO:key", &protocol, &af, &caddr, &cport))
        return NULL;
    uint64_t k;
    if (fast_key(protocol, af, caddr, cport, &k))
        return PyLong_FromUnsignedLong(k);
    return client_key_object(protocol, af, caddr, cport);
}

static int ChainFinder_traverse(ChainFinder *f, visitproc visit, void *arg)
{
    Py_VISIT(f->map);
    Py_VISIT(f->cls);
    return 0;
}

static int ChainFinder_clear(ChainFinder *f)
{
    Py_CLEAR(f->map);
    Py_CLEAR(f->cls);
    return 0;
}

static void ChainFinder_dealloc(ChainFinder *f)
{
    PyObject_GC_UnTrack(f);
    ChainFinder_clear(f);
    PyObject_GC_Del(f);
}

static PyMethodDef ChainFinder_methods[] = {
    {"key", (PyCFunction)ChainFinder_key, METH_VARARGS,
     "key(protocol, af, caddr, cport): the key the finder builds (client_key, for the tests)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ChainFinderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "lvs._intmap.ChainFinder",
    .tp_basicsize = sizeof(ChainFinder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "finder(protocol, af, caddr, cport, addr, port): the first chained entry that matches",
    .tp_dealloc = (destructor)ChainFinder_dealloc,
    .tp_traverse = (traverseproc)ChainFinder_traverse,
    .tp_clear = (inquiry)ChainFinder_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(ChainFinder, vectorcall),
    .tp_methods = ChainFinder_methods,
};

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
    {"finder", (PyCFunction)IntMap_finder, METH_VARARGS,
     "finder(cls, addr_slot, port_slot, flags_slot, skip_bits, link_slot) -> ChainFinder"},
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
    if (PyType_Ready(&IntMapType) < 0 || PyType_Ready(&ChainFinderType) < 0)
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
