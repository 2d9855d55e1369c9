/* rainstorm.native._words: word count's hot loop, in C.
 *
 *   WordCounts()            the words of one batch and how often each came
 *     .add_text(text: str) -> int
 *         counts every word of text.split() (str.split()'s own whitespace,
 *         Py_UNICODE_ISSPACE) and answers how many there were
 *     .add_utf8(data: bytes) -> (words, lines) | None
 *         add_text(data.decode()) without decoding, and the lines as
 *         rainstorm.worker.batch counts them; None, counting nothing, when
 *         data is not UTF-8 as Python's strict decoder sees it
 *     .clear()             forget every word, keeping the memory
 *     len(wc)              the distinct words
 *     .cut(n: int) -> dict[int, bytes] | None
 *         the counts cut into n state partitions as columnar blobs: the
 *         bytes rainstorm.native._columns.cut (and the Python code) writes
 *         for the Counter of the same words, or None where a word holds NUL
 *         or a lone surrogate (then .to_dict() goes the Python way)
 *     .to_dict() -> dict[str, int]
 *         the counts as Counter.update(text.split()) over the same texts
 *         leaves them: in the order of each word's first occurrence
 *
 * Counter.update(text.split()) makes a str object for every word and hashes
 * it; here a word is hashed where it lies and its UTF-8 is copied once per
 * batch, and no str is made at all on the way to the commit.  On x86-64
 * (SSE2) ASCII text is scanned 64 bytes at a time; RAINSTORM_NO_SIMD, or
 * another machine, scans it byte by byte (tests/unit/test_native.py builds
 * both).
 *
 * The text is the user's input: the table hashes with Python's own keyed
 * hash (_Py_HashBytes), so crafted words cannot make it quadratic.
 */
#include "columnar.h"

static unsigned char space1[256]; /* Py_UNICODE_ISSPACE of each 1-byte char */
#define GROUP 32 /* words looked up together (add_utf8) */

typedef struct {
    size_t at;  /* the word's UTF-8 in the arena */
    size_t len; /* in bytes */
    Py_hash_t hash;
    long long count;
} Word;

typedef struct {
    PyObject_HEAD
    Buf arena;   /* every distinct word's UTF-8 (surrogates as surrogatepass writes them) */
    Word *words; /* in order of first occurrence */
    Py_ssize_t count, cap;
    Py_ssize_t *slots; /* index into words, -1: empty; twice cap */
    size_t mask;
    int odd; /* a word holds NUL or a lone surrogate: no columnar blobs */
    Buf scratch; /* one word's UTF-8, for texts that are not ASCII */
} WordCounts;

static int grow(WordCounts *t)
{
    size_t size = t->slots ? 2 * (t->mask + 1) : 1024;
    Py_ssize_t *slots = PyMem_Malloc(size * sizeof(Py_ssize_t));
    Word *words = PyMem_Realloc(t->words, (size / 2) * sizeof(Word));
    if (words)
        t->words = words;
    if (slots == NULL || words == NULL) {
        PyMem_Free(slots);
        PyErr_NoMemory();
        return -1;
    }
    t->cap = (Py_ssize_t)(size / 2);
    memset(slots, 0xFF, size * sizeof(Py_ssize_t));
    for (Py_ssize_t i = 0; i < t->count; i++) {
        size_t j = (size_t)t->words[i].hash & (size - 1);
        while (slots[j] >= 0)
            j = (j + 1) & (size - 1);
        slots[j] = i;
    }
    PyMem_Free(t->slots);
    t->slots = slots;
    t->mask = size - 1;
    return 0;
}

/* count one word, given as its UTF-8 and its hash */
static int add_hashed(WordCounts *t, const char *s, size_t len, Py_hash_t h)
{
    size_t j = (size_t)h & t->mask;
    for (;; j = (j + 1) & t->mask) {
        Py_ssize_t i = t->slots[j];
        if (i < 0)
            break;
        Word *w = &t->words[i];
        if (w->hash == h && w->len == len && memcmp(t->arena.p + w->at, s, len) == 0) {
            w->count++;
            return 0;
        }
    }
    if (t->count == t->cap) { /* at half the slots: grow, then find the new slot */
        if (grow(t) < 0)
            return -1;
        for (j = (size_t)h & t->mask; t->slots[j] >= 0; j = (j + 1) & t->mask)
            ;
    }
    size_t at = t->arena.len;
    if (buf_put(&t->arena, s, len) < 0)
        return -1;
    if (len && memchr(s, 0, len))
        t->odd = 1;
    t->slots[j] = t->count;
    t->words[t->count++] = (Word){at, len, h, 1};
    return 0;
}

