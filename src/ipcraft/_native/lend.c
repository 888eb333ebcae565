/* Zero copy as C context managers: Channel.recv_view() and send_view() (see ipcraft/_zerocopy.py).
 *
 * BusyLock is the guard of one direction of a handle (ipcraft's ConflictDetector): a flag, tested and
 * set under the GIL, whose second holder gets the error it was made with.
 *
 * A Lender is made once per direction of a channel and hands out one Lend per recv_view()/send_view()
 * call.  A Lend's __enter__ takes the guard and lends ring memory as a memoryview; its __exit__
 * releases that memoryview (so that a view used after the block raises ValueError instead of reading
 * memory the peer reuses) and then consumes the record, or commits the loan (aborts it when the block
 * raised), and drops the guard.  Over a ring port in C (an SpscPort of shm://, an MpmcPort of ring://
 * and file://; their verbs are the LendOps of native.h) the common case never leaves C: the record
 * is found (spinning briefly, the GIL released, as the copying fast path does) or the room placed,
 * and the view is a memoryview of the Lend itself, whose export pins the mapping (so an escaped
 * export of the view never reads unmapped memory).  Everything else (waiting with a deadline, errors,
 * a closed channel, a record the ring cannot lend in place, other transports) goes through the Python
 * callables the Lender was made with: the transport's peek/reserve and consume/commit/abort.  A verb
 * of the port that finds nothing lent in C (-EINVAL) hands the exit to those callables too.
 */
#include "native.h"
#include <errno.h>
#include <stddef.h>

/* ---- BusyLock ------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    int held;
    PyObject *error;   /* the exception type raised at a second holder */
    PyObject *message; /* and its argument */
} BusyLock;

static int BusyLock_init(BusyLock *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"message", "error", NULL};
    PyObject *message, *error = PyExc_RuntimeError;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "U|O:BusyLock", kwlist, &message, &error))
        return -1;
    if (!PyExceptionClass_Check(error)) {
        PyErr_SetString(PyExc_TypeError, "BusyLock's error must be an exception type");
        return -1;
    }
    Py_INCREF(message);
    Py_INCREF(error);
    Py_XSETREF(self->message, message);
    Py_XSETREF(self->error, error);
    self->held = 0;
    return 0;
}

