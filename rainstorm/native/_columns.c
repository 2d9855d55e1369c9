/* rainstorm.native._columns: the per-key hot paths of an additive aggregate,
 * in C.  Both functions write exactly the bytes the Python code in
 * rainstorm.operators.aggregates writes, or answer None, and then the Python
 * code does the work (tests/unit/test_native.py compares the two on random
 * and on crafted input).
 *
 * A columnar blob is the msgpack array [1, code, keys, values]: code "d"
 * (double) or an integer code, the narrowest that holds every value ("B",
 * "H", "I" unsigned 8/16/32 bits, "b", "h", "i" signed, "q" int64:
 * columnar.h's narrow_code), keys a str of the keys joined by NUL, values
 * the native-endian array bytes (array(code).tobytes()).
 *
 *   cut(delta: dict, n: int) -> dict[int, bytes] | None
 *       A batch's delta cut into n state partitions by crc32(UTF-8 of the
 *       key) % n, each partition that holds a key as its columnar blob.
 *       None unless every key is a str (no NUL, no lone surrogate) and every
 *       value an int that fits int64 or every value a float.
 *
 *   fold(blobs: list[bytes]) -> bytes | None
 *       The base (blobs[0], b"" for none) with every delta after it merged
 *       in, the way rainstorm.state.fold merges them (a blob merged into an
 *       empty state replaces, later ones add), as one columnar blob.  None
 *       unless every blob is b"" or a columnar blob in the usual encoding,
 *       well formed, all integer codes or all "d", and no int64 sum
 *       overflows.
 *
 *   json_body(keys: list[str], values: array) -> str | None
 *       The columns of a result's partition as the body of a JSON object
 *       (no braces): what orjson.dumps(dict(zip(keys, values)))[1:-1]
 *       writes for distinct keys, without the dict.  None unless every key
 *       is a str with a UTF-8 form and the array holds integers.
 *
 * Blobs come from Redis, where anyone holding a password can write them:
 * every length is checked against the buffer before it is used, and the
 * key hash is Python's own keyed one (_Py_HashBytes), so crafted keys
 * cannot make the table quadratic.
 */
#include "columnar.h"

/* -- cut ------------------------------------------------------------------ */

