/* The SpscPort type: Python's handle on one side of an SPSC ring (the algorithms are in spsc.c).
 *
 * Argument parsing, buffer exports, the fast path and the general methods.  The try_* methods are the
 * channel's fast path (METH_FASTCALL / METH_NOARGS): they return True/bytes when they completed the
 * operation, and False/None whenever anything else has to happen (the general methods, which return
 * 0 / -errno, then tell what).  See spsc.c for the ordering and wake-up rules.
 */
#include "spsc.h"
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

/* ---- the Python type ------------------------------------------------------------------------ */

static int fd_arg(PyObject *o, int *fd)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < -1 || v > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "a file descriptor is an int >= 0, or -1 for none");
        return -1;
    }
    *fd = (int)v;
    return 0;
}

static int SpscPort_init(SpscPort *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buf", "offset", "producer", "signal_fd", "wait_fd", "watch_fds",
                             "spin_ns", "limit", NULL};
    PyObject *buf, *sig = NULL, *wfd = NULL, *watch = NULL;
    Py_ssize_t offset;
    int producer;
    long long spin_ns = 100000, limit = -1;
    if (self->has_view) {
        PyErr_SetString(PyExc_TypeError, "SpscPort is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Onp|OOOLL:SpscPort", kwlist, &buf, &offset, &producer,
                                     &sig, &wfd, &watch, &spin_ns, &limit))
        return -1;
    self->signal_fd = self->wait_fd = -1;
    if ((sig && fd_arg(sig, &self->signal_fd) < 0) || (wfd && fd_arg(wfd, &self->wait_fd) < 0))
        return -1;
    if (self->wait_fd >= 0) {
        int fl = fcntl(self->wait_fd, F_GETFL);
        if (fl < 0 || !(fl & O_NONBLOCK)) {
            PyErr_SetString(PyExc_ValueError, "wait_fd must be an open, non-blocking eventfd");
            return -1;
        }
    }
    self->nwatch = 0;
    if (watch && watch != Py_None) {
        PyObject *seq = PySequence_Fast(watch, "watch_fds must be a sequence of file descriptors");
        if (seq == NULL)
            return -1;
        Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
        int ok = k <= 4;
        if (!ok)
            PyErr_SetString(PyExc_ValueError, "at most 4 watch_fds");
        for (Py_ssize_t i = 0; ok && i < k; i++) {
            int fd;
            ok = fd_arg(PySequence_Fast_GET_ITEM(seq, i), &fd) == 0;
            if (ok && fd >= 0)
                self->watch_fds[self->nwatch++] = fd;
        }
        Py_DECREF(seq);
        if (!ok)
            return -1;
    }
    if (PyObject_GetBuffer(buf, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    char *base = ipc_buffer_at(&self->view, offset, SPSC_HEADER_SIZE);
    uint64_t magic, cap, doff, head, tail;
    uint32_t version, flags;
    if (base == NULL || ((uintptr_t)base & 63) != 0) {
        if (base != NULL)
            PyErr_SetString(PyExc_ValueError, "a ring must start 64-byte aligned");
        PyBuffer_Release(&self->view);
        return -1;
    }
    memcpy(&magic, base + OFF_MAGIC, 8);
    memcpy(&version, base + OFF_VERSION, 4);
    memcpy(&flags, base + OFF_FLAGS, 4);
    memcpy(&cap, base + OFF_CAPACITY, 8);
    memcpy(&doff, base + OFF_DATA, 8);
    head = ring_load_acquire((uint64_t *)(base + OFF_HEAD));
    tail = ring_load_acquire((uint64_t *)(base + OFF_TAIL));
    const char *bad = NULL;
    if (magic != SPSC_MAGIC || version != SPSC_VERSION || flags != 0)
        bad = "bad ring magic, version or flags (a variant this SPSC code cannot serve)";
    else if (cap < SPSC_MIN_CAPACITY || (cap & (cap - 1)) || cap > (1ULL << 40) || doff != SPSC_HEADER_SIZE ||
             (uint64_t)(self->view.len - offset) < SPSC_HEADER_SIZE + cap)
        bad = "the ring capacity is not a power of two >= 64 that fits the buffer";
    else if (head - tail > cap || (head & 7) || (tail & 7))
        bad = "the ring cursors are out of range";
    if (bad) {
        PyErr_SetString(PyExc_ValueError, bad);
        PyBuffer_Release(&self->view);
        return -1;
    }
    self->has_view = 1;
    self->base = base;
    self->data = base + SPSC_HEADER_SIZE;
    self->cap = cap;
    self->mask = cap - 1;
    uint64_t most = cap / 2 - REC_HEADER; /* a record of up to cap/2 bytes always fits an empty ring */
    self->limit = limit < 0 || (uint64_t)limit > most ? most : (uint64_t)limit;
    if (!producer && limit >= 0)
        self->limit = (uint64_t)limit < UINT32_MAX ? (uint64_t)limit : UINT32_MAX;
    self->head_p = (uint64_t *)(base + OFF_HEAD);
    self->tail_p = (uint64_t *)(base + OFF_TAIL);
    self->pclosed_p = (uint32_t *)(base + OFF_PRODUCER_CLOSED);
    self->cclosed_p = (uint32_t *)(base + OFF_CONSUMER_CLOSED);
    self->cwait_p = (uint32_t *)(base + OFF_CONSUMER_WAITING);
    self->pwait_p = (uint32_t *)(base + OFF_PRODUCER_WAITING);
    self->producer = producer;
    self->spin_ns = spin_ns;
    self->spin_cur = spin_ns;
    self->pos = producer ? head : tail;
    self->seen = producer ? tail : head;
    return 0;
}

static void SpscPort_dealloc(SpscPort *self)
{
    Py_CLEAR(self->partner);
    if (self->has_view)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int get_src(PyObject *data, Py_buffer *v, const char **src, Py_ssize_t *n)
{
    if (PyBytes_CheckExact(data)) {
        *src = PyBytes_AS_STRING(data);
        *n = PyBytes_GET_SIZE(data);
        v->obj = NULL;
        return 0;
    }
    if (PyObject_GetBuffer(data, v, PyBUF_SIMPLE) < 0)
        return -1;
    *src = v->buf;
    *n = v->len;
    return 0;
}

static int send_args(PyObject *const *args, Py_ssize_t nargs, const char *name, int *sid)
{
    *sid = 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "%s(data, sid=0) takes 1 or 2 arguments", name);
        return -1;
    }
    if (nargs == 2) {
        long s = PyLong_AsLong(args[1]);
        if (s == -1 && PyErr_Occurred())
            return -1;
        if (s < 0 || s > 255) {
            PyErr_SetString(PyExc_ValueError, "sid is a serializer id 0-255");
            return -1;
        }
        *sid = (int)s;
    }
    return 0;
}

