/* Robust process-shared mutexes and a futex condition, in a buffer Python owns.
 *
 * The mutex is a glibc pthread_mutex_t initialised PTHREAD_PROCESS_SHARED, PTHREAD_MUTEX_ROBUST and
 * PTHREAD_MUTEX_ERRORCHECK: the kernel walks a dying thread's robust list and marks every mutex it
 * held FUTEX_OWNER_DIED, so the next locker gets EOWNERDEAD instead of sleeping forever, and a thread
 * that locks twice gets EDEADLK instead of deadlocking itself.
 *
 * Why a C type (PMutex) and not functions taking (buffer, offset) like atomics.c: an uncontended
 * acquire+release must cost less than multiprocessing.Lock's, and PyArg_ParseTuple plus
 * PyObject_GetBuffer per call cost more than the lock itself.  A PMutex pins the buffer once (the
 * exporter, e.g. an mmap, cannot be closed or resized under it) and keeps the pointer; acquire and
 * release are METH_FASTCALL/METH_NOARGS methods that a Python subclass inherits unchanged.  On any
 * result but success they call the subclass's _acquire_failed(rc, timeout) / _release_failed(rc),
 * so errors are still translated in Python (_errors.py), never here.
 *
 * Why the condition is a futex sequence word and not a pthread_cond_t: glibc's process-shared
 * condition variable keeps waiter counts inside the shared object; a waiter killed inside
 * pthread_cond_wait leaves them wrong, and later signals can be swallowed or pthread_cond_destroy
 * can hang.  A bare 32-bit sequence number has no per-waiter state: wait reads it (holding the
 * mutex), unlocks, sleeps in FUTEX_WAIT while it is unchanged, and relocks; wake increments it and
 * FUTEX_WAKEs.  A dead waiter leaves nothing behind.
 *
 * Every lock, unlock and consistent call goes through robust.c, which refuses a mutex whose words are
 * corrupt (EPROTO) before glibc reads them.
 *
 * Ctrl-C: a blocked pthread_mutex_lock never returns EINTR (glibc retries the futex), so waits are
 * cut into slices of IPC_SLICE_NS; between slices the GIL is retaken and PyErr_CheckSignals() runs
 * the Python handlers, whose exception (KeyboardInterrupt) ends the wait with the mutex not held.
 */
#include "native.h"
#include "robust.h"
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define IPC_SLICE_NS 50000000L /* 50 ms: the longest a blocked acquire ignores Ctrl-C */

static PyTypeObject ipc_PMutexType;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t *mutex; /* NULL while detached */
    Py_buffer view;         /* pins the exporter while attached */
} PMutexObject;

static pthread_mutex_t *mutex_at(PyObject *buf, Py_ssize_t offset, Py_buffer *view)
{
    if (PyObject_GetBuffer(buf, view, PyBUF_WRITABLE) < 0)
        return NULL;
    /* 8-byte alignment is what pthread_mutex_t needs; the size check follows. */
    char *p = ipc_buffer_at(view, offset, 8);
    if (p != NULL && offset > view->len - (Py_ssize_t)sizeof(pthread_mutex_t)) {
        PyErr_Format(PyExc_ValueError, "offset %zd (+%zd bytes) is outside the %zd-byte buffer", offset,
                     (Py_ssize_t)sizeof(pthread_mutex_t), view->len);
        p = NULL;
    }
    if (p == NULL)
        PyBuffer_Release(view);
    return (pthread_mutex_t *)p;
}

static void timespec_add(struct timespec *t, const struct timespec *d)
{
    t->tv_sec += d->tv_sec;
    t->tv_nsec += d->tv_nsec;
    if (t->tv_nsec >= 1000000000L) {
        t->tv_sec += 1;
        t->tv_nsec -= 1000000000L;
    }
}

static int timespec_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* Lock, sleeping in slices with the GIL released.  Returns 0 or a positive errno (ETIMEDOUT,
 * EOWNERDEAD, ENOTRECOVERABLE, EDEADLK), or -1 with a Python exception set by a signal handler. */
