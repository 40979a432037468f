/* contains(data, needle): is needle in data, by glibc's memmem.
 *
 * Every response body is searched for the upstream's own address (a URL that would send a
 * client around the gateway, counted in vitalgate_upstream_url_leak_total). CPython 3.11's
 * bytes search examines most bytes of a JSON body for a needle such as "fhir.internal:8081"
 * (its skip filter keys on the low 6 bits of a byte, where digits share bits with common
 * letters); memmem skips ahead by most of the needle's length, three to four times faster on
 * FHIR JSON (README, Benchmarks). gateway/dataplane/memscan.py falls back to `needle in data` when this
 * extension is not built (VITALGATE_PURE_PYTHON=1): same answers.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *
contains(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "contains(data: bytes, needle: bytes)");
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(args[0]);
    const char *needle = PyBytes_AS_STRING(args[1]);
    size_t data_len = (size_t)PyBytes_GET_SIZE(args[0]);
    size_t needle_len = (size_t)PyBytes_GET_SIZE(args[1]);
    if (memmem(data, data_len, needle, needle_len) != NULL) {
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyMethodDef methods[] = {
    {"contains", (PyCFunction)(void (*)(void))contains, METH_FASTCALL,
     "contains(data, needle): needle in data (bytes), by memmem."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway.dataplane._memscan", "Byte search by memmem.", 0, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__memscan(void)
{
    return PyModule_Create(&module);
}