static PyObject *SpscPort_try_send(SpscPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    int sid;
    Py_buffer v;
    const char *src;
    Py_ssize_t n;
    if (send_args(args, nargs, "try_send", &sid) < 0)
        return NULL;
    if (get_src(args[0], &v, &src, &n) < 0) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    int rc = spsc_push(self, sid, src, (uint64_t)n);
    if (v.obj)
        PyBuffer_Release(&v);
    return PyBool_FromLong(rc == 0);
}

static PyObject *SpscPort_send(SpscPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    int sid;
    Py_buffer v;
    const char *src;
    Py_ssize_t n;
    if (send_args(args, nargs, "send", &sid) < 0 || get_src(args[0], &v, &src, &n) < 0)
        return NULL;
    int rc = spsc_push(self, sid, src, (uint64_t)n);
    if (v.obj)
        PyBuffer_Release(&v);
    return PyLong_FromLong(rc);
}

/* ring_spin's check for try_recv: a record is pending, or the producer is gone (the caller looks). */
static int spsc_spin_check(void *ctx)
{
    SpscPort *r = ctx;
    return !spsc_empty(r) || spsc_other_closed(r);
}

/* Spin (without the GIL) until a record is pending or `ns` pass; 1 if one is. */
static int spin_for(SpscPort *r, long long ns)
{
    int got;
    r->inflight++;
    Py_BEGIN_ALLOW_THREADS
    got = ring_spin(spsc_spin_check, r, ns, 0);
    Py_END_ALLOW_THREADS
    r->inflight--;
    spsc_release_if_done(r);
    return got;
}

/* The fast path's next record: spsc_next_record, spinning (GIL released, the adaptive budget) when
 * the ring is empty.  A vain spin makes the general path's next wait sleep at once. */
