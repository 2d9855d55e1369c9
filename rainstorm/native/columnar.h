/* Shared by rainstorm.native's extensions: growable buffers, zlib's crc32,
 * and writing a columnar blob as msgpack.packb([1, code, keys, values],
 * use_bin_type=True) writes it.  Everything is static: each extension
 * compiles its own copy. */
#ifndef RAINSTORM_COLUMNAR_H
#define RAINSTORM_COLUMNAR_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* -- growable byte buffers ------------------------------------------------ */

typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static inline int buf_reserve(Buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = PyMem_Realloc(b->p, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, const void *src, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

/* -- crc32, as zlib.crc32 ------------------------------------------------- */

/* Slice-by-8 (Intel's, as zlib's braided code does it): eight table lookups
 * per 8 bytes, independent of each other, where the byte-at-a-time loop waits
 * on each lookup before the next; keys are words, mostly 4-16 bytes.  Little
 * endian only (the loads below read 4 bytes as a number); elsewhere a byte at
 * a time. */
static uint32_t crc_table[8][256];

static inline void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = crc_table[t - 1][i];
            crc_table[t][i] = (c >> 8) ^ crc_table[0][c & 0xFF];
        }
}

static inline uint32_t crc32_of(const char *s, Py_ssize_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    const unsigned char *p = (const unsigned char *)s;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (n >= 8) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + 4, 4);
        a ^= c;
        c = crc_table[7][a & 0xFF] ^ crc_table[6][(a >> 8) & 0xFF]
            ^ crc_table[5][(a >> 16) & 0xFF] ^ crc_table[4][a >> 24]
            ^ crc_table[3][b & 0xFF] ^ crc_table[2][(b >> 8) & 0xFF]
            ^ crc_table[1][(b >> 16) & 0xFF] ^ crc_table[0][b >> 24];
        p += 8;
        n -= 8;
    }
#endif
    while (n-- > 0)
        c = crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* -- writing a columnar blob, as msgpack.packb(..., use_bin_type=True) ---- */

#define MAX_RAW 0xFFFFFFFFu
#define MAX_PARTITIONS (1 << 20)

static inline size_t str_header(unsigned char *h, size_t n)
{
    if (n < 32) {
        h[0] = (unsigned char)(0xA0 | n);
        return 1;
    }
    if (n < 256) {
        h[0] = 0xD9;
        h[1] = (unsigned char)n;
        return 2;
    }
    if (n < 65536) {
        h[0] = 0xDA;
        h[1] = (unsigned char)(n >> 8);
        h[2] = (unsigned char)n;
        return 3;
    }
    h[0] = 0xDB;
    h[1] = (unsigned char)(n >> 24);
    h[2] = (unsigned char)(n >> 16);
    h[3] = (unsigned char)(n >> 8);
    h[4] = (unsigned char)n;
    return 5;
}

static inline size_t bin_header(unsigned char *h, size_t n)
{
    if (n < 256) {
        h[0] = 0xC4;
        h[1] = (unsigned char)n;
        return 2;
    }
    if (n < 65536) {
        h[0] = 0xC5;
        h[1] = (unsigned char)(n >> 8);
        h[2] = (unsigned char)n;
        return 3;
    }
    h[0] = 0xC6;
    h[1] = (unsigned char)(n >> 24);
    h[2] = (unsigned char)(n >> 16);
    h[3] = (unsigned char)(n >> 8);
    h[4] = (unsigned char)n;
    return 5;
}

/* -- value typecodes ------------------------------------------------------ */

/* The bytes of one value of an array typecode a columnar blob may carry (0:
 * not one).  Integers travel in the narrowest code that holds every value of
 * the blob: B/H/I (unsigned 8/16/32 bits) when none is negative, else
 * b/h/i (signed), else q (int64); d is a double.  The sizes are those of
 * Python's array module on every platform rainstorm builds for. */
static inline size_t code_size(char code)
{
    switch (code) {
    case 'b': case 'B': return 1;
    case 'h': case 'H': return 2;
    case 'i': case 'I': return 4;
    case 'q': case 'd': return 8;
    default: return 0;
    }
}

/* value i of an integer column of code ``code`` (not 'd') */
static inline long long int_at(const char *vals, size_t i, char code)
{
    switch (code) {
    case 'b': { int8_t x; memcpy(&x, vals + i, 1); return x; }
    case 'B': { uint8_t x; memcpy(&x, vals + i, 1); return x; }
    case 'h': { int16_t x; memcpy(&x, vals + 2 * i, 2); return x; }
    case 'H': { uint16_t x; memcpy(&x, vals + 2 * i, 2); return x; }
    case 'i': { int32_t x; memcpy(&x, vals + 4 * i, 4); return x; }
    case 'I': { uint32_t x; memcpy(&x, vals + 4 * i, 4); return x; }
    default: { long long x; memcpy(&x, vals + 8 * i, 8); return x; }
    }
}

/* the narrowest integer code holding the n int64 values at vals (as
 * rainstorm.operators.aggregates._int_code chooses) */