static void BusyLock_dealloc(BusyLock *self)
{
    Py_XDECREF(self->message);
    Py_XDECREF(self->error);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int busy_take(BusyLock *g)
{
    if (g->held) {
        PyErr_SetObject(g->error ? g->error : PyExc_RuntimeError, g->message ? g->message : Py_None);
        return -1;
    }
    g->held = 1;
    return 0;
}

static PyObject *BusyLock_enter(BusyLock *self, PyObject *unused)
{
    (void)unused;
    if (busy_take(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *BusyLock_exit(BusyLock *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    (void)nargs;
    self->held = 0;
    Py_RETURN_NONE;
}

static PyObject *BusyLock_get_held(BusyLock *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->held);
}

static PyMethodDef BusyLock_methods[] = {
    {"__enter__", (PyCFunction)BusyLock_enter, METH_NOARGS,
     "Take the lock, or raise the error it was made with if it is held."},
    {"__exit__", (PyCFunction)(void (*)(void))BusyLock_exit, METH_FASTCALL, "Drop the lock."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef BusyLock_getset[] = {
    {"held", (getter)BusyLock_get_held, NULL, "True while someone is inside the lock", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BusyLock_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipcraft._native.BusyLock",
    .tp_basicsize = sizeof(BusyLock),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "BusyLock(message, error=RuntimeError): a non-blocking guard; entering it while it is "
              "held raises error(message) (one thread at a time per direction of a handle).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)BusyLock_init,
    .tp_dealloc = (destructor)BusyLock_dealloc,
    .tp_methods = BusyLock_methods,
    .tp_getset = BusyLock_getset,
};

/* ---- Lender --------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    BusyLock *guard;
    int send;          /* 1: send_view (reserve, commit/abort), 0: recv_view (peek, consume) */
    PyObject *acquire; /* recv: peek(timeout) -> memoryview; send: reserve(n, timeout) -> memoryview */
    PyObject *finish;  /* recv: consume(); send: commit() */
    PyObject *cancel;  /* send: abort(); recv: None */
    PyObject *port;    /* the C port for the fast path (an SpscPort or an MpmcPort), or NULL */
    const LendOps *ops; /* its zero-copy verbs */
    PyObject *fail;    /* fail(rc) -> exception, for a commit the C port refused, or NULL */
} Lender;

static int Lender_init(Lender *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"guard", "send", "acquire", "finish", "cancel", "port", "fail", NULL};
    PyObject *guard, *acquire, *finish, *cancel = Py_None, *port = Py_None, *fail = Py_None;
    int send;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!pOO|OOO:Lender", kwlist, &BusyLock_Type, &guard, &send,
                                     &acquire, &finish, &cancel, &port, &fail))
        return -1;
    if (!PyCallable_Check(acquire) || !PyCallable_Check(finish) || (send && !PyCallable_Check(cancel))) {
        PyErr_SetString(PyExc_TypeError, "Lender needs callables acquire, finish (and cancel to send)");
        return -1;
    }
    if (port != Py_None) {
        const LendOps *ops = PyObject_TypeCheck(port, ipc_spsc_lend_ops.type)   ? &ipc_spsc_lend_ops
                             : PyObject_TypeCheck(port, ipc_mpmc_lend_ops.type) ? &ipc_mpmc_lend_ops
                                                                                : NULL;
        if (ops == NULL || !PyCallable_Check(fail)) {
            PyErr_SetString(PyExc_TypeError, "Lender's port is an SpscPort or an MpmcPort, with fail (a callable)");
            return -1;
        }
        int producer = ops->producer(port);
        if (producer >= 0 && producer != send) {
            PyErr_SetString(PyExc_ValueError, "Lender's port must be the producer to send, the consumer to receive");
            return -1;
        }
        self->ops = ops;
    }
    if (self->guard) {
        PyErr_SetString(PyExc_TypeError, "Lender is already initialised");
        return -1;
    }
    Py_INCREF(guard);
    self->guard = (BusyLock *)guard;
    self->send = send;
    self->acquire = Py_NewRef(acquire);
    self->finish = Py_NewRef(finish);
    self->cancel = Py_NewRef(cancel);
    if (port != Py_None) {
        self->port = Py_NewRef(port);
        self->fail = Py_NewRef(fail);
    }
    return 0;
}

static int Lender_traverse(Lender *self, visitproc visit, void *arg)
{
    Py_VISIT(self->guard);
    Py_VISIT(self->acquire);
    Py_VISIT(self->finish);
    Py_VISIT(self->cancel);
    Py_VISIT(self->port);
    Py_VISIT(self->fail);
    return 0;
}

static int Lender_clear(Lender *self)
{
    Py_CLEAR(self->guard);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->finish);
    Py_CLEAR(self->cancel);
    Py_CLEAR(self->port);
    Py_CLEAR(self->fail);
    return 0;
}

static void Lender_dealloc(Lender *self)
{
    PyObject_GC_UnTrack(self);
    Lender_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ---- Lend ----------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall; /* Lend_call: see "__enter__ and __exit__" below */
    Lender *lender;
    PyObject *timeout;
    Py_ssize_t n;
    PyObject *view; /* the lent memoryview, between __enter__ and __exit__ */
    char *ptr;      /* what the fast path is about to lend (the buffer protocol below exports it) */
    Py_ssize_t len;
    int readonly, exported;
    Py_buffer pin;  /* while exported: the ring's mapping, so that it outlives an escaped export */
} Lend;

static PyTypeObject Lend_Type;
static PyObject *Lend_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames);