int spsc_next_or_spin(SpscPort *self, char **rec, uint64_t *n, uint64_t *total)
{
    if (spsc_consumer_gate(self) < 0)
        return -EBADF;
    int rc = spsc_next_record(self, rec, n, total);
    if (rc == -EAGAIN && self->spin_ns != 0 && !spsc_other_closed(self)) {
        long long ns = self->spin_ns < 0 || self->spin_cur > SPIN_ADAPT_MAX_NS ? SPIN_ADAPT_MAX_NS : self->spin_cur;
        self->wait_t0 = ring_now_ns();
        if (spin_for(self, ns) && spsc_consumer_gate(self) == 0)
            rc = spsc_next_record(self, rec, n, total);
        self->spun = rc == -EAGAIN && self->spin_ns >= 0; /* the general path goes straight to sleep */
    }
    return rc;
}

/* Copy the n payload bytes of the record at rec to dst, without the GIL from GIL_FREE_COPY bytes on
 * (the port busy meanwhile); -1 when the port was closed during that copy (then nothing may be
 * consumed: the general path raises HandleClosed), else 0. */
static int copy_payload(SpscPort *self, char *dst, const char *rec, uint64_t n)
{
    if (n < GIL_FREE_COPY) {
        memcpy(dst, rec + REC_HEADER, n);
        return 0;
    }
    self->busy = 1;
    self->inflight++;
    Py_BEGIN_ALLOW_THREADS
    memcpy(dst, rec + REC_HEADER, n);
    Py_END_ALLOW_THREADS
    self->inflight--;
    self->busy = 0;
    if (self->closed) {
        spsc_release_if_done(self);
        return -1;
    }
    return 0;
}

static PyObject *SpscPort_try_recv(SpscPort *self, PyObject *unused)
{
    (void)unused;
    char *rec;
    uint64_t n, total;
    int rc = spsc_next_or_spin(self, &rec, &n, &total);
    if (rc < 0 || n > self->limit)
        Py_RETURN_NONE;
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (b == NULL)
        return NULL;
    if (copy_payload(self, PyBytes_AS_STRING(b), rec, n) < 0) {
        Py_DECREF(b);
        Py_RETURN_NONE;
    }
    spsc_consume(self, total);
    return b;
}

/* recv_bytes_into's fast path: copy the next record's payload straight into the caller's buffer and
 * consume it; its length, or None (nothing taken) for anything the general path must do: an empty
 * ring after the spin, the end of the stream or an error, a record over the limit (MessageTooLarge),
 * one the buffer cannot hold (BufferTooSmall keeps it whole), or arguments it must refuse. */
static PyObject *SpscPort_try_recv_into(SpscPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer out;
    char *dst, *rec;
    Py_ssize_t room;
    uint64_t n, total;
    if (ring_recv_into_args(args, nargs, &out, &dst, &room) != 0)
        Py_RETURN_NONE;
    int rc = spsc_next_or_spin(self, &rec, &n, &total);
    if (rc < 0 || n > self->limit || n > (uint64_t)room) {
        PyBuffer_Release(&out);
        Py_RETURN_NONE;
    }
    if (copy_payload(self, dst, rec, n) < 0) {
        PyBuffer_Release(&out);
        Py_RETURN_NONE;
    }
    spsc_consume(self, total);
    PyBuffer_Release(&out);
    return PyLong_FromUnsignedLongLong(n);
}

/* Batches: many records per call, one cursor publication and at most one wake-up per batch. */

static PyObject *SpscPort_try_send_many(SpscPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    int sid;
    if (send_args(args, nargs, "try_send_many", &sid) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(args[0], "try_send_many() takes a sequence of bytes-like objects");
    if (seq == NULL)
        return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq), got = 0;
    const char **srcs = PyMem_Malloc((size_t)(k ? k : 1) * sizeof *srcs);
    uint64_t *lens = PyMem_Malloc((size_t)(k ? k : 1) * sizeof *lens);
    Py_buffer *views = PyMem_Malloc((size_t)(k ? k : 1) * sizeof *views);
    long long rc = 0;
    if (srcs == NULL || lens == NULL || views == NULL) {
        PyErr_NoMemory();
        rc = RING_PY_ERROR;
    }
    /* Only whole messages the fast path can take: bytes-like, small enough to copy with the GIL held. */
    for (; rc == 0 && got < k; got++) {
        Py_ssize_t n;
        if (get_src(PySequence_Fast_GET_ITEM(seq, got), &views[got], &srcs[got], &n) < 0) {
            PyErr_Clear();
            break;
        }
        lens[got] = (uint64_t)n;
        if (lens[got] >= GIL_FREE_COPY) {
            if (views[got].obj)
                PyBuffer_Release(&views[got]);
            break;
        }
    }
    if (rc == 0)
        rc = spsc_push_many(self, sid, srcs, lens, got);
    for (Py_ssize_t i = 0; views != NULL && i < got; i++)
        if (views[i].obj)
            PyBuffer_Release(&views[i]);
    PyMem_Free(srcs);
    PyMem_Free(lens);
    PyMem_Free(views);
    Py_DECREF(seq);
    if (rc == RING_PY_ERROR)
        return NULL;
    return PyLong_FromLongLong(rc < 0 ? 0 : rc);
}

