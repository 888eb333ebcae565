/* FastMethod: a method whose common case is one C call, with no Python frame in between.
 *
 * Publisher.send_bytes(data) and Subscriber.recv_bytes() finish their common case in one call of the
 * port's fast path (bcast.c's try_send, try_recv).  Written in Python, the method around that call cost
 * about as much as the call itself (a frame, the defaults and a **extra dict: 50-110 ns of a 200-250 ns
 * send_bytes at 64 B on the bench VM, whose C call is ~100 ns).  A FastMethod sits in the class in place of such a method:
 *
 *   FastMethod(general, fast_attr, nargs, sent)
 *
 * called on an instance with exactly `nargs` positional arguments and no keyword, it reads the
 * instance's attribute `fast_attr` (the port's fast callable, or None) and calls it with those
 * arguments.  A "sending" method (sent=True) is done when that returns True (it returns None); a
 * receiving one when it returns anything but None (that is its result).  Every other case (other
 * arguments, no fast callable, False or None, which promise that nothing was sent or taken) calls
 * `general`, the full method in Python, with the original arguments: it repeats the fast attempt and
 * then does the general path with its full semantics.  An exception of the fast callable propagates.
 *
 * It is a method descriptor (Py_TPFLAGS_METHOD_DESCRIPTOR): `obj.name(...)` calls it with obj first
 * and no bound object is made; `obj.name` alone is an ordinary bound method of it; on the class it is
 * `general` itself, so that help(), inspect.signature() and the API reference see the Python method.
 */
#include "native.h"
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *general;   /* the full method (a function taking self first) */
    PyObject *fast_attr; /* the instance attribute holding the fast callable (interned str) */
    Py_ssize_t nargs;    /* positional arguments (self excluded) the fast path takes */
    int sent;            /* 1: True means done (return None); 0: anything but None is the result */
    vectorcallfunc vectorcall;
} FastMethod;

static PyObject *FastMethod_vectorcall(FastMethod *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (self->general == NULL) {
        PyErr_SetString(PyExc_TypeError, "FastMethod is not initialised");
        return NULL;
    }
    if (n == self->nargs + 1 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0)) {
        PyObject *fast = PyObject_GetAttr(args[0], self->fast_attr);
        if (fast == NULL)
            return NULL;
        if (fast != Py_None) {
            PyObject *r = PyObject_Vectorcall(fast, args + 1, (size_t)self->nargs, NULL);
            Py_DECREF(fast);
            if (r == NULL)
                return NULL;
            if (self->sent) {
                int done = r == Py_True;
                Py_DECREF(r);
                if (done)
                    Py_RETURN_NONE;
            } else if (r != Py_None) {
                return r;
            } else {
                Py_DECREF(r);
            }
        } else {
            Py_DECREF(fast);
        }
    }
    return PyObject_Vectorcall(self->general, args, nargsf, kwnames);
}

static int FastMethod_init(FastMethod *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"general", "fast_attr", "nargs", "sent", NULL};
    PyObject *general, *attr;
    Py_ssize_t nargs;
    int sent;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OUnp:FastMethod", kwlist, &general, &attr, &nargs, &sent))
        return -1;
    if (!PyCallable_Check(general)) {
        PyErr_SetString(PyExc_TypeError, "FastMethod: general must be callable");
        return -1;
    }
    if (nargs < 0 || nargs > 8) {
        PyErr_SetString(PyExc_ValueError, "FastMethod: nargs is 0 to 8");
        return -1;
    }
    Py_INCREF(general);
    Py_INCREF(attr);
    PyUnicode_InternInPlace(&attr);
    Py_XSETREF(self->general, general);
    Py_XSETREF(self->fast_attr, attr);
    self->nargs = nargs;
    self->sent = sent;
    self->vectorcall = (vectorcallfunc)FastMethod_vectorcall;
    return 0;
}

static PyObject *FastMethod_call(FastMethod *self, PyObject *args, PyObject *kwargs)
{
    if (self->vectorcall == NULL) {
        PyErr_SetString(PyExc_TypeError, "FastMethod is not initialised");
        return NULL;
    }
    return PyVectorcall_Call((PyObject *)self, args, kwargs);
}

static PyObject *FastMethod_get(FastMethod *self, PyObject *obj, PyObject *type)
{
    (void)type;
    if (obj == NULL || obj == Py_None || self->general == NULL) {
        PyObject *r = self->general ? self->general : (PyObject *)self;
        Py_INCREF(r);
        return r;
    }
    return PyMethod_New((PyObject *)self, obj);
}

static int FastMethod_traverse(FastMethod *self, visitproc visit, void *arg)
{
    Py_VISIT(self->general);
    return 0;
}

static int FastMethod_clear(FastMethod *self)
{
    Py_CLEAR(self->general);
    return 0;
}

static void FastMethod_dealloc(FastMethod *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->general);
    Py_CLEAR(self->fast_attr);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *FastMethod_getattro(FastMethod *self, PyObject *name)
{
    PyObject *r = PyObject_GenericGetAttr((PyObject *)self, name);
    if (r != NULL || self->general == NULL || !PyErr_ExceptionMatches(PyExc_AttributeError))
        return r;
    PyErr_Clear(); /* __doc__, __name__, __qualname__, __module__...: the general method's */
    return PyObject_GetAttr(self->general, name);
}

static PyObject *FastMethod_get_doc(FastMethod *self, void *c)
{
    (void)c;
    if (self->general == NULL)
        Py_RETURN_NONE;
    return PyObject_GetAttrString(self->general, "__doc__");
}

static PyGetSetDef FastMethod_getset[] = {
    {"__doc__", (getter)FastMethod_get_doc, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef FastMethod_members[] = {
    {"__wrapped__", T_OBJECT, offsetof(FastMethod, general), READONLY, "the general method"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FastMethod_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipcraft._native.FastMethod",
    .tp_basicsize = sizeof(FastMethod),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "FastMethod(general, fast_attr, nargs, sent): a method whose common case is one call of the "
              "instance's fast_attr (see fastmethod.c)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FastMethod_init,
    .tp_dealloc = (destructor)FastMethod_dealloc,
    .tp_traverse = (traverseproc)FastMethod_traverse,
    .tp_clear = (inquiry)FastMethod_clear,
    .tp_call = (ternaryfunc)FastMethod_call,
    .tp_vectorcall_offset = offsetof(FastMethod, vectorcall),
    .tp_descr_get = (descrgetfunc)FastMethod_get,
    .tp_getattro = (getattrofunc)FastMethod_getattro,
    .tp_members = FastMethod_members,
    .tp_getset = FastMethod_getset,
};

int ipc_fastmethod_register(PyObject *m) { return ipc_add_type(m, &FastMethod_Type, "FastMethod"); }
