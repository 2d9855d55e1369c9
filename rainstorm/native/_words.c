/* rainstorm.native._words: word count's hot loop, in C.
 *
 *   count_words(text: str, acc: dict) -> int
 *       Adds every word of text.split() to acc, as Counter.update(
 *       text.split()) does (acc[w] = acc.get(w, 0) + 1, keys new to acc in
 *       the order of their first occurrence), and answers how many words
 *       there were.  Whitespace is str.split()'s own (Py_UNICODE_ISSPACE).
 *       The words are counted in a table of spans of text first, so a str
 *       is made once per distinct word, not once per word.
 *
 * The text is the user's input: the table hashes with Python's own keyed
 * hash (_Py_HashBytes), so crafted words cannot make it quadratic.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static unsigned char space1[256]; /* Py_UNICODE_ISSPACE of each 1-byte char */

typedef struct {
    const char *at; /* the word's first code unit */
    Py_ssize_t len; /* in code units */
    Py_hash_t hash;
    Py_ssize_t count;
} Word;

typedef struct {
    Word *words; /* in order of first occurrence */
    Py_ssize_t count, cap;
    Py_ssize_t *slots; /* index into words, -1: empty */
    size_t mask;
    int kind;
} Table;

static int grow(Table *t)
{
    size_t size = 2 * (t->mask + 1);
    Py_ssize_t *slots = PyMem_Malloc(size * sizeof(Py_ssize_t));
    Word *words = PyMem_Realloc(t->words, (size / 2) * sizeof(Word));
    if (slots == NULL || words == NULL) {
        PyMem_Free(slots);
        if (words)
            t->words = words;
        PyErr_NoMemory();
        return -1;
    }
    t->words = words;
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

static int add(Table *t, const char *at, Py_ssize_t len)
{
    size_t bytes = (size_t)len * (size_t)t->kind;
    Py_hash_t h = _Py_HashBytes(at, (Py_ssize_t)bytes);
    size_t j = (size_t)h & t->mask;
    for (;; j = (j + 1) & t->mask) {
        Py_ssize_t i = t->slots[j];
        if (i < 0)
            break;
        Word *w = &t->words[i];
        if (w->hash == h && w->len == len && memcmp(w->at, at, bytes) == 0) {
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
    t->slots[j] = t->count;
    t->words[t->count++] = (Word){at, len, h, 1};
    return 0;
}

#define SCAN(TYPE, ISSPACE)                                              \
    do {                                                                 \
        const TYPE *s = (const TYPE *)data;                              \
        Py_ssize_t i = 0;                                                \
        for (;;) {                                                       \
            while (i < n && ISSPACE(s[i]))                               \
                i++;                                                     \
            if (i >= n)                                                  \
                break;                                                   \
            Py_ssize_t start = i;                                        \
            while (i < n && !ISSPACE(s[i]))                              \
                i++;                                                     \
            if (add(&t, (const char *)(s + start), i - start) < 0)       \
                goto done;                                               \
            words++;                                                     \
        }                                                                \
    } while (0)

#define SPACE1(c) space1[(c)]
#define SPACEN(c) Py_UNICODE_ISSPACE(c)

static PyObject *count_words(PyObject *self, PyObject *args)
{
    PyObject *text, *acc;
    if (!PyArg_ParseTuple(args, "UO!:count_words", &text, &PyDict_Type, &acc))
        return NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), words = 0;
    const void *data = PyUnicode_DATA(text);
    Table t = {0};
    t.kind = PyUnicode_KIND(text);
    PyObject *out = NULL;
    t.mask = 1023;
    t.cap = 512;
    t.slots = PyMem_Malloc((t.mask + 1) * sizeof(Py_ssize_t));
    t.words = PyMem_Malloc((size_t)t.cap * sizeof(Word));
    if (t.slots == NULL || t.words == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memset(t.slots, 0xFF, (t.mask + 1) * sizeof(Py_ssize_t));
    if (t.kind == PyUnicode_1BYTE_KIND)
        SCAN(Py_UCS1, SPACE1);
    else if (t.kind == PyUnicode_2BYTE_KIND)
        SCAN(Py_UCS2, SPACEN);
    else
        SCAN(Py_UCS4, SPACEN);
    for (Py_ssize_t i = 0; i < t.count; i++) {
        Word *w = &t.words[i];
        PyObject *key = PyUnicode_FromKindAndData(t.kind, w->at, w->len);
        if (key == NULL)
            goto done;
        PyObject *old = PyDict_GetItemWithError(acc, key); /* borrowed */
        PyObject *add = PyLong_FromSsize_t(w->count);
        PyObject *sum = NULL;
        if (add != NULL && (old != NULL || !PyErr_Occurred()))
            sum = old == NULL ? Py_NewRef(add) : PyNumber_Add(old, add);
        int bad = sum == NULL || PyDict_SetItem(acc, key, sum) < 0;
        Py_DECREF(key);
        Py_XDECREF(add);
        Py_XDECREF(sum);
        if (bad)
            goto done;
    }
    out = PyLong_FromSsize_t(words);
done:
    PyMem_Free(t.slots);
    PyMem_Free(t.words);
    return out;
}

static PyMethodDef methods[] = {
    {"count_words", count_words, METH_VARARGS,
     "Add every word of text.split() to a dict of counts; the number of words."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_words", "Word count's hot loop, in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__words(void)
{
    for (int c = 0; c < 256; c++)
        space1[c] = Py_UNICODE_ISSPACE(c) ? 1 : 0;
    return PyModule_Create(&module);
}