/* count one word, given as its UTF-8 */
static int add(WordCounts *t, const char *s, size_t len)
{
    return add_hashed(t, s, len, _Py_HashBytes(s, (Py_ssize_t)len));
}

/* one word of a text that is not ASCII, as UTF-8 in t->scratch (a lone
 * surrogate written as surrogatepass writes it, and marked odd) */
static int utf8_of(WordCounts *t, int kind, const void *data, Py_ssize_t start, Py_ssize_t end)
{
    t->scratch.len = 0;
    if (buf_reserve(&t->scratch, 4 * (size_t)(end - start)) < 0)
        return -1;
    unsigned char *w = (unsigned char *)t->scratch.p;
    for (Py_ssize_t i = start; i < end; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80) {
            *w++ = (unsigned char)c;
        } else if (c < 0x800) {
            *w++ = (unsigned char)(0xC0 | (c >> 6));
            *w++ = (unsigned char)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            if (c >= 0xD800 && c <= 0xDFFF)
                t->odd = 1;
            *w++ = (unsigned char)(0xE0 | (c >> 12));
            *w++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            *w++ = (unsigned char)(0x80 | (c & 0x3F));
        } else {
            *w++ = (unsigned char)(0xF0 | (c >> 18));
            *w++ = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
            *w++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            *w++ = (unsigned char)(0x80 | (c & 0x3F));
        }
    }
    t->scratch.len = (size_t)(w - (unsigned char *)t->scratch.p);
    return 0;
}

/* the code point of the UTF-8 sequence at s (valid: CPython wrote it), its
 * length in *w */