/* A few freed Lends kept for reuse (as CPython keeps freed tuples): one recv_view()/send_view() makes
 * and drops one, and the allocator's round trip is a visible part of a 64-byte message's cost. */
#define LEND_FREELIST 8
static Lend *lend_free[LEND_FREELIST];
static int lend_nfree;

static PyObject *Lender_lend(Lender *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n = -1;
    if (self->guard == NULL) {
        PyErr_SetString(PyExc_TypeError, "Lender is not initialised");
        return NULL;
    }
    if (nargs != 1 + self->send) {
        PyErr_SetString(PyExc_TypeError, self->send ? "lend(timeout, n) takes 2 arguments"
                                                    : "lend(timeout) takes 1 argument");
        return NULL;
    }
    if (self->send) {
        n = PyLong_AsSsize_t(args[1]);
        if (n == -1 && PyErr_Occurred())
            return NULL;
        if (n < 0) {
            PyErr_SetString(PyExc_ValueError, "lend() needs n >= 0");
            return NULL;
        }
    }
    Lend *l;
    if (lend_nfree > 0) {
        l = lend_free[--lend_nfree];
        PyObject_Init((PyObject *)l, &Lend_Type);
    } else if ((l = PyObject_New(Lend, &Lend_Type)) == NULL) {
        return NULL;
    }
    l->vectorcall = Lend_call;
    l->lender = (Lender *)Py_NewRef(self);
    l->timeout = Py_NewRef(args[0]);
    l->n = n;
    l->view = NULL;
    l->ptr = NULL;
    l->exported = 0;
    return (PyObject *)l;
}