static PyObject *SpscPort_try_recv_many(SpscPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long most, sid;
    if (ring_recv_many_args(args, nargs, &most, &sid) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    char *rec;
    uint64_t n, total, taken = 0;
    int rc = most > 0 ? spsc_next_or_spin(self, &rec, &n, &total) : -EAGAIN;
    /* Ordinary records within the limit and of the wanted serializer; anything else ends the batch
     * and is left to the general path. */
    while (rc == 0 && n <= self->limit && n < GIL_FREE_COPY && (sid < 0 || (unsigned char)rec[1] == sid)) {
        PyObject *b = PyBytes_FromStringAndSize(rec + REC_HEADER, (Py_ssize_t)n);
        if (b == NULL || PyList_Append(out, b) < 0) { /* nothing taken: the records stay */
            Py_XDECREF(b);
            Py_CLEAR(out);
            self->pos -= taken;
            taken = 0;
            break;
        }
        Py_DECREF(b);
        self->pos += total; /* private until the batch is published below */
        taken += total;
        if (PyList_GET_SIZE(out) >= most)
            break;
        rc = spsc_next_record(self, &rec, &n, &total);
    }
    if (taken) {
        self->pos -= taken;
        spsc_consume(self, taken);
    }
    return out;
}

/* The zero-copy verbs, shared by the methods below and by lend.c's context managers. */


Py_ssize_t spsc_borrow(SpscPort *self, char *rec, uint64_t total)
{
    self->busy = self->borrowed = 1;
    self->borrow_total = total;
    return rec + REC_HEADER - (char *)self->view.buf;
}

int spsc_consume_borrowed(SpscPort *self)
{
    if (!self->borrowed)
        return -EINVAL;
    self->busy = self->borrowed = 0;
    if (self->closed)
        return -EBADF;
    spsc_consume(self, self->borrow_total);
    return 0;
}

int spsc_loan(SpscPort *self, uint64_t n, Py_ssize_t *off)
{
    uint64_t pad, adv;
    int rc = spsc_producer_gate(self, n);
    if (rc == 0)
        rc = spsc_place(self, n, &pad, &adv);
    if (rc < 0)
        return rc;
    self->busy = self->loaned = 1;
    self->loan_pad = pad;
    self->loan_len = n;
    self->loan_off = pad ? 0 : (self->pos & self->mask);
    *off = self->data + self->loan_off + REC_HEADER - (char *)self->view.buf;
    return 0;
}

int spsc_commit_loan(SpscPort *self, int sid)
{
    if (!self->loaned)
        return -EINVAL;
    self->busy = self->loaned = 0;
    if (self->closed)
        return -EBADF;
    if (self->loan_pad)
        spsc_put_header(self->data + (self->pos & self->mask), 0, REC_FLAG_WRAP, 0);
    spsc_put_header(self->data + self->loan_off, sid & 255, 0, (uint32_t)self->loan_len);
    spsc_publish(self, self->loan_pad + rec_size(self->loan_len));
    return 0;
}

int spsc_give_back(SpscPort *self, int *lent)
{
    if (!*lent)
        return -EINVAL;
    self->busy = *lent = 0;
    return 0;
}

/* lend.c's view of these verbs (see LendOps in native.h). */
static int spsc_ops_producer(PyObject *o) { return ((SpscPort *)o)->producer; }

static int spsc_ops_loan(PyObject *o, uint64_t n, char **payload)
{
    SpscPort *p = (SpscPort *)o;
    Py_ssize_t off;
    int rc = p->closed ? -EBADF : spsc_loan(p, n, &off);
    if (rc == 0)
        *payload = (char *)p->view.buf + off;
    return rc;
}

static int spsc_ops_commit(PyObject *o, int sid) { return spsc_commit_loan((SpscPort *)o, sid); }
static int spsc_ops_give_back_loan(PyObject *o) { return spsc_give_back((SpscPort *)o, &((SpscPort *)o)->loaned); }

static int spsc_ops_borrow(PyObject *o, char **payload, uint64_t *n)
{
    SpscPort *p = (SpscPort *)o;
    char *rec;
    uint64_t total;
    if (p->closed)
        return -EBADF;
    int rc = spsc_next_or_spin(p, &rec, n, &total);
    if (rc < 0)
        return rc;
    if (*n > p->limit)
        return -EXDEV; /* the general path discards it and raises MessageTooLarge */
    *payload = (char *)p->view.buf + spsc_borrow(p, rec, total);
    return 0;
}

static int spsc_ops_consume(PyObject *o) { return spsc_consume_borrowed((SpscPort *)o); }
static int spsc_ops_give_back_borrowed(PyObject *o) { return spsc_give_back((SpscPort *)o, &((SpscPort *)o)->borrowed); }

static int spsc_ops_pin(PyObject *o, Py_buffer *pin)
{
    SpscPort *p = (SpscPort *)o;
    if (!p->has_view) {
        PyErr_SetString(PyExc_BufferError, "the ring port is closed");
        return -1;
    }
    return PyObject_GetBuffer(p->view.obj, pin, PyBUF_SIMPLE);
}

const LendOps ipc_spsc_lend_ops = {
    &SpscPort_Type, spsc_ops_producer, spsc_ops_loan, spsc_ops_commit, spsc_ops_give_back_loan,
    spsc_ops_borrow, spsc_ops_consume, spsc_ops_give_back_borrowed, spsc_ops_pin,
};

static PyObject *SpscPort_peek(SpscPort *self, PyObject *unused)
{
    (void)unused;
    char *rec;
    uint64_t n, total;
    int rc = spsc_consumer_gate(self);
    if (rc == 0)
        rc = spsc_next_record(self, &rec, &n, &total);
    if (rc < 0)
        return PyLong_FromLong(rc);
    Py_ssize_t off = spsc_borrow(self, rec, total);
    return Py_BuildValue("(nKi)", off, (unsigned long long)n, (int)(unsigned char)rec[1]);
}

static PyObject *SpscPort_consume(SpscPort *self, PyObject *unused)
{
    (void)unused;
    return PyLong_FromLong(spsc_consume_borrowed(self));
}

static PyObject *SpscPort_unpeek(SpscPort *self, PyObject *unused)
{
    (void)unused;
    return PyLong_FromLong(spsc_give_back(self, &self->borrowed));
}

static PyObject *SpscPort_reserve(SpscPort *self, PyObject *arg)
{
    uint64_t n;
    Py_ssize_t off;
    int ok = ipc_size_arg(arg, &n), rc = ok > 0 ? spsc_loan(self, n, &off) : -EINVAL;
    if (ok < 0)
        return NULL;
    return rc < 0 ? PyLong_FromLong(rc) : PyLong_FromSsize_t(off);
}

static PyObject *SpscPort_commit(SpscPort *self, PyObject *arg)
{
    long sid = PyLong_AsLong(arg);
    if (sid == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(spsc_commit_loan(self, (int)sid));
}

static PyObject *SpscPort_abort(SpscPort *self, PyObject *unused)
{
    (void)unused;
    return PyLong_FromLong(spsc_give_back(self, &self->loaned));
}

/* One wait's arguments, for ring_wait_loop. */
struct spsc_wait {
    SpscPort *r;
    uint64_t n;
    int has_deadline;
    long long deadline, spin_until;
};

static long long spsc_wait_slice_of(void *ctx)
{
    struct spsc_wait *w = ctx;
    return spsc_wait_slice(w->r, w->n, w->has_deadline, w->deadline, w->spin_until);
}

static PyObject *SpscPort_wait(SpscPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct timespec ts = {0, 0};
    int has_timeout;
    long long n = 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "wait(timeout, n=0) takes 1 or 2 arguments");
        return NULL;
    }
    if (ipc_timeout_arg(args[0], &ts, &has_timeout) < 0)
        return NULL;
    if (nargs == 2 && (n = PyLong_AsLongLong(args[1])) == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || (self->producer && (uint64_t)n > self->cap / 2 - REC_HEADER))
        return PyLong_FromLong(-EMSGSIZE);
    if (self->closed || !self->has_view)
        return PyLong_FromLong(-EBADF);
    long long start = ring_now_ns();
    long long deadline = start + (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    long long spin_until = self->spun ? start : start + self->spin_cur;
    long long began = self->spun ? self->wait_t0 : start;
    if (has_timeout && deadline < spin_until)
        spin_until = deadline;
    self->spun = 0;
    struct spsc_wait w = {self, (uint64_t)n, has_timeout, deadline, spin_until};
    self->inflight++;
    long long rc = ring_wait_loop(spsc_wait_slice_of, &w);
    if (rc == RING_PY_ERROR) {
        self->inflight--;
        spsc_release_if_done(self);
        return NULL;
    }
    if (rc == 0 && self->spin_ns >= 0) {
        self->spin_cur = ring_adapt_spin(self->spin_ns, ring_now_ns() - began);
    }
    self->inflight--;
    if (!self->closed && !self->producer && rc != 0)
        spsc_level_sync(self);
    spsc_release_if_done(self);
    return PyLong_FromLongLong(rc);
}

static PyObject *SpscPort_pair(SpscPort *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &SpscPort_Type) || !self->producer || ((SpscPort *)arg)->producer) {
        PyErr_SetString(PyExc_TypeError, "pair(consumer): a producer port pairs with a consumer port");
        return NULL;
    }
    Py_XSETREF(self->partner, Py_NewRef(arg));
    self->reply_mark = ((SpscPort *)arg)->consumed;
    Py_RETURN_NONE;
}

