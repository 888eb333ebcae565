/* msync(2) over a range of a buffer that Python mapped with mmap (MappedFile.flush).
 *
 * msync needs a page-aligned address; the start is rounded down to its page, which stays inside the
 * mapping because an mmap buffer starts on a page boundary.  A buffer that is not a mapping gets
 * -ENOMEM from the kernel, never a crash.  The GIL is released while MS_SYNC waits for the disk.
 */
#include "native.h"
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

static PyObject *msync_range(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *obj;
    Py_ssize_t offset, length;
    int sync;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "Onnp:msync", &obj, &offset, &length, &sync))
        return NULL;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (offset < 0 || length < 0 || offset > view.len - length) {
        PyErr_Format(PyExc_ValueError, "range at %zd (+%zd bytes) is outside the %zd-byte buffer",
                     offset, length, view.len);
        PyBuffer_Release(&view);
        return NULL;
    }
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t start = (uintptr_t)view.buf + (uintptr_t)offset;
    uintptr_t aligned = start & ~(page - 1);
    size_t len = (size_t)length + (size_t)(start - aligned);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = msync((void *)aligned, len, sync ? MS_SYNC : MS_ASYNC);
    Py_END_ALLOW_THREADS
    int err = rc < 0 ? errno : 0;
    PyBuffer_Release(&view);
    return PyLong_FromLong(rc < 0 ? -err : 0);
}

PyMethodDef ipc_mman_methods[] = {
    {"msync", msync_range, METH_VARARGS,
     "msync(buf, offset, length, sync) -> int: write the dirty pages of buf[offset:offset+length] "
     "back to their file; MS_SYNC waits, MS_ASYNC (sync=False) only schedules.  0 or -errno."},
    {NULL, NULL, 0, NULL},
};