static PyMethodDef Lender_methods[] = {
    {"lend", (PyCFunction)(void (*)(void))Lender_lend, METH_FASTCALL,
     "lend(timeout) to receive, lend(timeout, n) to send -> Lend: a context manager lending the ring."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Lender_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipcraft._native.Lender",
    .tp_basicsize = sizeof(Lender),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Lender(guard, send, acquire, finish, cancel=None, port=None, fail=None): "
              "makes the Lend context managers of one direction of a channel.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lender_init,
    .tp_dealloc = (destructor)Lender_dealloc,
    .tp_traverse = (traverseproc)Lender_traverse,
    .tp_clear = (inquiry)Lender_clear,
    .tp_methods = Lender_methods,
};

/* The C fast path: a new reference to the lent view, NULL with no error set when the Python path must
 * do it, NULL with an error set on failure. */
static PyObject *lend_fast(Lend *self)
{
    Lender *L = self->lender;
    const LendOps *ops = L->ops;
    char *payload;
    uint64_t n = (uint64_t)self->n;
    if (L->port == NULL || self->timeout != Py_None)
        return NULL;
    if ((L->send ? ops->loan(L->port, n, &payload) : ops->borrow(L->port, &payload, &n)) < 0)
        return NULL;
    self->ptr = payload;
    self->len = (Py_ssize_t)n;
    self->readonly = !L->send;
    PyObject *view = PyMemoryView_FromObject((PyObject *)self); /* half the cost of slicing one */
    self->ptr = NULL;
    if (view == NULL)
        (L->send ? ops->give_back_loan : ops->give_back_borrowed)(L->port);
    return view;
}

static PyObject *Lend_enter(Lend *self, PyObject *unused)
{
    (void)unused;
    Lender *L = self->lender;
    if (busy_take(L->guard) < 0)
        return NULL;
    PyObject *view = lend_fast(self);
    if (view == NULL && !PyErr_Occurred()) {
        if (L->send) {
            PyObject *n = PyLong_FromSsize_t(self->n);
            if (n != NULL) {
                PyObject *a[2] = {n, self->timeout};
                view = PyObject_Vectorcall(L->acquire, a, 2, NULL);
                Py_DECREF(n);
            }
        } else {
            view = PyObject_CallOneArg(L->acquire, self->timeout);
        }
        if (view != NULL && !PyMemoryView_Check(view)) {
            PyErr_Format(PyExc_TypeError, "a lender's acquire returned %.100s, not a memoryview",
                         Py_TYPE(view)->tp_name);
            Py_CLEAR(view);
        }
    }
    if (view == NULL) {
        L->guard->held = 0;
        return NULL;
    }
    Py_XSETREF(self->view, Py_NewRef(view));
    return view;
}

/* memoryview.release, the method descriptor, taken at registration: calling it with the view skips
 * the lookup of the bound method at every block (a tenth of a 64-byte zero-copy message's cost). */
static PyObject *memoryview_release;

/* Release the lent view; an export of it that outlives the block (np.frombuffer) keeps it alive, which
 * the docstrings forbid using (the mapping stays pinned, so it is never a crash). */
static void release_view(Lend *self)
{
    PyObject *view = self->view;
    self->view = NULL;
    if (view == NULL)
        return;
    PyObject *r = PyObject_CallOneArg(memoryview_release, view);
    if (r == NULL)
        PyErr_Clear();
    Py_XDECREF(r);
    Py_DECREF(view);
}

static PyObject *Lend_exit(Lend *self, PyObject *const *args, Py_ssize_t nargs)
{
    Lender *L = self->lender;
    int raised = nargs > 0 && args[0] != Py_None;
    if (self->view == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "__exit__ without a successful __enter__");
        return NULL;
    }
    release_view(self);
    PyObject *r = NULL;
    int rc = -EINVAL;
    if (L->port != NULL) {
        const LendOps *ops = L->ops;
        rc = !L->send ? ops->consume(L->port) : raised ? ops->give_back_loan(L->port) : ops->commit(L->port, 0);
        if (!L->send || raised)
            rc = rc == -EINVAL ? rc : 0; /* a closed port has nothing to consume or drop: as the Python path */
    }
    if (rc == 0) {
        r = Py_NewRef(Py_None);
    } else if (rc == -EINVAL) { /* nothing lent in C (the general path lent a copy): its verbs end it */
        r = PyObject_CallNoArgs(L->send && raised ? L->cancel : L->finish);
    } else {
        PyObject *code = PyLong_FromLong(rc);
        PyObject *e = code ? PyObject_CallOneArg(L->fail, code) : NULL;
        Py_XDECREF(code);
        if (e != NULL) {
            if (PyExceptionInstance_Check(e))
                PyErr_SetObject((PyObject *)Py_TYPE(e), e);
            else
                PyErr_SetString(PyExc_TypeError, "a lender's fail() returned no exception");
            Py_DECREF(e);
        }
    }
    L->guard->held = 0;
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

/* The buffer protocol, for the fast path's memoryview only (exported once, during __enter__): the
 * record's bytes, read-only to receive, with an export of the port's buffer (the mapping) held until
 * the memoryview is released or, if an export of it escaped, until that goes. */
static int Lend_getbuffer(Lend *self, Py_buffer *view, int flags)
{
    Lender *L = self->lender;
    if (self->ptr == NULL || self->exported || L == NULL || L->port == NULL) {
        PyErr_SetString(PyExc_BufferError, "a Lend lends its memory only as the view its with block gets");
        return -1;
    }
    if (L->ops->pin(L->port, &self->pin) < 0)
        return -1;
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->ptr, self->len, self->readonly, flags) < 0) {
        PyBuffer_Release(&self->pin);
        return -1;
    }
    self->exported = 1;
    return 0;
}

static void Lend_releasebuffer(Lend *self, Py_buffer *view)
{
    (void)view;
    if (self->exported) {
        self->exported = 0;
        PyBuffer_Release(&self->pin);
    }
}

static PyBufferProcs Lend_as_buffer = {
    .bf_getbuffer = (getbufferproc)Lend_getbuffer,
    .bf_releasebuffer = (releasebufferproc)Lend_releasebuffer,
};

/* Not garbage-collected (one allocation fewer per message): a Lend refers to its Lender, its timeout
 * and its view, none of which refers back to it. */