static inline Py_UCS4 code_point(const unsigned char *s, const unsigned char *end, int *w)
{
    if (s[0] < 0xE0 && end - s >= 2) {
        *w = 2;
        return ((Py_UCS4)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    }
    if (s[0] < 0xF0 && end - s >= 3) {
        *w = 3;
        return ((Py_UCS4)(s[0] & 0x0F) << 12) | ((Py_UCS4)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    }
    if (end - s >= 4) {
        *w = 4;
        return ((Py_UCS4)(s[0] & 0x07) << 18) | ((Py_UCS4)(s[1] & 0x3F) << 12) |
               ((Py_UCS4)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    }
    *w = 1;
    return 0xFFFD;
}

/* Is s..end UTF-8 that Python's strict decoder accepts (no overlong form,
 * surrogate, code point past U+10FFFF or cut sequence)? */
static int valid_utf8(const unsigned char *s, const unsigned char *end)
{
    while (s < end) {
        while (end - s >= 8) {  /* ASCII, 8 bytes at a time */
            uint64_t v;
            memcpy(&v, s, 8);
            if (v & 0x8080808080808080ULL)
                break;
            s += 8;
        }
        if (s >= end)
            break;
        unsigned char c = s[0];
        Py_ssize_t left = end - s;
        if (c < 0x80) {
            s++;
        } else if (c >= 0xC2 && c <= 0xDF) {
            if (left < 2 || (s[1] & 0xC0) != 0x80)
                return 0;
            s += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (left < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 ||
                (c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F))
                return 0;
            s += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (left < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 ||
                (s[3] & 0xC0) != 0x80 || (c == 0xF0 && s[1] < 0x90) ||
                (c == 0xF4 && s[1] > 0x8F))
                return 0;
            s += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* -- counting the words of UTF-8 text -------------------------------------
 *
 * Words are found 64 bytes at a time where the bytes are ASCII (SSE2: masks
 * of the whitespace bytes and of the newlines, then one step per word
 * boundary, not per byte), and character by character elsewhere.  They are
 * counted GROUP at a time: hashed, their slots prefetched, then the words
 * those slots name, then counted, so that the loads of one word wait
 * behind the work on the others. */

typedef struct {
    WordCounts *t;
    struct {
        const char *s;
        size_t len;
        Py_hash_t h;
    } g[GROUP];
    int n;
    Py_ssize_t words;
} Words;

static int flush(Words *k)
{
    WordCounts *t = k->t;
    for (int i = 0; i < k->n; i++) {
        Py_ssize_t at = t->slots[(size_t)k->g[i].h & t->mask];
        if (at >= 0)
            __builtin_prefetch(&t->words[at]);
    }
    for (int i = 0; i < k->n; i++)
        if (add_hashed(t, k->g[i].s, k->g[i].len, k->g[i].h) < 0)
            return -1;
    k->words += k->n;
    k->n = 0;
    return 0;
}

static inline int push(Words *k, const unsigned char *w, const unsigned char *end)
{
    size_t len = (size_t)(end - w);
    Py_hash_t h = _Py_HashBytes(w, (Py_ssize_t)len);
    __builtin_prefetch(&k->t->slots[(size_t)h & k->t->mask]);
    k->g[k->n].s = (const char *)w;
    k->g[k->n].len = len;
    k->g[k->n].h = h;
    return ++k->n == GROUP ? flush(k) : 0;
}

#if defined(__SSE2__) && !defined(RAINSTORM_NO_SIMD)
/* characters from *ps while before stop (the last may run past it, to at
 * most end); *word: where the word being read began, or NULL */
static int by_char(Words *k, const unsigned char **ps, const unsigned char *stop,
                   const unsigned char *end, const unsigned char **word, Py_ssize_t *lines)
{
    const unsigned char *s = *ps, *w = *word;
    while (s < stop) {
        int width = 1, space;
        if (*s < 0x80) {
            space = space1[*s];
            *lines += *s == '\n';
        } else {
            space = Py_UNICODE_ISSPACE(code_point(s, end, &width)) != 0;
        }
        if (space) {
            if (w != NULL) {
                if (push(k, w, s) < 0)
                    return -1;
                w = NULL;
            }
        } else if (w == NULL) {
            w = s;
        }
        s += width;
    }
    *ps = s;
    *word = w;
    return 0;
}

#include <emmintrin.h>

/* bit i: byte i of s[0..64) is ASCII whitespace (*ws), '\n' (*nl), >= 0x80 (*hi) */
static inline void masks64(const unsigned char *s, uint64_t *ws, uint64_t *nl, uint64_t *hi)
{
    const __m128i lo1 = _mm_set1_epi8(0x08), hi1 = _mm_set1_epi8(0x0E);
    const __m128i lo2 = _mm_set1_epi8(0x1B), hi2 = _mm_set1_epi8(0x21);
    const __m128i newline = _mm_set1_epi8('\n');
    uint64_t w = 0, n = 0, h = 0;
    for (int i = 0; i < 4; i++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(s + 16 * i));
        /* signed compares: bytes >= 0x80 are negative, in neither range */
        __m128i a = _mm_and_si128(_mm_cmpgt_epi8(v, lo1), _mm_cmplt_epi8(v, hi1));
        __m128i b = _mm_and_si128(_mm_cmpgt_epi8(v, lo2), _mm_cmplt_epi8(v, hi2));
        w |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_or_si128(a, b)) << (16 * i);
        n |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, newline)) << (16 * i);
        h |= (uint64_t)(uint16_t)_mm_movemask_epi8(v) << (16 * i);
    }
    *ws = w;
    *nl = n;
    *hi = h;
}

/* the words of UTF-8 text (an ASCII str's own bytes, or its UTF-8 form);
 * *lines += its '\n's */
static Py_ssize_t add_utf8(WordCounts *t, const unsigned char *s, const unsigned char *end,
                           Py_ssize_t *lines)
{
    Words k = {.t = t};
    const unsigned char *word = NULL;
    while (end - s >= 64) {
        uint64_t ws, nl, hi;
        masks64(s, &ws, &nl, &hi);
        if (hi) { /* not all ASCII: these 64 bytes character by character */
            if (by_char(&k, &s, s + 64, end, &word, lines) < 0)
                return -1;
            continue;
        }
        *lines += __builtin_popcountll(nl);
        /* bit i: byte i is whitespace and byte i - 1 is not, or the other
         * way round (byte -1: whitespace unless a word is being read) */
        uint64_t edges = ws ^ ((ws << 1) | (word == NULL));
        while (edges) {
            const unsigned char *at = s + __builtin_ctzll(edges);
            edges &= edges - 1;
            if (word == NULL) {
                word = at;
            } else {
                if (push(&k, word, at) < 0)
                    return -1;
                word = NULL;
            }
        }
        s += 64;
    }
    if (by_char(&k, &s, end, end, &word, lines) < 0 ||
        (word != NULL && push(&k, word, end) < 0) || flush(&k) < 0)
        return -1;
    return k.words;
}

#else /* no SSE2: runs of whitespace, then of other characters */

/* the end of the run of whitespace at s; *lines += the '\n's in it */
static inline const unsigned char *space_end(const unsigned char *s, const unsigned char *end,
                                             Py_ssize_t *lines)
{
    while (s < end) {
        if (*s < 0x80) {
            if (!space1[*s])
                break;
            *lines += *s == '\n';
            s++;
        } else {
            int w;
            if (!Py_UNICODE_ISSPACE(code_point(s, end, &w)))
                break;
            s += w;
        }
    }
    return s;
}

/* the end of the word (the run of non-whitespace) at s */
static inline const unsigned char *word_end(const unsigned char *s, const unsigned char *end)
{
    while (s < end) {
        if (*s < 0x80) {
            if (space1[*s])
                break;
            s++;
        } else {
            int w;
            if (Py_UNICODE_ISSPACE(code_point(s, end, &w)))
                break;
            s += w;
        }
    }
    return s;
}

static Py_ssize_t add_utf8(WordCounts *t, const unsigned char *s, const unsigned char *end,
                           Py_ssize_t *lines)
{
    Words k = {.t = t};
    for (;;) {
        s = space_end(s, end, lines);
        if (s >= end)
            break;
        const unsigned char *word = s;
        s = word_end(s, end);
        if (push(&k, word, s) < 0)
            return -1;
    }
    return flush(&k) < 0 ? -1 : k.words;
}
#endif

/* the words of a str with a lone surrogate (no UTF-8 form), char by char */
static Py_ssize_t add_chars(WordCounts *t, PyObject *text)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), words = 0, i = 0;
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    for (;;) {
        while (i < n && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i)))
            i++;
        if (i >= n)
            return words;
        Py_ssize_t start = i;
        while (i < n && !Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i)))
            i++;
        if (utf8_of(t, kind, data, start, i) < 0 || add(t, t->scratch.p, t->scratch.len) < 0)
            return -1;
        words++;
    }
}

