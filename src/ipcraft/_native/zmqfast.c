/* ZmqFast: the fast path of one ZeroMQ socket of zmq+tcp:// / zmq+ipc:// (ipcraft/_transports/zeromq.py).
 *
 * pyzmq's compiled send and recv cost about as much again as libzmq's own calls (argument parsing,
 * a Frame or a copy, releasing and taking the GIL), and a Python fast path around them as much once
 * more.  This type calls libzmq itself, on the socket pyzmq made (``Socket.underlying``), through the
 * copy of libzmq that pyzmq loaded: the constructor opens a library that is already loaded
 * (RTLD_NOLOAD: pyzmq's extension, whose dependencies dlsym searches, or libzmq itself) and never
 * loads a second copy; when it finds none, it raises OSError and the transport keeps its Python path.
 * No header of libzmq is needed: the few calls are declared here (their ABI has been stable since
 * libzmq 4.0) and found with dlsym.
 *
 * It is also the transport's lock.  ZeroMQ sockets are not thread-safe, and pyzmq releases the GIL
 * inside its calls, so the GIL alone does not keep two threads off the socket: every use of the socket
 * (the transport's general path with ``with lock:``, and this fast path) holds this mutex.  The fast
 * path only tries it (a thread that finds it held gives up, and the general path waits for it with the
 * GIL released), and holds the GIL throughout: with ZMQ_DONTWAIT no call here blocks.
 *
 * try_send(data, sid=0) -> bool writes ipcraft's 8-byte frame header and the payload into one zmq_msg
 * (one copy, as pyzmq's copying send makes) and sends it; try_recv() -> bytes | None receives one
 * zmq_msg and returns its payload (one copy) when its header is ipcraft's.  Both give up, having sent or
 * taken nothing (False / None), whenever the general path must decide: the lock held, the state not
 * open, no room or no message (EAGAIN), a payload over the limit or not a contiguous buffer.  The few
 * things that need Python are calls of the transport's own methods (``hooks``): ``_drain_monitor()``
 * every 32 sends of a pair (a vanished peer), ``_refresh()`` / ``_flag(events)`` while the descriptor of
 * fileno() must be kept exact (``track``), ``_end_fast()`` at a pair's end of stream (the empty frame),
 * and ``_payload(bytes)`` for a malformed frame (it raises the ProtocolError that says what is wrong).
 */
#include "native.h"
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>

#define ZMQ_EVENTS_OPT 15
#define ZMQ_TYPE_OPT 16
#define ZMQ_DONTWAIT_FLAG 1
#define ZMQ_POLLIN_FLAG 1
#define HEADER_SIZE 8
#define CHECK_EVERY 32
/* Copies of at least this many bytes are made with the GIL released. */
#define NOGIL_COPY 65536

typedef struct {
    unsigned char _[64];
} __attribute__((aligned(sizeof(void *)))) zmsg_t; /* zmq_msg_t: 64 opaque bytes */

typedef int (*msg_init_t)(zmsg_t *);
typedef int (*msg_init_size_t)(zmsg_t *, size_t);
typedef void *(*msg_data_t)(zmsg_t *);
typedef size_t (*msg_size_t)(const zmsg_t *);
typedef int (*msg_close_t)(zmsg_t *);
typedef int (*msg_send_t)(zmsg_t *, void *, int);
typedef int (*msg_recv_t)(zmsg_t *, void *, int);
typedef int (*getsockopt_t)(void *, int, void *, size_t *);

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mutex;
    int mutex_ready;
    void *lib;   /* dlopen handle (a reference to a library already loaded) */
    void *sock;  /* libzmq's socket, owned by pyzmq's Socket */
    PyObject *hooks;
    msg_init_t msg_init;
    msg_init_size_t msg_init_size;
    msg_data_t msg_data;
    msg_size_t msg_size;
    msg_close_t msg_close;
    msg_send_t msg_send;
    msg_recv_t msg_recv;
    getsockopt_t getsockopt;
    Py_ssize_t limit;
    int state;       /* 0 open, 1 a pair's peer vanished, 2 ended or closed (the transport's _state) */
    int track;       /* read ZMQ_EVENTS after each operation (the transport's _track) */
    int cold;        /* the general path's last receive had to wait: leave the next to it */
    int hot;         /* the last try_recv found a message: try the next one without ZMQ_EVENTS */
    int waiting;     /* wait_recv sleeps: every operation keeps the ready eventfd exact, as with track */
    int pair;
    unsigned char magic;
    unsigned long sent;
} ZmqFast;

#define TRACKING(self) ((self)->track || (self)->waiting)

