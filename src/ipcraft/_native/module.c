/* Module definition: gathers the method tables of every concern (see native.h). */
#include "native.h"
#include <math.h>
#include <time.h>

void *ipc_buffer_at(Py_buffer *view, Py_ssize_t offset, Py_ssize_t size)
{
    if (offset < 0 || size < 0 || offset > view->len - size) {
        PyErr_Format(PyExc_ValueError, "offset %zd (+%zd bytes) is outside the %zd-byte buffer",
                     offset, size, view->len);
        return NULL;
    }
    char *p = (char *)view->buf + offset;
    if (size > 1 && ((uintptr_t)p % (uintptr_t)size) != 0) {
        PyErr_Format(PyExc_ValueError, "offset %zd is not %zd-byte aligned", offset, size);
        return NULL;
    }
    return p;
}

int ipc_timeout_arg(PyObject *obj, struct timespec *ts, int *has_timeout)
{
    if (obj == Py_None) {
        *has_timeout = 0;
        return 0;
    }
    double t = PyFloat_AsDouble(obj);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    if (!isfinite(t) || t < 0) {
        PyErr_SetString(PyExc_ValueError, "timeout must be a finite number of seconds >= 0, or None");
        return -1;
    }
    *has_timeout = 1;
    ts->tv_sec = (time_t)t;
    ts->tv_nsec = (long)((t - (double)ts->tv_sec) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec += 1;
        ts->tv_nsec -= 1000000000L;
    }
    return 0;
}

int ipc_size_arg(PyObject *arg, uint64_t *n)
{
    long long v = PyLong_AsLongLong(arg);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *n = v < 0 ? 0 : (uint64_t)v;
    return v >= 0;
}

int ipc_add_type(PyObject *m, PyTypeObject *type, const char *name)
{
    if (PyType_Ready(type) < 0)
        return -1;
    Py_INCREF(type);
    if (PyModule_AddObject(m, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ipcraft._native",
    .m_doc = "ipcraft's C core: atomics, futexes and ring copies over buffers Python owns.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddFunctions(m, ipc_atomics_methods) < 0 ||
        PyModule_AddFunctions(m, ipc_futex_methods) < 0 ||
        PyModule_AddFunctions(m, ipc_mman_methods) < 0 ||
        ipc_mman_register(m) < 0 ||
        PyModule_AddFunctions(m, ipc_rings_methods) < 0 ||
        ipc_pmutex_register(m) < 0 ||
        ipc_spsc_register(m) < 0 ||
        ipc_lend_register(m) < 0 ||
        ipc_mpmc_register(m) < 0 ||
        ipc_bcast_register(m) < 0 ||
        ipc_zmqfast_register(m) < 0 ||
        ipc_fastmethod_register(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