static PyObject *add_text(WordCounts *t, PyObject *text)
{
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "add_text: a str, not %.60s", Py_TYPE(text)->tp_name);
        return NULL;
    }
    if (t->slots == NULL && grow(t) < 0)
        return NULL;
    Py_ssize_t len, words;
    /* an ASCII str's own bytes; another's UTF-8 (made once, kept by the str) */
    const char *u = PyUnicode_AsUTF8AndSize(text, &len);
    if (u != NULL) {
        Py_ssize_t lines = 0;
        words = add_utf8(t, (const unsigned char *)u, (const unsigned char *)u + len, &lines);
    } else {
        PyErr_Clear();
        words = add_chars(t, text);
    }
    return words < 0 ? NULL : PyLong_FromSsize_t(words);
}

/* add_text(data.decode()) straight from the bytes, when they are UTF-8 */
static PyObject *add_utf8_bytes(WordCounts *t, PyObject *data)
{
    if (!PyBytes_Check(data)) {
        PyErr_Format(PyExc_TypeError, "add_utf8: bytes, not %.60s", Py_TYPE(data)->tp_name);
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    if (!valid_utf8(s, s + len))
        Py_RETURN_NONE;
    if (t->slots == NULL && grow(t) < 0)
        return NULL;
    Py_ssize_t lines = 0;
    Py_ssize_t words = add_utf8(t, s, s + len, &lines);
    if (words < 0)
        return NULL;
    if (len > 0 && s[len - 1] != '\n')
        lines++;  /* str.count('\n'), plus a last line without one */
    return Py_BuildValue("(nn)", words, lines);
}

static PyObject *cut(WordCounts *t, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 1 || n > MAX_PARTITIONS) {
        PyErr_Format(PyExc_ValueError, "cut: %zd partitions (1 to %d)", n, MAX_PARTITIONS);
        return NULL;
    }
    if (t->odd || t->count == 0)
        Py_RETURN_NONE;
    Parts ps = {0};
    PyObject *out = NULL;
    if (parts_init(&ps, n) == 0) {
        Py_ssize_t i = 0;
        for (; i < t->count; i++) {
            const Word *w = &t->words[i];
            if (parts_add(&ps, t->arena.p + w->at, (Py_ssize_t)w->len, &w->count) < 0)
                break;
        }
        if (i == t->count)
            out = parts_blobs(&ps, 'q');
    }
    parts_free(&ps);
    return out;
}

