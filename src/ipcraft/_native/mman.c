/* msync(2) over a range of a buffer that Python mapped with mmap (MappedFile.flush), and MirrorMap.
 *
 * msync needs a page-aligned address; the start is rounded down to its page, which stays inside the
 * mapping because an mmap buffer starts on a page boundary.  A buffer that is not a mapping gets
 * -ENOMEM from the kernel, never a crash.  The GIL is released while MS_SYNC waits for the disk.
 */
#include "native.h"
#include <errno.h>
#include <sys/mman.h>
#include <sys/stat.h>
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

/* ---- MirrorMap ------------------------------------------------------------------------------
 *
 * A shared mapping of a ring file (ring://'s POSIX shared memory, file://'s file) whose data area is
 * mapped twice, back to back: [header | data | data again].  The kernel maps the second copy onto the
 * same pages of the file, so a record that runs past the end of the data area continues, at the next
 * virtual address, at its start: any record is contiguous in memory, and recv_view()/send_view() lend
 * it in place instead of through a copy.  The file and its format are unchanged (another process may
 * map it plainly).  The buffer exported is the plain part (header + data); only a ring port that sees
 * it is a MirrorMap (ipc_mirror_of) lends past its end.  Unmapped when the last reference goes (an
 * export holds one). */

typedef struct {
    PyObject_HEAD
    char *base;
    size_t header, cap;
} MirrorMap;

static int MirrorMap_init(MirrorMap *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "header", "capacity", NULL};
    int fd;
    Py_ssize_t header, cap;
    if (self->base != NULL) {
        PyErr_SetString(PyExc_TypeError, "MirrorMap is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "inn:MirrorMap", kwlist, &fd, &header, &cap))
        return -1;
    long page = sysconf(_SC_PAGESIZE);
    if (header <= 0 || cap <= 0 || header % page || cap % page || header > PY_SSIZE_T_MAX / 4 ||
        cap > PY_SSIZE_T_MAX / 4) {
        PyErr_Format(PyExc_ValueError, "MirrorMap needs a header and a capacity that are positive multiples "
                     "of the page size (%ld), not %zd and %zd", page, header, cap);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0)
        return PyErr_SetFromErrno(PyExc_OSError), -1;
    if (st.st_size < (off_t)(header + cap)) { /* touching a page past the end would raise SIGBUS */
        PyErr_Format(PyExc_ValueError, "the file holds %lld bytes, fewer than the %zd of its ring",
                     (long long)st.st_size, header + cap);
        return -1;
    }
    size_t total = (size_t)header + 2 * (size_t)cap;
    char *base = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        return PyErr_SetFromErrno(PyExc_OSError), -1;
    if (mmap(base, (size_t)(header + cap), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED ||
        mmap(base + header + cap, (size_t)cap, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
             (off_t)header) == MAP_FAILED) {
        int err = errno;
        munmap(base, total);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError), -1;
    }
    self->base = base;
    self->header = (size_t)header;
    self->cap = (size_t)cap;
    return 0;
}

static void MirrorMap_dealloc(MirrorMap *self)
{
    if (self->base != NULL)
        munmap(self->base, self->header + 2 * self->cap);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int MirrorMap_getbuffer(MirrorMap *self, Py_buffer *view, int flags)
{
    if (self->base == NULL) {
        PyErr_SetString(PyExc_BufferError, "MirrorMap is not initialised");
        return -1;
    }
    return PyBuffer_FillInfo(view, (PyObject *)self, self->base, (Py_ssize_t)(self->header + self->cap), 0, flags);
}

static PyBufferProcs MirrorMap_as_buffer = {.bf_getbuffer = (getbufferproc)MirrorMap_getbuffer};

static PyTypeObject MirrorMap_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipcraft._native.MirrorMap",
    .tp_basicsize = sizeof(MirrorMap),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "MirrorMap(fd, header, capacity): a shared mapping of header + capacity bytes of fd whose "
              "last capacity bytes (a ring's data area) are mapped again right after them, so a record "
              "that wraps around the ring's end is contiguous in memory.  Its buffer is the "
              "header + capacity bytes; it is unmapped when the last reference goes.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)MirrorMap_init,
    .tp_dealloc = (destructor)MirrorMap_dealloc,
    .tp_as_buffer = &MirrorMap_as_buffer,
};

int ipc_mirror_of(PyObject *obj, const char *base, uint64_t header, uint64_t cap)
{
    if (obj == NULL || !PyObject_TypeCheck(obj, &MirrorMap_Type))
        return 0;
    MirrorMap *m = (MirrorMap *)obj;
    return m->base != NULL && m->base == base && m->header == header && m->cap == cap;
}

int ipc_mman_register(PyObject *m)
{
    return ipc_add_type(m, &MirrorMap_Type, "MirrorMap");
}

PyMethodDef ipc_mman_methods[] = {
    {"msync", msync_range, METH_VARARGS,
     "msync(buf, offset, length, sync) -> int: write the dirty pages of buf[offset:offset+length] "
     "back to their file; MS_SYNC waits, MS_ASYNC (sync=False) only schedules.  0 or -errno."},
    {NULL, NULL, 0, NULL},
};