static PyObject *cut(PyObject *self, PyObject *args)
{
    PyObject *delta;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O!n:cut", &PyDict_Type, &delta, &n))
        return NULL;
    if (n < 1 || n > MAX_PARTITIONS) {
        PyErr_Format(PyExc_ValueError, "cut: %zd partitions (1 to %d)", n, MAX_PARTITIONS);
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    if (!PyDict_Next(delta, &pos, &k, &v))
        Py_RETURN_NONE;
    char code;
    if (PyLong_CheckExact(v))
        code = 'q';
    else if (PyFloat_CheckExact(v))
        code = 'd';
    else
        Py_RETURN_NONE;
    Parts ps = {0};
    PyObject *out = NULL;
    if (parts_init(&ps, n) < 0)
        goto done;
    pos = 0;
    while (PyDict_Next(delta, &pos, &k, &v)) {
        if (!PyUnicode_CheckExact(k))
            goto fallback;
        char raw[8];
        if (code == 'q') {
            if (!PyLong_CheckExact(v))
                goto fallback;
            int overflow;
            long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (overflow)
                goto fallback;
            if (x == -1 && PyErr_Occurred())
                goto done;
            memcpy(raw, &x, 8);
        } else {
            if (!PyFloat_CheckExact(v))
                goto fallback;
            double d = PyFloat_AS_DOUBLE(v);
            memcpy(raw, &d, 8);
        }
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(k, &len);
        if (s == NULL) { /* a lone surrogate: Python's surrogatepass path */
            PyErr_Clear();
            goto fallback;
        }
        if (len && memchr(s, 0, (size_t)len))
            goto fallback; /* a key holding NUL: a map blob */
        if (parts_add(&ps, s, len, raw) < 0)
            goto done;
    }
    out = parts_blobs(&ps, code);
    goto done;
fallback:
    out = Py_None;
    Py_INCREF(out);
done:
    parts_free(&ps);
    return out;
}

/* -- reading a columnar blob ---------------------------------------------- */

typedef struct {
    char code; /* 0: an empty blob (no keys) */
    const char *keys;
    size_t keys_len;
    const char *vals;
    size_t count;
} Cols;

static size_t be(const unsigned char *p, int n)
{
    size_t x = 0;
    for (int i = 0; i < n; i++)
        x = (x << 8) | p[i];
    return x;
}

/* 1: parsed; 0: not a columnar blob in the usual encoding (fold in Python) */
static int parse(const char *blob, size_t n, Cols *c)
{
    const unsigned char *p = (const unsigned char *)blob, *end = p + n;
    memset(c, 0, sizeof *c);
    if (n == 0)
        return 1;
    if (n < 4 || p[0] != 0x94 || p[1] != 0x01 || p[2] != 0xA1 || !code_size((char)p[3]))
        return 0;
    c->code = (char)p[3];
    size_t item = code_size(c->code);
    p += 4;
    size_t klen;
    if (p >= end)
        return 0;
    if ((*p & 0xE0) == 0xA0) {
        klen = *p & 0x1F;
        p += 1;
    } else {
        int w = *p == 0xD9 ? 1 : *p == 0xDA ? 2 : *p == 0xDB ? 4 : 0;
        if (!w || (size_t)(end - p) < (size_t)(1 + w))
            return 0;
        klen = be(p + 1, w);
        p += 1 + w;
    }
    if ((size_t)(end - p) < klen)
        return 0;
    c->keys = (const char *)p;
    c->keys_len = klen;
    p += klen;
    if (p >= end)
        return 0;
    int w = *p == 0xC4 ? 1 : *p == 0xC5 ? 2 : *p == 0xC6 ? 4 : 0;
    if (!w || (size_t)(end - p) < (size_t)(1 + w))
        return 0;
    size_t vlen = be(p + 1, w);
    p += 1 + w;
    if ((size_t)(end - p) != vlen || vlen % item)
        return 0;
    c->vals = (const char *)p;
    c->count = vlen / item;
    /* as many keys as values (a blob with no values has no keys) */
    size_t nkeys = 0;
    if (klen || c->count) {
        nkeys = 1;
        for (const char *q = c->keys; (q = memchr(q, 0, klen - (size_t)(q - c->keys))); q++)
            nkeys++;
    }
    if (nkeys != c->count)
        return 0;
    /* keys are UTF-8, as msgpack's str decoding demands */
    PyObject *text = PyUnicode_DecodeUTF8(c->keys, (Py_ssize_t)klen, "strict");
    if (text == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(text);
    return 1;
}

/* -- fold ----------------------------------------------------------------- */

typedef struct {
    const char *key;
    size_t len;
    Py_hash_t hash;
    union {
        long long q;
        double d;
    } v;
} Entry;

typedef struct {
    Entry *entries;
    size_t count;
    Py_ssize_t *slots; /* index into entries, -1: empty */
    size_t mask;
} Table;

/* the entry of key (its hash h), added (value unset) if absent: *fresh says
 * which; NULL when the table is full (cannot happen: sized for every key).
 * Inlined by force: called from both loops of merge, it was not, and folds
 * were 3 % slower. */
static inline __attribute__((always_inline)) Entry *lookup(Table *t, const char *key, size_t len,
                                                           Py_hash_t h, int *fresh)
{
    size_t i = (size_t)h & t->mask;
    for (size_t tries = 0; tries <= t->mask; tries++, i = (i + 1) & t->mask) {
        Py_ssize_t at = t->slots[i];
        if (at < 0) {
            Entry *e = &t->entries[t->count];
            t->slots[i] = (Py_ssize_t)t->count++;
            e->key = key;
            e->len = len;
            e->hash = h;
            *fresh = 1;
            return e;
        }
        Entry *e = &t->entries[at];
        if (e->hash == h && e->len == len && memcmp(e->key, key, len) == 0) {
            *fresh = 0;
            return e;
        }
    }
    return NULL;
}

/* add the value of key i of c to entry e (fresh: new in the table) */
static inline int add_value(Entry *e, const Cols *c, size_t i, int fresh, int replace)
{
    if (c->code != 'd') {
        long long x = int_at(c->vals, i, c->code);
        if (fresh || replace)
            e->v.q = x;
        else if (__builtin_add_overflow(e->v.q, x, &e->v.q))
            return 0;
    } else {
        double x;
        memcpy(&x, c->vals + 8 * i, 8);
        /* a new key in a non-empty state is get(k, 0) + x: 0.0 + x */
        e->v.d = replace ? x : fresh ? 0.0 + x : e->v.d + x;
    }
    return 1;
}

/* the length of the key at k: up to its NUL, or to kend for the last key */
static inline size_t key_len(const char *k, const char *kend)
{
    const char *nul = memchr(k, 0, (size_t)(kend - k));
    return nul ? (size_t)(nul - k) : (size_t)(kend - k);
}

#define GROUP 32 /* keys looked up together, as rainstorm.native._words does */
#define GROUP_FROM (1 << 17) /* slots: a smaller table stays in cache (measured) */

/* merge one parsed blob; 0: an int64 sum overflowed (fold in Python).  In a
 * large table GROUP keys at a time: hashed and their slots prefetched, then
 * the entries those slots name, then merged, so that one key's loads wait
 * behind the others' */
static int merge(Table *t, const Cols *c)
{
    int replace = t->count == 0; /* dict.update into an empty state */
    const char *k = c->keys, *kend = c->keys + c->keys_len;
    if (t->mask + 1 < GROUP_FROM) {
        for (size_t i = 0; i < c->count; i++) {
            size_t len = key_len(k, kend);
            int fresh;
            Entry *e = lookup(t, k, len, _Py_HashBytes(k, (Py_ssize_t)len), &fresh);
            if (e == NULL || !add_value(e, c, i, fresh, replace))
                return 0;
            k += len + 1;
        }
        return 1;
    }
    struct { const char *key; size_t len; Py_hash_t h; } g[GROUP];
    for (size_t i = 0; i < c->count;) {
        size_t n = c->count - i < GROUP ? c->count - i : GROUP;
        for (size_t j = 0; j < n; j++) {
            size_t len = key_len(k, kend);
            g[j].key = k;
            g[j].len = len;
            g[j].h = _Py_HashBytes(k, (Py_ssize_t)len);
            __builtin_prefetch(&t->slots[(size_t)g[j].h & t->mask]);
            k += len + 1;
        }
        for (size_t j = 0; j < n; j++) {
            Py_ssize_t at = t->slots[(size_t)g[j].h & t->mask];
            if (at >= 0)
                __builtin_prefetch(&t->entries[at]);
        }
        for (size_t j = 0; j < n; j++, i++) {
            int fresh;
            Entry *e = lookup(t, g[j].key, g[j].len, g[j].h, &fresh);
            if (e == NULL || !add_value(e, c, i, fresh, replace))
                return 0;
        }
    }
    return 1;
}

static PyObject *encoded(const Table *t, char code)
{
    if (t->count == 0) /* encode({}): [0, {}] */
        return PyBytes_FromStringAndSize("\x92\x00\x80", 3);
    Buf keys = {0}, vals = {0};
    PyObject *out = NULL;
    for (size_t i = 0; i < t->count; i++) {
        const Entry *e = &t->entries[i];
        if ((i && buf_put(&keys, "", 1) < 0) || buf_put(&keys, e->key, e->len) < 0 ||
            buf_put(&vals, &e->v, 8) < 0)
            goto done;
    }
    out = columnar_blob(code, keys.p, keys.len, vals.p, vals.len);
done:
    PyMem_Free(keys.p);
    PyMem_Free(vals.p);
    return out;
}

static PyObject *fold(PyObject *self, PyObject *args)
{
    PyObject *blobs;
    if (!PyArg_ParseTuple(args, "O!:fold", &PyList_Type, &blobs))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(blobs);
    Cols *cols = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Cols));
    if (cols == NULL)
        return PyErr_NoMemory();
    /* the blobs stay referenced by the list: no Python code runs in here */
    size_t total = 0;
    char code = 0; /* 'q': integers (of any code), 'd': doubles */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyList_GET_ITEM(blobs, i);
        if (!PyBytes_CheckExact(b) ||
            !parse(PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b), &cols[i])) {
            PyMem_Free(cols);
            Py_RETURN_NONE;
        }
        char kind = cols[i].code == 'd' ? 'd' : cols[i].code ? 'q' : 0;
        if (kind && code && kind != code) {
            PyMem_Free(cols);
            Py_RETURN_NONE;
        }
        if (kind)
            code = kind;
        total += cols[i].count;
    }
    Table t = {0};
    size_t size = 8;
    while (size < 2 * total)
        size *= 2;
    PyObject *out = NULL;
    t.entries = PyMem_Malloc((total ? total : 1) * sizeof(Entry));
    t.slots = PyMem_Malloc(size * sizeof(Py_ssize_t));
    t.mask = size - 1;
    if (t.entries == NULL || t.slots == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memset(t.slots, 0xFF, size * sizeof(Py_ssize_t));
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!merge(&t, &cols[i])) {
            out = Py_None;
            Py_INCREF(out);
            goto done;
        }
    }
    out = encoded(&t, code ? code : 'q');