static PyObject *s_drain, *s_refresh, *s_flag, *s_end, *s_payload;

static int ZmqFast_init(ZmqFast *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"lib", "handle", "kind", "magic", "limit", "pair", "hooks", NULL};
    const char *path;
    unsigned long long handle;
    int kind, magic, pair;
    Py_ssize_t limit;
    PyObject *hooks;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sKiinpO:ZmqFast", kwlist, &path, &handle, &kind, &magic,
                                     &limit, &pair, &hooks))
        return -1;
    if (self->lib != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ZmqFast is initialised once");
        return -1;
    }
    if (handle == 0 || limit < 0 || magic < 0 || magic > 255) {
        PyErr_SetString(PyExc_ValueError, "ZmqFast needs a socket handle, a limit >= 0 and a one-byte magic");
        return -1;
    }
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL) {
        PyErr_Format(PyExc_OSError, "%s is not loaded in this process", path);
        return -1;
    }
    self->msg_init = (msg_init_t)dlsym(lib, "zmq_msg_init");
    self->msg_init_size = (msg_init_size_t)dlsym(lib, "zmq_msg_init_size");
    self->msg_data = (msg_data_t)dlsym(lib, "zmq_msg_data");
    self->msg_size = (msg_size_t)dlsym(lib, "zmq_msg_size");
    self->msg_close = (msg_close_t)dlsym(lib, "zmq_msg_close");
    self->msg_send = (msg_send_t)dlsym(lib, "zmq_msg_send");
    self->msg_recv = (msg_recv_t)dlsym(lib, "zmq_msg_recv");
    self->getsockopt = (getsockopt_t)dlsym(lib, "zmq_getsockopt");
    if (!self->msg_init || !self->msg_init_size || !self->msg_data || !self->msg_size || !self->msg_close ||
        !self->msg_send || !self->msg_recv || !self->getsockopt) {
        dlclose(lib);
        PyErr_Format(PyExc_OSError, "%s does not export libzmq's functions", path);
        return -1;
    }
    int actual = -1;
    size_t len = sizeof actual;
    if (self->getsockopt((void *)(uintptr_t)handle, ZMQ_TYPE_OPT, &actual, &len) != 0 || actual != kind) {
        dlclose(lib);
        PyErr_Format(PyExc_OSError, "the socket seen through %s is not the expected one", path);
        return -1;
    }
    if (pthread_mutex_init(&self->mutex, NULL) != 0) {
        dlclose(lib);
        PyErr_SetString(PyExc_OSError, "pthread_mutex_init failed");
        return -1;
    }
    self->mutex_ready = 1;
    self->lib = lib;
    self->sock = (void *)(uintptr_t)handle;
    self->limit = limit;
    self->magic = (unsigned char)magic;
    self->pair = pair;
    Py_INCREF(hooks);
    Py_XSETREF(self->hooks, hooks);
    return 0;
}

static int ZmqFast_traverse(ZmqFast *self, visitproc visit, void *arg)
{
    Py_VISIT(self->hooks);
    return 0;
}

static int ZmqFast_clear(ZmqFast *self)
{
    Py_CLEAR(self->hooks);
    return 0;
}