static int lock_blocking(pthread_mutex_t *m, PyObject *timeout_obj)
{
    struct timespec rel, deadline, slice;
    int has_timeout, rc;
    if (ipc_timeout_arg(timeout_obj, &rel, &has_timeout) < 0)
        return -1;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    timespec_add(&deadline, &rel);
    for (;;) {
        const struct timespec step = {0, IPC_SLICE_NS};
        clock_gettime(CLOCK_MONOTONIC, &slice);
        timespec_add(&slice, &step);
        int last = has_timeout && !timespec_before(&slice, &deadline);
        if (last)
            slice = deadline;
        Py_BEGIN_ALLOW_THREADS
        rc = ipc_robust_clocklock(m, &slice);
        Py_END_ALLOW_THREADS
        if (rc != ETIMEDOUT || last)
            return rc;
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
}

/* Hand a failure to the Python subclass: self.<hook>(-rc[, timeout]). */
static PyObject *call_hook(PyObject *self, const char *hook, int rc, PyObject *timeout)
{
    PyObject *r = PyLong_FromLong(-rc);
    if (r == NULL)
        return NULL;
    PyObject *name = PyUnicode_FromString(hook);
    PyObject *res = NULL;
    if (name != NULL) {
        res = timeout ? PyObject_CallMethodObjArgs(self, name, r, timeout, NULL)
                      : PyObject_CallMethodObjArgs(self, name, r, NULL);
        Py_DECREF(name);
    }
    Py_DECREF(r);
    return res;
}

static PyObject *do_acquire(PMutexObject *self, PyObject *timeout)
{
    if (self->mutex == NULL)
        return call_hook((PyObject *)self, "_acquire_failed", EBADF, timeout);
    int poll = 0;
    if (timeout != Py_None) {
        struct timespec ts;
        int has_timeout;
        if (ipc_timeout_arg(timeout, &ts, &has_timeout) < 0)
            return NULL;
        poll = ts.tv_sec == 0 && ts.tv_nsec == 0;
    }
    int rc = ipc_robust_trylock(self->mutex);
    if (rc == 0)
        Py_RETURN_NONE;
    if (rc == EBUSY) {
        if (poll)
            return call_hook((PyObject *)self, "_acquire_failed", ETIMEDOUT, timeout);
        /* A second export keeps the memory mapped even if another thread closes this handle
         * (and then the mmap) while this one sleeps without the GIL. */
        Py_buffer pin;
        if (PyObject_GetBuffer(self->view.obj, &pin, PyBUF_SIMPLE) < 0)
            return NULL;
        rc = lock_blocking(self->mutex, timeout);
        PyBuffer_Release(&pin);
        if (rc < 0)
            return NULL;
        if (rc == 0)
            Py_RETURN_NONE;
    }
    return call_hook((PyObject *)self, "_acquire_failed", rc, timeout);
}

static PyObject *PMutex_acquire(PMutexObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    PyObject *timeout = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1) {
        PyErr_SetString(PyExc_TypeError, "acquire() takes at most one argument (timeout)");
        return NULL;
    }
    if (nargs == 1) {
        timeout = args[0];
    } else if (nkw == 1) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)) ||
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0) {
            PyErr_Format(PyExc_TypeError, "acquire() got an unexpected keyword argument '%S'",
                         PyTuple_GET_ITEM(kwnames, 0));
            return NULL;
        }
        timeout = args[0];
    }
    return do_acquire(self, timeout);
}

static PyObject *do_release(PMutexObject *self)
{
    int rc = self->mutex ? ipc_robust_unlock(self->mutex) : EBADF;
    if (rc == 0)
        Py_RETURN_NONE;
    return call_hook((PyObject *)self, "_release_failed", rc, NULL);
}

static PyObject *PMutex_release(PMutexObject *self, PyObject *unused)
{
    (void)unused;
    return do_release(self);
}