static void Lend_dealloc(Lend *self)
{
    Py_XDECREF(self->lender);
    Py_XDECREF(self->timeout);
    Py_XDECREF(self->view);
    if (lend_nfree < LEND_FREELIST)
        lend_free[lend_nfree++] = self;
    else
        PyObject_Free(self);
}

/* ---- __enter__ and __exit__ without a bound method per call ----------------------------------
 *
 * A `with` statement looks __enter__ and __exit__ up on the type and binds each to the object: for a
 * method of tp_methods that allocates a bound method object twice per block, a quarter of a small
 * message's cost.  So the type's __enter__ and __exit__ are LendVerb descriptors that bind to the
 * Lend itself, which is callable: with no argument it enters, with the three of __exit__ it exits.
 * Called on the type (contextlib.ExitStack does type(cm).__enter__(cm)), a LendVerb takes the Lend
 * as its first argument. */

static PyObject *Lend_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames == NULL && nargs == 0)
        return Lend_enter((Lend *)self, NULL);
    if (kwnames == NULL && nargs == 3)
        return Lend_exit((Lend *)self, args, nargs);
    PyErr_SetString(PyExc_TypeError, "a Lend is entered with __enter__() and left with __exit__(type, value, tb)");
    return NULL;
}

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    int exit; /* 0: __enter__, 1: __exit__ */
} LendVerb;

static PyObject *LendVerb_get(PyObject *self, PyObject *obj, PyObject *type)
{
    (void)type;
    return Py_NewRef(obj == NULL || obj == Py_None ? self : obj);
}

static PyObject *LendVerb_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    int exit = ((LendVerb *)self)->exit;
    if (kwnames != NULL || nargs != (exit ? 4 : 1) || !PyObject_TypeCheck(args[0], &Lend_Type)) {
        PyErr_SetString(PyExc_TypeError, exit ? "Lend.__exit__(lend, type, value, tb)" : "Lend.__enter__(lend)");
        return NULL;
    }
    return exit ? Lend_exit((Lend *)args[0], args + 1, 3) : Lend_enter((Lend *)args[0], NULL);
}

static PyTypeObject LendVerb_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipcraft._native._LendVerb",
    .tp_basicsize = sizeof(LendVerb),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Lend's __enter__ or __exit__: binds to the Lend itself (see lend.c).",
    .tp_vectorcall_offset = offsetof(LendVerb, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = LendVerb_get,
};

static PyTypeObject Lend_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipcraft._native.Lend",
    .tp_basicsize = sizeof(Lend),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "What Lender.lend() returns: one recv_view()/send_view() context manager.",
    .tp_vectorcall_offset = offsetof(Lend, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)Lend_dealloc,
    .tp_as_buffer = &Lend_as_buffer,
};

static int add_verb(const char *name, int exit)
{
    LendVerb *v = PyObject_New(LendVerb, &LendVerb_Type);
    if (v == NULL)
        return -1;
    v->vectorcall = LendVerb_call;
    v->exit = exit;
    int rc = PyDict_SetItemString(Lend_Type.tp_dict, name, (PyObject *)v);
    Py_DECREF(v);
    return rc;
}

int ipc_lend_register(PyObject *m)
{
    memoryview_release = PyObject_GetAttrString((PyObject *)&PyMemoryView_Type, "release");
    if (memoryview_release == NULL)
        return -1;
    if (ipc_add_type(m, &BusyLock_Type, "BusyLock") < 0 || ipc_add_type(m, &Lender_Type, "Lender") < 0)
        return -1;
    if (PyType_Ready(&LendVerb_Type) < 0 || PyType_Ready(&Lend_Type) < 0 || add_verb("__enter__", 0) < 0 ||
        add_verb("__exit__", 1) < 0)
        return -1;
    PyType_Modified(&Lend_Type);
    return ipc_add_type(m, &Lend_Type, "Lend");
}