static inline char narrow_code(const char *vals, size_t n)
{
    if (n == 0)
        return 'q';
    long long lo = int_at(vals, 0, 'q'), hi = lo;
    for (size_t i = 1; i < n; i++) {
        long long x = int_at(vals, i, 'q');
        if (x < lo)
            lo = x;
        if (x > hi)
            hi = x;
    }
    if (lo >= 0)
        return hi < 256 ? 'B' : hi < 65536 ? 'H' : hi <= (long long)UINT32_MAX ? 'I' : 'q';
    if (lo >= INT8_MIN && hi <= INT8_MAX)
        return 'b';
    if (lo >= INT16_MIN && hi <= INT16_MAX)
        return 'h';
    return lo >= INT32_MIN && hi <= INT32_MAX ? 'i' : 'q';
}

/* the n int64 values at vals written in code ``code`` (each fits) */
static inline void narrow_into(char *dst, const char *vals, size_t n, char code)
{
    for (size_t i = 0; i < n; i++) {
        long long x = int_at(vals, i, 'q');
        switch (code) {
        case 'b': { int8_t y = (int8_t)x; memcpy(dst + i, &y, 1); break; }
        case 'B': { uint8_t y = (uint8_t)x; memcpy(dst + i, &y, 1); break; }
        case 'h': { int16_t y = (int16_t)x; memcpy(dst + 2 * i, &y, 2); break; }
        case 'H': { uint16_t y = (uint16_t)x; memcpy(dst + 2 * i, &y, 2); break; }
        case 'i': { int32_t y = (int32_t)x; memcpy(dst + 4 * i, &y, 4); break; }
        case 'I': { uint32_t y = (uint32_t)x; memcpy(dst + 4 * i, &y, 4); break; }
        default: memcpy(dst + 8 * i, &x, 8);
        }
    }
}

/* [1, code, keys, values] as bytes, from values given as 8 bytes each
 * (int64 for code 'q', which is then narrowed, or double for 'd'); Py_None
 * (a new reference) when a part is too large for msgpack */
static inline PyObject *columnar_blob(char code, const char *keys, size_t keys_len,
                               const char *vals, size_t vals_len)
{
    size_t n = vals_len / 8;
    char out_code = code == 'q' ? narrow_code(vals, n) : code;
    size_t out_len = n * code_size(out_code);
    if (keys_len > MAX_RAW || out_len > MAX_RAW)
        Py_RETURN_NONE;
    unsigned char head[4] = {0x94, 0x01, 0xA1, (unsigned char)out_code};
    unsigned char sh[5], bh[5];
    size_t sn = str_header(sh, keys_len), bn = bin_header(bh, out_len);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(4 + sn + keys_len + bn +
                                                                 out_len));
    if (out == NULL)
        return NULL;
    char *w = PyBytes_AS_STRING(out);
    memcpy(w, head, 4);
    w += 4;
    memcpy(w, sh, sn);
    w += sn;
    if (keys_len)
        memcpy(w, keys, keys_len);
    w += keys_len;
    memcpy(w, bh, bn);
    w += bn;
    if (out_code == code) {
        if (vals_len)
            memcpy(w, vals, vals_len);
    } else {
        narrow_into(w, vals, n, out_code);
    }
    return out;
}

/* the partition of a key: crc32 of its UTF-8 bytes modulo n */
static inline uint32_t partition_of(const char *s, Py_ssize_t len, Py_ssize_t n)
{
    return crc32_of(s, len) % (uint32_t)n;
}

/* -- a delta cut into n partitions: each partition's keys and values ---- */

typedef struct {
    Py_ssize_t n;
    Buf *keys, *vals;
} Parts;

static inline int parts_init(Parts *ps, Py_ssize_t n)
{
    ps->n = n;
    ps->keys = PyMem_Calloc((size_t)n, sizeof(Buf));
    ps->vals = PyMem_Calloc((size_t)n, sizeof(Buf));
    if (ps->keys == NULL || ps->vals == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* the key (UTF-8, no NUL) and its 8 value bytes into its partition */
static inline int parts_add(Parts *ps, const char *key, Py_ssize_t len, const void *value)
{
    Py_ssize_t p = (Py_ssize_t)partition_of(key, len, ps->n);
    Buf *kb = &ps->keys[p], *vb = &ps->vals[p];
    if ((vb->len && buf_put(kb, "", 1) < 0) || buf_put(kb, key, (size_t)len) < 0 ||
        buf_put(vb, value, 8) < 0)
        return -1;
    return 0;
}

/* {partition: columnar blob} of every partition that holds a key; Py_None
 * (a new reference) when one is too large for msgpack */
static inline PyObject *parts_blobs(const Parts *ps, char code)
{
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    for (Py_ssize_t p = 0; p < ps->n; p++) {
        if (!ps->vals[p].len)
            continue;
        PyObject *blob = columnar_blob(code, ps->keys[p].p, ps->keys[p].len, ps->vals[p].p,
                                       ps->vals[p].len);
        if (blob == Py_None) {
            Py_DECREF(out);
            return blob;
        }
        PyObject *key = blob ? PyLong_FromSsize_t(p) : NULL;
        int bad = key == NULL || PyDict_SetItem(out, key, blob) < 0;
        Py_XDECREF(key);
        Py_XDECREF(blob);
        if (bad) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static inline void parts_free(Parts *ps)
{
    for (Py_ssize_t p = 0; ps->keys && p < ps->n; p++)
        PyMem_Free(ps->keys[p].p);
    for (Py_ssize_t p = 0; ps->vals && p < ps->n; p++)
        PyMem_Free(ps->vals[p].p);
    PyMem_Free(ps->keys);
    PyMem_Free(ps->vals);
}

#endif