static PyObject *PMutex_enter(PMutexObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *r = do_acquire(self, Py_None);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *PMutex_exit(PMutexObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    (void)nargs;
    PyObject *r = do_release(self);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *PMutex_attach(PMutexObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_attach(buf, offset) takes exactly two arguments");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
    if (offset == -1 && PyErr_Occurred())
        return NULL;
    if (self->mutex != NULL) {
        PyErr_SetString(PyExc_ValueError, "this PMutex is already attached to a buffer");
        return NULL;
    }
    self->mutex = mutex_at(args[0], offset, &self->view);
    if (self->mutex == NULL)
        return NULL;
    Py_RETURN_NONE;
}

static void detach(PMutexObject *self)
{
    if (self->mutex != NULL) {
        self->mutex = NULL;
        PyBuffer_Release(&self->view);
    }
}

static PyObject *PMutex_detach(PMutexObject *self, PyObject *unused)
{
    (void)unused;
    detach(self);
    Py_RETURN_NONE;
}

static PyObject *PMutex_consistent(PMutexObject *self, PyObject *unused)
{
    (void)unused;
    if (self->mutex == NULL)
        return PyLong_FromLong(-EBADF);
    return PyLong_FromLong(-ipc_robust_consistent(self->mutex));
}

static void PMutex_dealloc(PMutexObject *self)
{
    detach(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef PMutex_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))PMutex_acquire, METH_FASTCALL | METH_KEYWORDS,
     "acquire(timeout=None): lock; on failure calls self._acquire_failed(-errno, timeout)."},
    {"release", (PyCFunction)PMutex_release, METH_NOARGS,
     "release(): unlock; on failure calls self._release_failed(-errno)."},
    {"__enter__", (PyCFunction)PMutex_enter, METH_NOARGS, "acquire(), then return self."},
    {"__exit__", (PyCFunction)(void (*)(void))PMutex_exit, METH_FASTCALL, "release()."},
    {"_attach", (PyCFunction)(void (*)(void))PMutex_attach, METH_FASTCALL,
     "_attach(buf, offset): pin buf and use the pthread_mutex_t at offset."},
    {"_detach", (PyCFunction)PMutex_detach, METH_NOARGS, "_detach(): unpin the buffer (idempotent)."},
    {"_consistent", (PyCFunction)PMutex_consistent, METH_NOARGS,
     "_consistent() -> int: pthread_mutex_consistent(); 0 or -errno."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ipc_PMutexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipcraft._native.PMutex",
    .tp_basicsize = sizeof(PMutexObject),
    .tp_dealloc = (destructor)PMutex_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A robust process-shared pthread mutex at an offset of a pinned writable buffer.",
    .tp_methods = PMutex_methods,
    .tp_new = PyType_GenericNew,
};

static PyObject *pmutex_init(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *obj;
    Py_ssize_t offset;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "On:pmutex_init", &obj, &offset))
        return NULL;
    pthread_mutex_t *m = mutex_at(obj, offset, &view);
    if (m == NULL)
        return NULL;
    int rc = ipc_robust_init_attrs(m, PTHREAD_MUTEX_ERRORCHECK);
    PyBuffer_Release(&view);
    return PyLong_FromLong(-rc);
}

/* The condition's 4-byte sequence word; on success the caller must release *view. */
static _Atomic uint32_t *word_at(PyObject *obj, Py_ssize_t offset, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE) < 0)
        return NULL;
    _Atomic uint32_t *word = ipc_buffer_at(view, offset, 4);
    if (word == NULL)
        PyBuffer_Release(view);
    return word;
}