static void ZmqFast_dealloc(ZmqFast *self)
{
    PyObject_GC_UnTrack(self);
    ZmqFast_clear(self);
    if (self->mutex_ready)
        pthread_mutex_destroy(&self->mutex);
    if (self->lib != NULL)
        dlclose(self->lib);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A hook of the transport, called with the lock held; -1 with its exception set. */
static int call_hook(ZmqFast *self, PyObject *name, PyObject *arg)
{
    if (self->hooks == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ZmqFast is not initialised");
        return -1;
    }
    PyObject *r = arg == NULL ? PyObject_CallMethodNoArgs(self->hooks, name)
                              : PyObject_CallMethodOneArg(self->hooks, name, arg);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int track_events(ZmqFast *self)
{
    int ev = 0;
    size_t len = sizeof ev;
    if (self->getsockopt(self->sock, ZMQ_EVENTS_OPT, &ev, &len) != 0)
        return 0;
    if (TRACKING(self)) {
        PyObject *v = PyLong_FromLong(ev);
        if (v == NULL)
            return -1;
        int rc = call_hook(self, s_flag, v);
        Py_DECREF(v);
        if (rc < 0)
            return -1;
    }
    return ev;
}

static PyObject *ZmqFast_try_send(ZmqFast *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "try_send(data, sid=0)");
        return NULL;
    }
    long sid = 0;
    if (nargs == 2) {
        sid = PyLong_AsLong(args[1]);
        if (sid == -1 && PyErr_Occurred())
            return NULL;
        if (sid < 0 || sid > 255)
            Py_RETURN_FALSE; /* the general path says what is wrong */
    }
    if (self->lib == NULL)
        Py_RETURN_FALSE;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear(); /* not a contiguous buffer: the general path copes, or raises its own error */
        Py_RETURN_FALSE;
    }
    size_t n = (size_t)view.len;
    if (view.len > self->limit || n > 0xffffffffu || pthread_mutex_trylock(&self->mutex) != 0) {
        PyBuffer_Release(&view);
        Py_RETURN_FALSE;
    }
    PyObject *result = Py_False;
    zmsg_t msg;
    if (self->state != 0 || self->msg_init_size(&msg, n + HEADER_SIZE) != 0)
        goto done;
    unsigned char *p = self->msg_data(&msg);
    p[0] = self->magic;
    p[1] = (unsigned char)sid;
    p[2] = p[3] = 0;
    p[4] = (unsigned char)n;
    p[5] = (unsigned char)(n >> 8);
    p[6] = (unsigned char)(n >> 16);
    p[7] = (unsigned char)(n >> 24);
    if (n >= NOGIL_COPY) {
        Py_BEGIN_ALLOW_THREADS
        memcpy(p + HEADER_SIZE, view.buf, n);
        Py_END_ALLOW_THREADS
    } else {
        memcpy(p + HEADER_SIZE, view.buf, n);
    }
    if (self->msg_send(&msg, self->sock, ZMQ_DONTWAIT_FLAG) < 0) {
        self->msg_close(&msg); /* no room (EAGAIN) or another error: the general path reports */
        goto done;
    }
    result = Py_True;
    if (self->pair && !(++self->sent % CHECK_EVERY) && call_hook(self, s_drain, NULL) < 0)
        result = NULL;
    else if (TRACKING(self) && call_hook(self, s_refresh, NULL) < 0)
        result = NULL;
done:
    pthread_mutex_unlock(&self->mutex);
    PyBuffer_Release(&view);
    Py_XINCREF(result);
    return result;
}

/* With the lock held, receive one message now (ZMQ_DONTWAIT).  TAKEN: *out is its payload (new
 * reference, ipcraft's header checked and stripped) and *sid its serializer id; NONE: no message
 * (EAGAIN, or another error the general path reports), and after it ZeroMQ's FD is armed again; ENDED: a
 * pair's end-of-stream frame, handed to _end_fast(); MALFORMED: *out is the whole frame, for the
 * caller to have its ProtocolError raised once the lock is released; FAILED: an exception is set. */
enum { FAILED = -1, NONE = 0, TAKEN = 1, ENDED = 2, MALFORMED = 3 };

static int take_one(ZmqFast *self, PyObject **out, int *sid)
{
    zmsg_t msg;
    self->msg_init(&msg);
    if (self->msg_recv(&msg, self->sock, ZMQ_DONTWAIT_FLAG) < 0) {
        self->msg_close(&msg);
        self->hot = 0;
        return NONE;
    }
    if (TRACKING(self) && call_hook(self, s_refresh, NULL) < 0) {
        self->msg_close(&msg);
        return FAILED;
    }
    size_t n = self->msg_size(&msg);
    const unsigned char *p = self->msg_data(&msg);
    if (n == 0 && self->pair) {
        self->msg_close(&msg);
        return call_hook(self, s_end, NULL) < 0 ? FAILED : ENDED; /* the peer's close */
    }
    size_t length = n >= HEADER_SIZE ? (size_t)p[4] | (size_t)p[5] << 8 | (size_t)p[6] << 16 | (size_t)p[7] << 24 : 0;
    int code = TAKEN;
    if (n >= HEADER_SIZE && p[0] == self->magic && p[2] == 0 && p[3] == 0 && length == n - HEADER_SIZE) {
        *sid = p[1];
        *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
        if (*out == NULL) {
            code = FAILED;
        } else if (length >= NOGIL_COPY) {
            Py_BEGIN_ALLOW_THREADS
            memcpy(PyBytes_AS_STRING(*out), p + HEADER_SIZE, length);
            Py_END_ALLOW_THREADS
        } else {
            memcpy(PyBytes_AS_STRING(*out), p + HEADER_SIZE, length);
        }
    } else {
        *out = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
        code = *out == NULL ? FAILED : MALFORMED;
    }
    self->msg_close(&msg);
    return code;
}