static PyObject *SpscPort_share(SpscPort *self, PyObject *args)
{
    Py_ssize_t off;
    unsigned long long ident = 0;
    if (!PyArg_ParseTuple(args, "n|K:share", &off, &ident))
        return NULL;
    if (!self->has_view || self->closed) {
        PyErr_SetString(PyExc_ValueError, "the port is closed");
        return NULL;
    }
    char *head = ipc_buffer_at(&self->view, off, SPSC_HEADER_SIZE);
    if (head == NULL)
        return NULL;
    uint64_t magic, size;
    memcpy(&magic, head + SHARED_OFF_MAGIC, 8);
    memcpy(&size, head + SHARED_OFF_SIZE, 8);
    if (((uintptr_t)head & 4095) || magic != SHARED_MAGIC || size < REC_HEADER || (size & 7) ||
        size > (uint64_t)(self->view.len - off) - SPSC_HEADER_SIZE || (self->producer && (ident == 0 || ident > UINT32_MAX))) {
        PyErr_SetString(PyExc_ValueError, "not a shared region (magic, size, alignment) or a bad producer id");
        return NULL;
    }
    self->shared = head + SPSC_HEADER_SIZE;
    self->shared_cap = size;
    self->owner_p = (uint32_t *)(head + SHARED_OFF_OWNER);
    self->shared_id = (uint32_t)ident;
    Py_RETURN_NONE;
}