static PyObject *pcond_wait(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *mobj, *obj, *timeout_obj = Py_None;
    Py_ssize_t offset;
    Py_buffer view;
    struct timespec ts;
    int has_timeout;
    if (!PyArg_ParseTuple(args, "O!On|O:pcond_wait", &ipc_PMutexType, &mobj, &obj, &offset, &timeout_obj))
        return NULL;
    PMutexObject *mutex = (PMutexObject *)mobj;
    pthread_mutex_t *m = mutex->mutex;
    Py_buffer pin; /* keeps the mutex's memory mapped while the GIL is released (see do_acquire) */
    if (m == NULL)
        return PyLong_FromLong(-EBADF);
    if (ipc_timeout_arg(timeout_obj, &ts, &has_timeout) < 0)
        return NULL;
    if (PyObject_GetBuffer(mutex->view.obj, &pin, PyBUF_SIMPLE) < 0)
        return NULL;
    _Atomic uint32_t *word = word_at(obj, offset, &view);
    if (word == NULL) {
        PyBuffer_Release(&pin);
        return NULL;
    }
    uint32_t seq = atomic_load_explicit(word, memory_order_acquire);
    int rc = ipc_robust_unlock(m);
    if (rc != 0) {
        PyBuffer_Release(&view);
        PyBuffer_Release(&pin);
        return PyLong_FromLong(-rc);
    }
    long frc;
    int ferr, lrc;
    Py_BEGIN_ALLOW_THREADS
    frc = syscall(SYS_futex, word, FUTEX_WAIT, seq, has_timeout ? &ts : NULL, NULL, 0);
    ferr = frc < 0 ? errno : 0;
    /* Relock whatever happened: the caller held the mutex and must hold it again. */
    lrc = ipc_robust_lock(m);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyBuffer_Release(&pin);
    /* A dead owner is reported first; a pending signal then runs at the next bytecode. */
    if (lrc != 0)
        return PyLong_FromLong(-lrc);
    if (ferr == EINTR && PyErr_CheckSignals() < 0)
        return NULL; /* the mutex is held again, as threading.Condition.wait leaves it */
    return PyLong_FromLong(ferr == ETIMEDOUT ? -ETIMEDOUT : 0);
}

static PyObject *pcond_wake(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *obj;
    Py_ssize_t offset;
    int count;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "Oni:pcond_wake", &obj, &offset, &count))
        return NULL;
    _Atomic uint32_t *word = word_at(obj, offset, &view);
    if (word == NULL)
        return NULL;
    atomic_fetch_add_explicit(word, 1, memory_order_acq_rel);
    long rc = syscall(SYS_futex, word, FUTEX_WAKE, count < 0 ? INT_MAX : count, NULL, NULL, 0);
    int err = rc < 0 ? errno : 0;
    PyBuffer_Release(&view);
    return PyLong_FromLong(rc < 0 ? -err : rc);
}

static PyMethodDef pmutex_methods[] = {
    {"pmutex_init", pmutex_init, METH_VARARGS,
     "pmutex_init(buf, offset) -> int: initialise a robust, process-shared, error-checking "
     "pthread_mutex_t at offset (8-byte aligned, PMUTEX_SIZE bytes).  0 or -errno."},
    {"pcond_wait", pcond_wait, METH_VARARGS,
     "pcond_wait(mutex, buf, offset, timeout=None) -> int: with mutex held, read the 4-byte sequence "
     "word at offset, unlock, sleep until it changes (or the timeout), relock.  0 (woken, maybe "
     "spuriously), -ETIMEDOUT, -EPERM (mutex not held), -EOWNERDEAD (relocked; the owner had died), "
     "-ENOTRECOVERABLE."},
    {"pcond_wake", pcond_wake, METH_VARARGS,
     "pcond_wake(buf, offset, count) -> int: increment the sequence word and wake up to count "
     "waiters (count < 0: all); returns how many woke, or -errno."},
    {NULL, NULL, 0, NULL},
};

/* Adds the functions, the PMutex type and PMUTEX_SIZE to the module (one call from module.c). */
int ipc_pmutex_register(PyObject *m)
{
    int rc = ipc_robust_setup();
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (PyModule_AddFunctions(m, pmutex_methods) < 0 ||
        PyModule_AddIntConstant(m, "PMUTEX_SIZE", (long)sizeof(pthread_mutex_t)) < 0)
        return -1;
    return ipc_add_type(m, &ipc_PMutexType, "PMutex");
}