static PyObject *ZmqFast_try_recv(ZmqFast *self, PyObject *unused)
{
    (void)unused;
    if (self->lib == NULL || pthread_mutex_trylock(&self->mutex) != 0)
        Py_RETURN_NONE;
    PyObject *out = NULL;
    int sid = 0, code = NONE;
    if (self->state == 2)
        goto unlock;
    if (!self->hot) {
        if (self->cold)
            goto unlock;
        int ev = track_events(self);
        if (ev < 0) {
            code = FAILED;
            goto unlock;
        }
        if (!(ev & ZMQ_POLLIN_FLAG))
            goto unlock;
        self->hot = 1;
    }
    code = take_one(self, &out, &sid);
unlock:
    pthread_mutex_unlock(&self->mutex);
    if (code == TAKEN)
        return out;
    if (code == MALFORMED) { /* the transport raises the ProtocolError that says what is wrong */
        PyObject *r = self->hooks == NULL ? (PyErr_SetString(PyExc_RuntimeError, "ZmqFast has no transport"), NULL)
                                          : PyObject_CallMethodOneArg(self->hooks, s_payload, out);
        Py_DECREF(out);
        return r;
    }
    if (code == FAILED)
        return NULL;
    Py_RETURN_NONE;
}

static int take(ZmqFast *self); /* the lock, waited for with the GIL released (below) */

/* wait_recv(ms, zmq_fd, ready_fd, monitor_fd) -> (sid, payload) | frame | None: the blocking receive of
 * one thread alone (no fileno() handed out, no other waiter): a message now, or one slice of sleep
 * (poll of the three descriptors, GIL released) and a message if ZeroMQ's FD alone woke it; None
 * leaves everything else (timeouts, the monitor, the end, errors) to the general path. */
static PyObject *ZmqFast_wait_recv(ZmqFast *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "wait_recv(ms, zmq_fd, ready_fd, monitor_fd)");
        return NULL;
    }
    int v[4];
    for (int i = 0; i < 4; i++) {
        long x = PyLong_AsLong(args[i]);
        if (x == -1 && PyErr_Occurred())
            return NULL;
        if (x < 0 || x > INT_MAX) {
            PyErr_SetString(PyExc_ValueError, "wait_recv() takes non-negative ints");
            return NULL;
        }
        v[i] = (int)x;
    }
    if (self->lib == NULL || pthread_mutex_trylock(&self->mutex) != 0)
        Py_RETURN_NONE;
    PyObject *out = NULL;
    int sid = 0, code = NONE;
    if (self->state != 0 || TRACKING(self))
        goto unlock; /* the general path reports, or keeps the descriptors exact for others */
    code = take_one(self, &out, &sid);
    if (code != NONE) {
        self->cold = 0; /* it came without a wait: try_recv takes the next */
        goto unlock;
    }
    /* Nothing: ZeroMQ's FD is armed again.  While this thread sleeps outside the lock, every other
     * operation keeps the ready eventfd exact (it may consume the FD's signal), as for a waiter of the
     * general path; the monitor's FD wakes it too (that news is for the general path). */
    self->waiting = 1;
    pthread_mutex_unlock(&self->mutex);
    struct pollfd fds[3] = {{v[1], POLLIN, 0}, {v[2], POLLIN, 0}, {v[3], POLLIN, 0}};
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = poll(fds, 3, v[0]);
    Py_END_ALLOW_THREADS
    if (take(self) < 0)
        return NULL;
    self->waiting = 0;
    if (n == 1 && fds[0].revents && self->state == 0 && !self->track) {
        code = take_one(self, &out, &sid);
        self->cold = 1;
    }
unlock:
    pthread_mutex_unlock(&self->mutex);
    if (code == TAKEN)
        return Py_BuildValue("(iN)", sid, out);
    if (code == MALFORMED)
        return out; /* the whole frame: the transport's unframe() raises the ProtocolError */
    if (code == FAILED)
        return NULL;
    Py_RETURN_NONE;
}

/* The lock: taken with the GIL released when another thread holds it (it holds it briefly, never
 * across a wait, but it may need the GIL to finish). */
static int take(ZmqFast *self)
{
    if (!self->mutex_ready) {
        PyErr_SetString(PyExc_RuntimeError, "ZmqFast is not initialised");
        return -1;
    }
    if (pthread_mutex_trylock(&self->mutex) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->mutex);
        Py_END_ALLOW_THREADS
    }
    return 0;
}

