/* futex(2) wait and wake on a 4-byte word of a (shared) buffer.
 *
 * The word may live in memory shared between processes, so these use the shared (non-private) futex
 * operations.  futex_wait releases the GIL while the thread sleeps.  A signal that interrupts the wait
 * runs the Python handlers; if one raises (Ctrl-C -> KeyboardInterrupt) the exception propagates,
 * otherwise -EINTR is returned so the caller can recompute its deadline and wait again.
 */
#include "native.h"
#include <errno.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static PyObject *futex_wait(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *obj, *timeout_obj = Py_None;
    Py_ssize_t offset;
    unsigned int expected;
    Py_buffer view;
    struct timespec ts;
    int has_timeout = 0;
    if (!PyArg_ParseTuple(args, "OnI|O:futex_wait", &obj, &offset, &expected, &timeout_obj))
        return NULL;
    if (ipc_timeout_arg(timeout_obj, &ts, &has_timeout) < 0)
        return NULL;
    if (PyObject_GetBuffer(obj, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    uint32_t *p = ipc_buffer_at(&view, offset, 4);
    if (p == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    long rc;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_futex, p, FUTEX_WAIT, expected, has_timeout ? &ts : NULL, NULL, 0);
    Py_END_ALLOW_THREADS
    int err = rc < 0 ? errno : 0;
    PyBuffer_Release(&view);
    if (err == EINTR && PyErr_CheckSignals() < 0)
        return NULL;
    return PyLong_FromLong(rc < 0 ? -err : 0);
}

static PyObject *futex_wake(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *obj;
    Py_ssize_t offset;
    int count;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "Oni:futex_wake", &obj, &offset, &count))
        return NULL;
    if (PyObject_GetBuffer(obj, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    uint32_t *p = ipc_buffer_at(&view, offset, 4);
    if (p == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    long rc = syscall(SYS_futex, p, FUTEX_WAKE, count, NULL, NULL, 0);
    int err = rc < 0 ? errno : 0;
    PyBuffer_Release(&view);
    return PyLong_FromLong(rc < 0 ? -err : rc);
}

PyMethodDef ipc_futex_methods[] = {
    {"futex_wait", futex_wait, METH_VARARGS,
     "futex_wait(buf, offset, expected, timeout=None) -> int: sleep while the 4-byte word at offset "
     "equals expected.  Returns 0 (woken or spurious), -EAGAIN (the word differed), -ETIMEDOUT or "
     "-EINTR (a signal arrived and its handler did not raise)."},
    {"futex_wake", futex_wake, METH_VARARGS,
     "futex_wake(buf, offset, count) -> int: wake up to count waiters; returns how many woke, or -errno."},
    {NULL, NULL, 0, NULL},
};