/* forget every word, keeping the memory (a worker's next batch reuses it:
 * fresh memory for each batch's table cost its page faults) */
static PyObject *clear(WordCounts *t, PyObject *unused)
{
    t->count = 0;
    t->odd = 0;
    t->arena.len = 0;
    if (t->slots != NULL)
        memset(t->slots, 0xFF, (t->mask + 1) * sizeof(Py_ssize_t));
    Py_RETURN_NONE;
}

static PyObject *to_dict(WordCounts *t, PyObject *unused)
{
    PyObject *out = PyDict_New();
    for (Py_ssize_t i = 0; out && i < t->count; i++) {
        const Word *w = &t->words[i];
        PyObject *key = PyUnicode_DecodeUTF8(t->arena.p + w->at, (Py_ssize_t)w->len,
                                             "surrogatepass");
        PyObject *value = key ? PyLong_FromLongLong(w->count) : NULL;
        if (value == NULL || PyDict_SetItem(out, key, value) < 0)
            Py_CLEAR(out);
        Py_XDECREF(key);
        Py_XDECREF(value);
    }
    return out;
}

static Py_ssize_t length(WordCounts *t)
{
    return t->count;
}

static void dealloc(WordCounts *t)
{
    PyMem_Free(t->arena.p);
    PyMem_Free(t->scratch.p);
    PyMem_Free(t->words);
    PyMem_Free(t->slots);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyMethodDef word_methods[] = {
    {"add_text", (PyCFunction)add_text, METH_O,
     "Count every word of text.split(); the number of words."},
    {"add_utf8", (PyCFunction)add_utf8_bytes, METH_O,
     "add_text(data.decode()) for UTF-8 bytes: (words, lines), lines as "
     "data.count(b'\\n') plus a last line without one; None (nothing counted) when "
     "data is not UTF-8."},
    {"cut", (PyCFunction)cut, METH_O,
     "The counts cut into n partitions as columnar blobs, or None."},
    {"to_dict", (PyCFunction)to_dict, METH_NOARGS, "The counts as a dict, words in order."},
    {"clear", (PyCFunction)clear, METH_NOARGS, "Forget every word, keeping the memory."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods word_sequence = {.sq_length = (lenfunc)length};

static PyTypeObject WordCountsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rainstorm.native._words.WordCounts",
    .tp_doc = "The words of one batch and how often each came.",
    .tp_basicsize = sizeof(WordCounts),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)dealloc,
    .tp_methods = word_methods,
    .tp_as_sequence = &word_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_words", "Word count's hot loop, in C.", -1, NULL,
};

PyMODINIT_FUNC PyInit__words(void)
{
    crc_init();
    for (int c = 0; c < 256; c++)
        space1[c] = Py_UNICODE_ISSPACE(c) ? 1 : 0;
    if (PyType_Ready(&WordCountsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddObjectRef(m, "WordCounts", (PyObject *)&WordCountsType) < 0)
        Py_CLEAR(m);
    return m;
}