static PyObject *ZmqFast_acquire(ZmqFast *self, PyObject *unused)
{
    (void)unused;
    if (take(self) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *ZmqFast_enter(ZmqFast *self, PyObject *unused)
{
    (void)unused;
    if (take(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *ZmqFast_release(ZmqFast *self, PyObject *unused)
{
    (void)unused;
    if (!self->mutex_ready) {
        PyErr_SetString(PyExc_RuntimeError, "ZmqFast is not initialised");
        return NULL;
    }
    pthread_mutex_unlock(&self->mutex);
    Py_RETURN_NONE;
}

static PyObject *ZmqFast_exit(ZmqFast *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    (void)nargs;
    return ZmqFast_release(self, NULL);
}

static PyObject *get_int(int *field)
{
    return PyLong_FromLong(*field);
}

static int set_int(int *field, PyObject *value)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete this attribute");
        return -1;
    }
    long v = PyLong_AsLong(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *field = (int)v;
    return 0;
}

static int set_flag(int *field, PyObject *value)
{
    int t = value == NULL ? -1 : PyObject_IsTrue(value);
    if (t < 0)
        return set_int(field, value); /* its error */
    *field = t;
    return 0;
}

static PyObject *ZmqFast_get_state(ZmqFast *self, void *c) { (void)c; return get_int(&self->state); }
static int ZmqFast_set_state(ZmqFast *self, PyObject *v, void *c) { (void)c; return set_int(&self->state, v); }
static PyObject *ZmqFast_get_track(ZmqFast *self, void *c) { (void)c; return PyBool_FromLong(TRACKING(self)); }
static int ZmqFast_set_track(ZmqFast *self, PyObject *v, void *c) { (void)c; return set_flag(&self->track, v); }
static PyObject *ZmqFast_get_cold(ZmqFast *self, void *c) { (void)c; return PyBool_FromLong(self->cold); }
static int ZmqFast_set_cold(ZmqFast *self, PyObject *v, void *c) { (void)c; return set_flag(&self->cold, v); }

static PyGetSetDef ZmqFast_getset[] = {
    {"state", (getter)ZmqFast_get_state, (setter)ZmqFast_set_state,
     "0 open, 1 a pair's peer vanished (receive only), 2 ended or closed (nothing)", NULL},
    {"track", (getter)ZmqFast_get_track, (setter)ZmqFast_set_track,
     "read ZMQ_EVENTS after every operation (fileno() handed out, or a thread waits)", NULL},
    {"cold", (getter)ZmqFast_get_cold, (setter)ZmqFast_set_cold,
     "the general path's last receive waited: try_recv leaves the next one to it", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef ZmqFast_methods[] = {
    {"try_send", (PyCFunction)(void (*)(void))ZmqFast_try_send, METH_FASTCALL,
     "try_send(data, sid=0) -> bool: send one message now, or nothing (False)"},
    {"try_recv", (PyCFunction)ZmqFast_try_recv, METH_NOARGS,
     "try_recv() -> bytes | None: the payload of one message ready now, or None (nothing taken)"},
    {"wait_recv", (PyCFunction)(void (*)(void))ZmqFast_wait_recv, METH_FASTCALL,
     "wait_recv(ms, zmq_fd, ready_fd, monitor_fd) -> (sid, payload) | frame | None: one thread's blocking "
     "receive, at most one slice of sleep"},
    {"acquire", (PyCFunction)ZmqFast_acquire, METH_NOARGS, "take the socket's lock (waits without the GIL)"},
    {"release", (PyCFunction)ZmqFast_release, METH_NOARGS, "release the socket's lock"},
    {"__enter__", (PyCFunction)ZmqFast_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))ZmqFast_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ZmqFastType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipcraft._native.ZmqFast",
    .tp_basicsize = sizeof(ZmqFast),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C fast path and the lock of one ZeroMQ socket (see zmqfast.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ZmqFast_init,
    .tp_dealloc = (destructor)ZmqFast_dealloc,
    .tp_traverse = (traverseproc)ZmqFast_traverse,
    .tp_clear = (inquiry)ZmqFast_clear,
    .tp_methods = ZmqFast_methods,
    .tp_getset = ZmqFast_getset,
};

int ipc_zmqfast_register(PyObject *m)
{
    if ((s_drain = PyUnicode_InternFromString("_drain_monitor")) == NULL ||
        (s_refresh = PyUnicode_InternFromString("_refresh")) == NULL ||
        (s_flag = PyUnicode_InternFromString("_flag")) == NULL ||
        (s_end = PyUnicode_InternFromString("_end_fast")) == NULL ||
        (s_payload = PyUnicode_InternFromString("_payload")) == NULL)
        return -1;
    return ipc_add_type(m, &ZmqFastType, "ZmqFast");
}