static PyObject *SpscPort_set_level(SpscPort *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    if (self->closed || !self->has_view || self->producer || self->wait_fd < 0)
        return PyLong_FromLong(self->closed || !self->has_view ? -EBADF : -EINVAL);
    if (on && !self->level) {
        self->level = 1;
        spsc_level_resync(self);
    }
    self->level = on;
    return PyLong_FromLong(0);
}

static PyObject *SpscPort_shutdown(SpscPort *self, PyObject *unused)
{
    (void)unused;
    if (self->closed || !self->has_view)
        return PyLong_FromLong(-EBADF);
    __atomic_store_n(self->producer ? self->pclosed_p : self->cclosed_p, 1, __ATOMIC_SEQ_CST);
    spsc_efd_signal(self->signal_fd);
    return PyLong_FromLong(0);
}

static PyObject *SpscPort_close(SpscPort *self, PyObject *unused)
{
    (void)unused;
    int wake = !self->closed && self->inflight;
    __atomic_store_n(&self->closed, 1, __ATOMIC_RELAXED);
    if (wake)
        spsc_efd_signal(self->wait_fd); /* a thread of ours sleeping in wait() wakes, sees closed: -EBADF */
    spsc_release_if_done(self);
    Py_RETURN_NONE;
}

static PyObject *SpscPort_pending(SpscPort *self, void *unused)
{
    (void)unused;
    if (!self->has_view)
        return PyLong_FromLong(0);
    return PyLong_FromUnsignedLongLong(ring_load_acquire(self->head_p) - ring_load_acquire(self->tail_p));
}