done:
    PyMem_Free(t.entries);
    PyMem_Free(t.slots);
    PyMem_Free(cols);
    return out;
}

/* -- json_body --------------------------------------------------------------- */

static const char HEX[] = "0123456789abcdef";

/* key as a JSON string, escaped as orjson escapes it: '"' and '\\', the
 * control characters (\b \t \n \f \r, else \u00xx); the rest as it is */
static int json_string(Buf *out, const char *s, Py_ssize_t n)
{
    if (buf_reserve(out, 6 * (size_t)n + 2) < 0)
        return -1;
    char *w = out->p + out->len;
    *w++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *w++ = (char)c;
            continue;
        }
        *w++ = '\\';
        switch (c) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '\b': *w++ = 'b'; break;
        case '\t': *w++ = 't'; break;
        case '\n': *w++ = 'n'; break;
        case '\f': *w++ = 'f'; break;
        case '\r': *w++ = 'r'; break;
        default:
            *w++ = 'u';
            *w++ = '0';
            *w++ = '0';
            *w++ = HEX[c >> 4];
            *w++ = HEX[c & 15];
        }
    }
    *w++ = '"';
    out->len = (size_t)(w - out->p);
    return 0;
}

static int json_int(Buf *out, long long v)
{
    char tmp[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (buf_reserve(out, (size_t)n + 1) < 0)
        return -1;
    if (v < 0)
        out->p[out->len++] = '-';
    while (n)
        out->p[out->len++] = tmp[--n];
    return 0;
}

/* the integer code (columnar.h's int_at) of an array's items of format f and
 * size itemsize; 0 for any other (floats, unsigned 64 bits) */
static char code_of(char f, Py_ssize_t itemsize)
{
    if (f == 0 || strchr("bBhHiIlq", f) == NULL)
        return 0;
    int sign = f >= 'a';
    switch (itemsize) {
    case 1: return sign ? 'b' : 'B';
    case 2: return sign ? 'h' : 'H';
    case 4: return sign ? 'i' : 'I';
    case 8: return sign ? 'q' : 0;
    default: return 0;
    }
}

static PyObject *json_body(PyObject *self, PyObject *args)
{
    PyObject *keys, *values;
    if (!PyArg_ParseTuple(args, "O!O:json_body", &PyList_Type, &keys, &values))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(values, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *out = NULL;
    Buf buf = {0};
    const char *fmt = view.format ? view.format : "B";
    char f = fmt[0] == '@' || fmt[0] == '=' ? fmt[1] : fmt[0];
    Py_ssize_t n = PyList_GET_SIZE(keys);
    char code = code_of(f, view.itemsize);
    if (code == 0 || view.ndim != 1 || view.len != n * view.itemsize)
        goto none; /* floats, or not one integer a key: the Python way */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyList_GET_ITEM(keys, i);
        Py_ssize_t len;
        const char *u = PyUnicode_CheckExact(k) ? PyUnicode_AsUTF8AndSize(k, &len) : NULL;
        if (u == NULL) { /* not a str, or a lone surrogate: the Python way */
            PyErr_Clear();
            goto none;
        }
        if ((i && buf_put(&buf, ",", 1) < 0) || json_string(&buf, u, len) < 0 ||
            buf_put(&buf, ":", 1) < 0 || json_int(&buf, int_at(view.buf, (size_t)i, code)) < 0)
            goto done;
    }
    out = PyUnicode_DecodeUTF8(buf.p ? buf.p : "", (Py_ssize_t)buf.len, "strict");
    goto done;
none:
    out = Py_None;
    Py_INCREF(out);
done:
    PyMem_Free(buf.p);
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"cut", cut, METH_VARARGS, "A delta cut into n partitions as columnar blobs, or None."},
    {"json_body", json_body, METH_VARARGS,
     "A partition's columns as the body of a JSON object (orjson's text), or None."},
    {"fold", fold, METH_VARARGS, "Columnar blobs folded into one, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_columns",
    "The per-key hot paths of an additive aggregate's columnar blobs, in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__columns(void)
{
    crc_init();
    return PyModule_Create(&module);
}
