/* rainstorm.native._pairs: the per-record loops of a MapReduce shuffle, in C.
 *
 *   all_pairs(records: list) -> bool
 *       every record is a tuple of two (a mapper's (key, value)): what
 *       rainstorm.operators.chain._pairs checks, in one pass
 *   group_add(acc: dict, records: list) -> bool
 *       every (key, value) record's value appended to acc[key] (a new key:
 *       [value]), as rainstorm.operators.aggregates.Group.add does; False,
 *       and acc untouched, unless every record is a tuple of two.  An
 *       unhashable key raises TypeError, as in Python (after the records
 *       before it are added, as in Python).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static int pairs_only(PyObject *records)
{
    Py_ssize_t n = PyList_GET_SIZE(records);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyList_GET_ITEM(records, i);
        if (!PyTuple_CheckExact(r) || PyTuple_GET_SIZE(r) != 2)
            return 0;
    }
    return 1;
}

static PyObject *all_pairs(PyObject *self, PyObject *records)
{
    if (!PyList_CheckExact(records))
        Py_RETURN_FALSE;
    return PyBool_FromLong(pairs_only(records));
}

static PyObject *group_add(PyObject *self, PyObject *args)
{
    PyObject *acc, *records;
    if (!PyArg_ParseTuple(args, "O!O!:group_add", &PyDict_Type, &acc, &PyList_Type, &records))
        return NULL;
    if (!pairs_only(records))
        Py_RETURN_FALSE;
    /* (no Python code runs below but hashing and comparing keys, which cannot
       change the list: records holds references of its own to its items) */
    Py_INCREF(records);
    PyObject *out = Py_True;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *r = PyList_GET_ITEM(records, i);
        PyObject *k = PyTuple_GET_ITEM(r, 0), *v = PyTuple_GET_ITEM(r, 1);
        PyObject *vals = PyDict_GetItemWithError(acc, k); /* borrowed */
        int bad;
        if (vals != NULL && PyList_CheckExact(vals)) {
            bad = PyList_Append(vals, v) < 0;
        } else if (vals != NULL) {
            PyObject *res = PyObject_CallMethod(vals, "append", "O", v);
            bad = res == NULL;
            Py_XDECREF(res);
        } else if (PyErr_Occurred()) {
            bad = 1;
        } else {
            PyObject *one = PyList_New(1);
            bad = one == NULL;
            if (one != NULL) {
                Py_INCREF(v);
                PyList_SET_ITEM(one, 0, v);
                bad = PyDict_SetItem(acc, k, one) < 0;
                Py_DECREF(one);
            }
        }
        if (bad) {
            out = NULL;
            break;
        }
    }
    Py_DECREF(records);
    Py_XINCREF(out);
    return out;
}

static PyMethodDef methods[] = {
    {"all_pairs", all_pairs, METH_O, "Is every record a tuple of two?"},
    {"group_add", group_add, METH_VARARGS,
     "Append every (key, value) record's value to acc[key]; False unless all are pairs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pairs", "The per-record loops of a MapReduce shuffle, in C.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__pairs(void)
{
    return PyModule_Create(&module);
}