static PyObject *SpscPort_get_u64(SpscPort *self, void *which)
{
    uintptr_t w = (uintptr_t)which;
    return PyLong_FromUnsignedLongLong(w == 0 ? self->cap : w == 1 ? self->limit : self->pos);
}

static PyObject *SpscPort_closed(SpscPort *self, void *unused)
{
    (void)unused;
    return PyBool_FromLong(self->closed);
}

static PyMethodDef SpscPort_methods[] = {
    {"try_send", (PyCFunction)(void (*)(void))SpscPort_try_send, METH_FASTCALL,
     "try_send(data, sid=0) -> bool: push one record now if possible (the channel's fast path)."},
    {"send", (PyCFunction)(void (*)(void))SpscPort_send, METH_FASTCALL,
     "send(data, sid=0) -> int: push one record; 0, -EAGAIN (full), -EMSGSIZE, -ESHUTDOWN (the "
     "consumer closed), -EBUSY (a loan or copy in progress), -EPROTO (corrupt cursor), -EBADF."},
    {"try_recv", (PyCFunction)SpscPort_try_recv, METH_NOARGS,
     "try_recv() -> bytes | None: pop one record's payload, spinning briefly on an empty ring."},
    {"try_recv_into", (PyCFunction)(void (*)(void))SpscPort_try_recv_into, METH_FASTCALL,
     "try_recv_into(buffer, offset=0) -> int | None: copy one record's payload into buffer at offset "
     "and consume it; None (nothing taken) when the general path must act (empty, too large, too small "
     "a buffer, the end, bad arguments)."},
    {"try_send_many", (PyCFunction)(void (*)(void))SpscPort_try_send_many, METH_FASTCALL,
     "try_send_many(items, sid=0) -> int: push the longest prefix of the sequence of bytes-like items "
     "that fits now (each a whole record; one publication, at most one wake-up); how many were pushed. "
     "It stops before an item it cannot take at once (full ring, too large, not bytes-like, >= 256 KiB)."},
    {"try_recv_many", (PyCFunction)(void (*)(void))SpscPort_try_recv_many, METH_FASTCALL,
     "try_recv_many(max_messages, sid=-1) -> list[bytes]: pop up to max_messages pending payloads "
     "(spinning briefly on an empty ring; one publication of tail, at most one wake-up).  It stops "
     "before a record of another serializer (sid >= 0), over the limit, or >= 256 KiB."},
    {"peek", (PyCFunction)SpscPort_peek, METH_NOARGS,
     "peek() -> (offset, length, sid) | int: borrow the next record (offset of its payload in the "
     "buffer) until spsc_consume() or unpeek(); -EAGAIN (empty), -EBUSY, -EPROTO, -EBADF."},
    {"consume", (PyCFunction)SpscPort_consume, METH_NOARGS, "spsc_consume() -> int: release and drop the borrowed record."},
    {"unpeek", (PyCFunction)SpscPort_unpeek, METH_NOARGS, "unpeek() -> int: release the borrowed record, keeping it."},
    {"reserve", (PyCFunction)SpscPort_reserve, METH_O,
     "reserve(n) -> int: loan n bytes for a record (offset of its payload in the buffer) until "
     "commit() or abort(); -EAGAIN (full), -EMSGSIZE, -EBUSY, -ESHUTDOWN, -EPROTO, -EBADF."},
    {"commit", (PyCFunction)SpscPort_commit, METH_O, "commit(sid) -> int: publish the loaned record."},
    {"abort", (PyCFunction)SpscPort_abort, METH_NOARGS, "abort() -> int: drop the loan unpublished."},
    {"wait", (PyCFunction)(void (*)(void))SpscPort_wait, METH_FASTCALL,
     "wait(timeout, n=0) -> int: until a record is pending (consumer) or n payload bytes fit "
     "(producer): spin spin_ns, then sleep on wait_fd.  0, -ETIMEDOUT, -ESHUTDOWN (the other side "
     "closed), -EPIPE (a watch fd fired: the other side died), -EBADF."},
    {"pair", (PyCFunction)SpscPort_pair, METH_O,
     "pair(consumer): producer: the consumer port of the same connection, whose receives mark this side's "
     "next large send as a reply, which then goes to the front of an empty ring (see spsc_place)."},
    {"share", (PyCFunction)SpscPort_share, METH_VARARGS,
     "share(offset, ident=0): use the shared region whose header page is at offset in the buffer: a "
     "producer claims it with ident (> 0) for a large reply (see spsc_push), a consumer reads and frees "
     "it.  ValueError for a region that is not one."},
    {"set_level", (PyCFunction)SpscPort_set_level, METH_O,
     "set_level(on) -> int: consumer: keep wait_fd readable exactly while a record is pending."},
    {"shutdown", (PyCFunction)SpscPort_shutdown, METH_NOARGS,
     "shutdown() -> int: mark this side closed in the header and wake the other side."},
    {"close", (PyCFunction)SpscPort_close, METH_NOARGS, "close(): release the buffer (idempotent)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef SpscPort_getset[] = {
    {"capacity", (getter)SpscPort_get_u64, NULL, "data area bytes", (void *)0},
    {"limit", (getter)SpscPort_get_u64, NULL, "largest payload sent or received by the fast path", (void *)1},
    {"position", (getter)SpscPort_get_u64, NULL, "this side's cursor", (void *)2},
    {"pending", (getter)SpscPort_pending, NULL, "bytes between the cursors", NULL},
    {"closed", (getter)SpscPort_closed, NULL, "True after close()", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject SpscPort_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipcraft._native.SpscPort",
    .tp_basicsize = sizeof(SpscPort),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SpscPort(buf, offset, producer, signal_fd=-1, wait_fd=-1, watch_fds=(), spin_ns=100000, "
              "limit=-1): one side of a single-producer single-consumer ring in buf at offset.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SpscPort_init,
    .tp_dealloc = (destructor)SpscPort_dealloc,
    .tp_methods = SpscPort_methods,
    .tp_getset = SpscPort_getset,
};

static PyObject *spsc_layout(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    static const struct { const char *name; unsigned long long value; } k[] = {
        {"MAGIC", SPSC_MAGIC}, {"VERSION", SPSC_VERSION}, {"HEADER_SIZE", SPSC_HEADER_SIZE},
        {"MIN_CAPACITY", SPSC_MIN_CAPACITY}, {"OFF_MAGIC", OFF_MAGIC}, {"OFF_VERSION", OFF_VERSION},
        {"OFF_FLAGS", OFF_FLAGS}, {"OFF_CAPACITY", OFF_CAPACITY}, {"OFF_DATA", OFF_DATA},
        {"OFF_CREATOR_PID", OFF_CREATOR_PID}, {"OFF_OPENER_PID", OFF_OPENER_PID}, {"OFF_HEAD", OFF_HEAD},
        {"OFF_PRODUCER_CLOSED", OFF_PRODUCER_CLOSED}, {"OFF_TAIL", OFF_TAIL},
        {"OFF_CONSUMER_CLOSED", OFF_CONSUMER_CLOSED}, {"OFF_CONSUMER_WAITING", OFF_CONSUMER_WAITING},
        {"OFF_PRODUCER_WAITING", OFF_PRODUCER_WAITING}, {"REC_HEADER", REC_HEADER},
        {"REC_MAGIC", REC_MAGIC}, {"REC_FLAG_WRAP", REC_FLAG_WRAP}, {"REC_FLAG_SHARED", REC_FLAG_SHARED},
        {"SHARED_MAGIC", SHARED_MAGIC}, {"SHARED_OFF_MAGIC", SHARED_OFF_MAGIC}, {"SHARED_OFF_SIZE", SHARED_OFF_SIZE},
        {"SHARED_OFF_OWNER", SHARED_OFF_OWNER},
    };
    PyObject *d = PyDict_New();
    for (size_t i = 0; d != NULL && i < sizeof k / sizeof k[0]; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(k[i].value);
        if (v == NULL || PyDict_SetItemString(d, k[i].name, v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

static PyMethodDef spsc_methods[] = {
    {"spsc_layout", spsc_layout, METH_NOARGS,
     "spsc_layout() -> dict: the ring layout constants compiled into this module (see _rings/spsc.py)."},
    {NULL, NULL, 0, NULL},
};

int ipc_spsc_register(PyObject *m)
{
    if (PyModule_AddFunctions(m, spsc_methods) < 0)
        return -1;
    return ipc_add_type(m, &SpscPort_Type, "SpscPort");
}
