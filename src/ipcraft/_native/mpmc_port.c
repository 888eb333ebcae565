/* The MpmcPort type: Python's handle on a ring:// or file:// queue (the algorithms are in mpmc.c).
 *
 * Argument parsing, buffer exports, the general methods (send, recv_into, wait: 0/count or -errno)
 * and the channel's fast path (try_send, try_recv: True/bytes when done at once, else False/None).
 */
#include "mpmc.h"
#include <errno.h>
#include <string.h>
#include <unistd.h>

/* ---- the Python type ----------------------------------------------------------------------- */

static int MpmcPort_init(MpmcPort *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buf", "spin_ns", "sync", "limit", NULL};
    PyObject *buf;
    long long spin_ns = 100000, limit = -1;
    int sync = 0;
    if (self->has_view || self->closed) {
        PyErr_SetString(PyExc_TypeError, "MpmcPort is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|LpL:MpmcPort", kwlist, &buf, &spin_ns, &sync, &limit))
        return -1;
    if (PyObject_GetBuffer(buf, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    char *base = ipc_buffer_at(&self->view, 0, MPMC_HEADER_SIZE);
    long pagesize = sysconf(_SC_PAGESIZE);
    const char *bad = NULL;
    uint64_t magic, cap, doff, head, tail;
    uint32_t version;
    if (base == NULL) {
        PyBuffer_Release(&self->view);
        return -1;
    }
    memcpy(&magic, base + OFF_MAGIC, 8);
    memcpy(&version, base + OFF_VERSION, 4);
    memcpy(&cap, base + OFF_CAPACITY, 8);
    memcpy(&doff, base + OFF_DATA, 8);
    head = ring_load_acquire((uint64_t *)(base + OFF_HEAD));
    tail = ring_load_acquire((uint64_t *)(base + OFF_TAIL));
    if (((uintptr_t)base & (uintptr_t)(pagesize - 1)) != 0)
        bad = "the ring must start page aligned";
    else if (magic != MPMC_MAGIC || version != MPMC_VERSION)
        bad = "bad ring magic or version";
    else if (cap < MPMC_MIN_CAPACITY || (cap & (cap - 1)) || doff != MPMC_HEADER_SIZE ||
             (uint64_t)self->view.len < MPMC_HEADER_SIZE + cap)
        bad = "the ring capacity is not a power of two >= 4096 that fits the buffer";
    else if (!mpmc_cursors_ok(cap, head, tail))
        bad = "the ring cursors are out of range";
    if (bad) {
        PyErr_SetString(PyExc_ValueError, bad);
        PyBuffer_Release(&self->view);
        return -1;
    }
    self->has_view = 1;
    self->mirrored = ipc_mirror_of(buf, base, MPMC_HEADER_SIZE, cap);
    self->base = base;
    self->data = base + MPMC_HEADER_SIZE;
    self->cap = cap;
    self->mask = cap - 1;
    self->head_p = (uint64_t *)(base + OFF_HEAD);
    self->tail_p = (uint64_t *)(base + OFF_TAIL);
    self->plock = (pthread_mutex_t *)(base + OFF_PRODUCER_LOCK);
    self->clock_ = (pthread_mutex_t *)(base + OFF_CONSUMER_LOCK);
    self->csleep_p = (uint32_t *)(base + OFF_CONSUMERS_SLEEPING);
    self->psleep_p = (uint32_t *)(base + OFF_PRODUCERS_SLEEPING);
    self->fdarm_p = (uint64_t *)(base + OFF_FD_ARMED);
    self->spin_ns = spin_ns;
    self->spin_cur = spin_ns;
    self->sync = sync;
    self->pagesize = pagesize;
    self->seen_head = head;
    self->seen_tail = tail;
    uint64_t most = cap - 2 * REC_HEADER; /* a payload behind its frame header in a record */
    self->limit = limit < 0 || (uint64_t)limit > most ? most : (uint64_t)limit;
    return 0;
}

static void MpmcPort_dealloc(MpmcPort *self)
{
    self->inflight = 0;
    mpmc_release_if_done(self, 1);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The arguments count and the port is open; else -1 with TypeError/ValueError set. */
static int usable(MpmcPort *self, Py_ssize_t nargs, Py_ssize_t want, const char *usage)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd argument(s)", usage, want);
        return -1;
    }
    if (!self->has_view || self->closed) {
        PyErr_SetString(PyExc_ValueError, "the MpmcPort is closed");
        return -1;
    }
    return 0;
}

static PyObject *result_of(long long rc)
{
    if (rc == RING_PY_ERROR)
        return NULL;
    return PyLong_FromLongLong(rc);
}

static PyObject *MpmcPort_send(MpmcPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (usable(self, nargs, 2, "send(parts, timeout)") < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(args[0], "parts must be a sequence of bytes-like objects");
    if (seq == NULL)
        return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    if (k > MAX_PARTS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "at most %d parts", MAX_PARTS);
        return NULL;
    }
    Py_buffer views[MAX_PARTS];
    Parts parts = {.nparts = 0, .total = 0};
    long long rc = 0;
    for (Py_ssize_t i = 0; i < k; i++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &views[i], PyBUF_SIMPLE) < 0) {
            rc = RING_PY_ERROR;
            break;
        }
        parts.src[i] = views[i].buf;
        parts.len[i] = (uint64_t)views[i].len;
        parts.total += parts.len[i];
        parts.nparts++;
    }
    if (rc == 0) {
        if (parts.total > UINT32_MAX || rec_size(parts.total) > self->cap)
            rc = -EMSGSIZE;
        else if ((rc = mpmc_operate(self, OP_SEND, &parts, NULL, 0, args[1])) == 0)
            rc = __atomic_load_n(self->fdarm_p, __ATOMIC_RELAXED) != 0; /* 1: wake the fd waiters */
    }
    for (int i = 0; i < parts.nparts; i++)
        PyBuffer_Release(&views[i]);
    Py_DECREF(seq);
    return result_of(rc);
}

static PyObject *MpmcPort_recv_into(MpmcPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (usable(self, nargs, 2, "recv_into(out, timeout)") < 0)
        return NULL;
    Py_buffer out;
    if (PyObject_GetBuffer(args[0], &out, PyBUF_WRITABLE) < 0)
        return NULL;
    long long rc = mpmc_operate(self, OP_RECV, NULL, out.buf, (uint64_t)out.len, args[1]);
    PyBuffer_Release(&out);
    return result_of(rc);
}

static PyObject *MpmcPort_wait(MpmcPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (usable(self, nargs, 1, "wait(timeout)") < 0)
        return NULL;
    return result_of(mpmc_operate(self, OP_WAIT, NULL, NULL, 0, args[0]));
}

/* ---- the channel's fast path: complete the common case at once, else leave it to the general path */

/* Describe the buffer v as one fast-path message: an ipcraft frame header (in hdr) then the payload.
 * 0, or -1 when the fast path does not take it (over the limit, or FAST_SEND_MAX or more: the general
 * path copies such a payload without the GIL).  Up to 256 KiB the copy under the GIL (~10 us) costs
 * less than the general path's Python and its wait machinery. */
static int frame_parts(MpmcPort *self, long sid, const Py_buffer *v, unsigned char hdr[8], Parts *parts)
{
    uint64_t n = (uint64_t)v->len;
    uint32_t n32 = (uint32_t)n;
    if (n > self->limit || n >= FAST_SEND_MAX)
        return -1;
    hdr[0] = FRAME_MAGIC;
    hdr[1] = (unsigned char)sid;
    hdr[2] = hdr[3] = 0;
    memcpy(hdr + 4, &n32, 4);
    *parts = (Parts){.src = {(const char *)hdr, v->buf}, .len = {8, n}, .nparts = 2, .total = n + 8};
    return 0;
}

static PyObject *MpmcPort_try_send(MpmcPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    long sid;
    if (ring_sid_arg(args, nargs, "try_send(data, sid=0)", &sid) < 0)
        return NULL;
    Py_buffer v;
    if (!self->has_view || self->closed || PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    unsigned char hdr[8];
    Parts parts;
    int ok = !self->sync && frame_parts(self, sid, &v, hdr, &parts) == 0 && mpmc_lock_try(self, self->plock) == 0 &&
             mpmc_attempt(self, 1, &parts, NULL, 0) == 0;
    PyBuffer_Release(&v);
    return PyBool_FromLong(ok);
}

/* Append the longest prefix of items that fits now, under one hold of the producer lock, and publish
 * it with one store of head (so a consumer, or a crash, sees all of the batch or none of it). */
static PyObject *MpmcPort_try_send_many(MpmcPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    long sid;
    PyObject *seq = ring_send_many_args(args, nargs, &sid);
    if (seq == NULL)
        return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq), done = 0;
    if (k == 0 || !self->has_view || self->closed || self->sync || mpmc_lock_try(self, self->plock) != 0) {
        Py_DECREF(seq);
        return PyLong_FromLong(0);
    }
    uint64_t start = __atomic_load_n(self->head_p, __ATOMIC_RELAXED), head = start;
    for (; done < k; done++) {
        Py_buffer v;
        unsigned char hdr[8];
        Parts parts;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, done), &v, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            break;
        }
        int rc = frame_parts(self, sid, &v, hdr, &parts);
        if (rc == 0)
            rc = mpmc_write_locked(self, &head, &parts);
        PyBuffer_Release(&v);
        if (rc < 0)
            break;
    }
    if (head != start)
        __atomic_store_n(self->head_p, head, __ATOMIC_RELEASE);
    mpmc_unlock(self->plock);
    if (head != start)
        mpmc_wake_consumers(self);
    Py_DECREF(seq);
    return PyLong_FromSsize_t(done);
}

/* ring_spin's check for try_recv: a record is pending (1), or this port was closed meanwhile (-1). */
static int mpmc_spin_check(void *ctx)
{
    MpmcPort *p = ctx;
    if (mpmc_ready(p, 0))
        return 1;
    return __atomic_load_n(&p->closed, __ATOMIC_RELAXED) ? -1 : 0;
}

/* Whether receives may take the fast path (the general path handles sync=true and fd users). */
static int fast_recv_ok(MpmcPort *self)
{
    return self->has_view && !self->closed && !self->sync && !self->fd_user;
}

/* Consumer, holding its lock: the payload length of the ordinary ipcraft frame at `tail` (of
 * serializer sid when sid >= 0, within the limit), with *n the size of its record's body; -1 for
 * anything the general path must see (empty, corrupt, another frame format or serializer, too large). */
static long long ordinary_frame(MpmcPort *self, uint64_t tail, long long sid, long long *n)
{
    uint64_t head;
    unsigned char hdr[8];
    uint32_t len = 0;
    *n = mpmc_peek_at(self, tail, &head);
    if (*n >= 8) {
        memcpy(hdr, self->data + ((tail + REC_HEADER) & self->mask), 8); /* 8-aligned: never split */
        memcpy(&len, hdr + 4, 4);
    }
    if (*n < 8 || hdr[0] != FRAME_MAGIC || hdr[2] || hdr[3] || len != (uint64_t)*n - 8 || len > self->limit ||
        (sid >= 0 && hdr[1] != sid))
        return -1;
    return len;
}

/* Consumer, holding its lock: the payload of the ordinary ipcraft frame at *tail (of serializer sid
 * when sid >= 0) as new bytes, *tail advanced past its record; Py_None (a borrowed reference, nothing
 * taken) for anything the general path must see (see ordinary_frame); NULL with an exception set. */
static PyObject *next_frame(MpmcPort *self, uint64_t *tail, long long sid)
{
    long long n, len = ordinary_frame(self, *tail, sid, &n);
    if (len < 0)
        return Py_None;
    PyObject *b = PyBytes_FromStringAndSize(NULL, len);
    if (b != NULL) {
        mpmc_copy_out(self, *tail + 2 * REC_HEADER, PyBytes_AS_STRING(b), (uint64_t)len);
        *tail += rec_size((uint64_t)n);
    }
    return b;
}

/* Whether a fast-path receive should look now: the port takes fast receives, and a message is pending
 * or came while it spun (GIL released).  A spin in vain makes the general path sleep at once. */
static int fast_recv_ready(MpmcPort *self)
{
    if (!fast_recv_ok(self))
        return 0;
    if (!mpmc_ready(self, 0) && self->spin_ns != 0) {
        /* An empty ring: spin here (a reply often comes within microseconds, and the general path
         * costs more than that in Python); if in vain, the general path sleeps without spinning again. */
        long long ns = self->spin_ns < 0 || self->spin_cur > SPIN_ADAPT_MAX_NS ? SPIN_ADAPT_MAX_NS : self->spin_cur;
        int got;
        self->wait_t0 = ring_now_ns();
        self->inflight++;
        Py_BEGIN_ALLOW_THREADS
        got = ring_spin(mpmc_spin_check, self, ns, 0);
        Py_END_ALLOW_THREADS
        self->inflight--;
        mpmc_release_if_done(self, 0);
        self->spun = !got && self->spin_ns >= 0;
        if (!got || self->closed)
            return 0;
    }
    return 1;
}

/* End a fast-path receive that holds the consumer lock: publish tail once if it moved from start,
 * unlock, and wake sleeping producers. */
static void finish_take(MpmcPort *self, uint64_t start, uint64_t tail)
{
    if (tail != start)
        __atomic_store_n(self->tail_p, tail, __ATOMIC_RELEASE);
    mpmc_unlock(self->clock_);
    if (tail != start)
        mpmc_wake_sleepers(self->psleep_p, self->tail_p);
}

static PyObject *MpmcPort_try_recv(MpmcPort *self, PyObject *unused)
{
    (void)unused;
    if (!fast_recv_ready(self) || mpmc_lock_try(self, self->clock_) != 0)
        Py_RETURN_NONE;
    uint64_t start = __atomic_load_n(self->tail_p, __ATOMIC_RELAXED), tail = start;
    PyObject *b = next_frame(self, &tail, -1);
    finish_take(self, start, tail);
    if (b == Py_None)
        Py_RETURN_NONE;
    return b;
}

/* recv_bytes_into's fast path, holding the consumer lock: copy the next ordinary frame's payload into
 * the caller's buffer (both pieces of a wrapped record) and take it; its length, or None (nothing
 * taken) for anything the general path must do: empty, the lock held elsewhere, a foreign or corrupt
 * frame, over the limit (MessageTooLarge), too small a buffer (BufferTooSmall keeps it whole), closed,
 * sync=true, an fd user, or arguments it must refuse.  Large copies run without the GIL. */
static PyObject *MpmcPort_try_recv_into(MpmcPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer out;
    char *dst;
    Py_ssize_t room;
    if (ring_recv_into_args(args, nargs, &out, &dst, &room) != 0)
        Py_RETURN_NONE;
    if (!fast_recv_ready(self) || mpmc_lock_try(self, self->clock_) != 0) {
        PyBuffer_Release(&out);
        Py_RETURN_NONE;
    }
    uint64_t tail = __atomic_load_n(self->tail_p, __ATOMIC_RELAXED);
    long long n, len = ordinary_frame(self, tail, -1, &n);
    if (len < 0 || len > room) {
        finish_take(self, tail, tail);
        PyBuffer_Release(&out);
        Py_RETURN_NONE;
    }
    if (len >= GIL_FREE_COPY) {
        self->inflight++;
        Py_BEGIN_ALLOW_THREADS
        mpmc_copy_out(self, tail + 2 * REC_HEADER, dst, (uint64_t)len);
        Py_END_ALLOW_THREADS
        self->inflight--;
        if (self->closed) { /* closed meanwhile: nothing taken, the general path raises HandleClosed */
            mpmc_unlock(self->clock_);
            mpmc_release_if_done(self, 0);
            PyBuffer_Release(&out);
            Py_RETURN_NONE;
        }
    } else {
        mpmc_copy_out(self, tail + 2 * REC_HEADER, dst, (uint64_t)len);
    }
    finish_take(self, tail, tail + rec_size((uint64_t)n));
    PyBuffer_Release(&out);
    return PyLong_FromLongLong(len);
}

/* Take up to max_messages ordinary frames under one hold of the consumer lock, publishing tail once. */
static PyObject *MpmcPort_try_recv_many(MpmcPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long most, sid;
    if (ring_recv_many_args(args, nargs, &most, &sid) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL || most <= 0 || !fast_recv_ready(self) || mpmc_lock_try(self, self->clock_) != 0)
        return out;
    uint64_t start = __atomic_load_n(self->tail_p, __ATOMIC_RELAXED), tail = start;
    while (PyList_GET_SIZE(out) < most) {
        PyObject *b = next_frame(self, &tail, sid);
        if (b == Py_None)
            break;
        if (b == NULL || PyList_Append(out, b) < 0) { /* nothing taken: the records stay */
            Py_XDECREF(b);
            Py_CLEAR(out);
            tail = start;
            break;
        }
        Py_DECREF(b);
    }
    finish_take(self, start, tail);
    return out;
}

static PyObject *MpmcPort_pending(MpmcPort *self, PyObject *unused)
{
    if (usable(self, 0, 0, "pending()") < 0)
        return NULL;
    (void)unused;
    return PyLong_FromUnsignedLongLong(ring_load_acquire(self->head_p) - ring_load_acquire(self->tail_p));
}

static PyObject *MpmcPort_close(MpmcPort *self, PyObject *unused)
{
    (void)unused;
    self->closed = 1;
    mpmc_release_if_done(self, 0);
    Py_RETURN_NONE;
}

static PyObject *MpmcPort_get_needed(MpmcPort *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(self->needed);
}

static PyObject *MpmcPort_get_recovered(MpmcPort *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&self->recovered, __ATOMIC_RELAXED));
}

static PyObject *MpmcPort_get_capacity(MpmcPort *self, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(self->cap);
}

/* ---- zero copy (see mpmc.h) ------------------------------------------------------------------ */


/* Whether a zero-copy receive should look now (the fast path's spin on an empty ring included). */
int mpmc_lend_ready(MpmcPort *self)
{
    return fast_recv_ready(self);
}

/* Producer: lock, then place a frame of n payload bytes at head, its payload contiguous in the ring. */
int mpmc_loan(MpmcPort *p, uint64_t n, Py_ssize_t *off, int mirror_ok)
{
    if (!p->has_view || p->closed)
        return -EBADF;
    if (p->loaned || p->borrowed)
        return -EXDEV; /* this handle lends the other side now: a copy does it */
    uint64_t need = rec_size(n + 8);
    if (need > p->cap)
        return -EMSGSIZE;
    if (p->sync || n > UINT32_MAX - 8)
        return -EXDEV;
    int rc = mpmc_lock_try(p, p->plock);
    if (rc != 0)
        return rc > 0 ? -EAGAIN : rc;
    /* tail is read only when the cached one leaves too little room (as mpmc_write_locked does): a
     * read of the line the consumer writes at every message would move it to this CPU and back. */
    uint64_t head = __atomic_load_n(p->head_p, __ATOMIC_RELAXED), tail = p->seen_tail;
    if (!mpmc_cursors_ok(p->cap, head, tail) || head - tail + need > p->cap) {
        tail = ring_load_acquire(p->tail_p);
        p->seen_tail = tail;
    }
    if (!mpmc_cursors_ok(p->cap, head, tail))
        rc = -EPROTO;
    else if (head - tail + need > p->cap)
        rc = -EAGAIN;
    else if (((head + 2 * REC_HEADER) & p->mask) + n > p->cap && !(mirror_ok && p->mirrored))
        rc = -EXDEV; /* the payload would wrap (and there is no mirror to run on into): a copy takes it */
    if (rc < 0) {
        mpmc_unlock(p->plock);
        return rc;
    }
    p->loaned = 1;
    p->inflight++; /* the buffer stays mapped until the loan ends, even if closed meanwhile */
    p->lend_pos = head;
    p->lend_n = n;
    *off = p->data + ((head + 2 * REC_HEADER) & p->mask) - (char *)p->view.buf;
    return 0;
}

/* End a loan or a borrow: unlock, and let go of the buffer if the port was closed meanwhile. */
static int end_lend(MpmcPort *p, int *lent, pthread_mutex_t *m)
{
    *lent = 0;
    int urc = mpmc_unlock(m);
    p->inflight--;
    mpmc_release_if_done(p, 0);
    return urc;
}

/* Producer: write the record and frame headers, publish, unlock, wake the consumers. */
int mpmc_commit_loan(MpmcPort *p, int sid)
{
    if (!p->loaned)
        return -EINVAL;
    int rc = p->closed ? -EBADF : 0;
    if (rc == 0) {
        uint64_t head = p->lend_pos, total = p->lend_n + 8;
        uint32_t rec[2] = {(uint32_t)total, ~(uint32_t)total}, n32 = (uint32_t)p->lend_n;
        unsigned char frame[8] = {FRAME_MAGIC, (unsigned char)sid, 0, 0};
        memcpy(frame + 4, &n32, 4);
        memcpy(p->data + ((head + REC_HEADER) & p->mask), frame, 8); /* 8-aligned: never split */
        memcpy(p->data + (head & p->mask), rec, REC_HEADER);
        __atomic_store_n(p->head_p, head + rec_size(total), __ATOMIC_RELEASE);
    }
    int urc = end_lend(p, &p->loaned, p->plock);
    if (rc == 0 && p->has_view)
        mpmc_wake_consumers(p);
    return rc ? rc : urc;
}

int mpmc_give_back_loan(MpmcPort *p)
{
    return p->loaned ? end_lend(p, &p->loaned, p->plock) : -EINVAL;
}

/* Consumer: lock, then borrow the next record when it is an ordinary ipcraft frame within the limit
 * whose payload is contiguous in the ring: its payload's offset, length and serializer id. */
int mpmc_borrow(MpmcPort *p, Py_ssize_t *off, uint64_t *n, int *sid, int mirror_ok)
{
    if (!p->has_view || p->closed)
        return -EBADF;
    if (p->loaned || p->borrowed)
        return -EXDEV; /* this handle lends the other side now: a copy does it */
    if (p->sync || p->fd_user)
        return -EXDEV;
    int rc = mpmc_lock_try(p, p->clock_);
    if (rc != 0)
        return rc > 0 ? -EAGAIN : rc;
    uint64_t tail = __atomic_load_n(p->tail_p, __ATOMIC_RELAXED), head;
    long long size = mpmc_peek_at(p, tail, &head);
    unsigned char frame[8];
    uint32_t len = 0;
    if (size >= 8) {
        memcpy(frame, p->data + ((tail + REC_HEADER) & p->mask), 8); /* 8-aligned: never split */
        memcpy(&len, frame + 4, 4);
    }
    if (size == -EAGAIN)
        rc = -EAGAIN;
    else if (size < 8 || frame[0] != FRAME_MAGIC || frame[2] || frame[3] || len != (uint64_t)size - 8 ||
             len > p->limit || (((tail + 2 * REC_HEADER) & p->mask) + len > p->cap && !(mirror_ok && p->mirrored)))
        rc = -EXDEV; /* corrupt, foreign, too large or wrapped (no mirror): the copying path takes (or reports) it */
    if (rc < 0) {
        mpmc_unlock(p->clock_);
        return rc;
    }
    p->borrowed = 1;
    p->inflight++;
    p->lend_pos = tail;
    p->lend_n = (uint64_t)size;
    *off = p->data + ((tail + 2 * REC_HEADER) & p->mask) - (char *)p->view.buf;
    *n = len;
    *sid = frame[1];
    return 0;
}

/* Consumer: drop the borrowed record (publish tail), unlock, wake the producers. */
int mpmc_consume_borrowed(MpmcPort *p)
{
    if (!p->borrowed)
        return -EINVAL;
    int rc = p->closed ? -EBADF : 0;
    if (rc == 0)
        __atomic_store_n(p->tail_p, p->lend_pos + rec_size(p->lend_n), __ATOMIC_RELEASE);
    int urc = end_lend(p, &p->borrowed, p->clock_);
    if (rc == 0 && p->has_view)
        mpmc_wake_sleepers(p->psleep_p, p->tail_p);
    return rc ? rc : urc;
}

int mpmc_give_back_borrowed(MpmcPort *p)
{
    return p->borrowed ? end_lend(p, &p->borrowed, p->clock_) : -EINVAL;
}

/* lend.c's view of these verbs (see LendOps in native.h).  A port lends for both sides. */
static int mpmc_ops_producer(PyObject *o) { (void)o; return -1; }

static int mpmc_ops_loan(PyObject *o, uint64_t n, char **payload)
{
    MpmcPort *p = (MpmcPort *)o;
    Py_ssize_t off;
    int rc = mpmc_loan(p, n, &off, 1);
    if (rc == 0)
        *payload = (char *)p->view.buf + off;
    return rc;
}

static int mpmc_ops_commit(PyObject *o, int sid) { return mpmc_commit_loan((MpmcPort *)o, sid); }
static int mpmc_ops_give_back_loan(PyObject *o) { return mpmc_give_back_loan((MpmcPort *)o); }

static int mpmc_ops_borrow(PyObject *o, char **payload, uint64_t *n)
{
    MpmcPort *p = (MpmcPort *)o;
    Py_ssize_t off;
    int sid;
    if (!mpmc_lend_ready(p))
        return -EAGAIN;
    int rc = mpmc_borrow(p, &off, n, &sid, 1);
    if (rc == 0)
        *payload = (char *)p->view.buf + off;
    return rc;
}

static int mpmc_ops_consume(PyObject *o) { return mpmc_consume_borrowed((MpmcPort *)o); }
static int mpmc_ops_give_back_borrowed(PyObject *o) { return mpmc_give_back_borrowed((MpmcPort *)o); }

static int mpmc_ops_pin(PyObject *o, Py_buffer *pin)
{
    MpmcPort *p = (MpmcPort *)o;
    if (!p->has_view) {
        PyErr_SetString(PyExc_BufferError, "the ring port is closed");
        return -1;
    }
    return PyObject_GetBuffer(p->view.obj, pin, PyBUF_SIMPLE);
}

const LendOps ipc_mpmc_lend_ops = {
    &MpmcPort_Type, mpmc_ops_producer, mpmc_ops_loan, mpmc_ops_commit, mpmc_ops_give_back_loan,
    mpmc_ops_borrow, mpmc_ops_consume, mpmc_ops_give_back_borrowed, mpmc_ops_pin,
};

static PyObject *MpmcPort_reserve(MpmcPort *self, PyObject *arg)
{
    uint64_t n;
    Py_ssize_t off;
    int ok = ipc_size_arg(arg, &n), rc = ok > 0 ? mpmc_loan(self, n, &off, 0) : -EINVAL;
    if (ok < 0)
        return NULL;
    return rc < 0 ? PyLong_FromLong(rc) : PyLong_FromSsize_t(off);
}

static PyObject *MpmcPort_commit(MpmcPort *self, PyObject *arg)
{
    long sid = PyLong_AsLong(arg);
    if (sid == -1 && PyErr_Occurred())
        return NULL;
    if (sid < 0 || sid > 255) {
        PyErr_SetString(PyExc_ValueError, "sid is a serializer id 0-255");
        return NULL;
    }
    return PyLong_FromLong(mpmc_commit_loan(self, (int)sid));
}

static PyObject *MpmcPort_abort(MpmcPort *self, PyObject *unused)
{
    (void)unused;
    return PyLong_FromLong(mpmc_give_back_loan(self));
}

static PyObject *MpmcPort_peek(MpmcPort *self, PyObject *unused)
{
    (void)unused;
    Py_ssize_t off;
    uint64_t n;
    int sid, rc = mpmc_borrow(self, &off, &n, &sid, 0);
    if (rc < 0)
        return PyLong_FromLong(rc);
    return Py_BuildValue("(nKi)", off, (unsigned long long)n, sid);
}

static PyObject *MpmcPort_consume(MpmcPort *self, PyObject *unused)
{
    (void)unused;
    return PyLong_FromLong(mpmc_consume_borrowed(self));
}

static PyObject *MpmcPort_unpeek(MpmcPort *self, PyObject *unused)
{
    (void)unused;
    return PyLong_FromLong(mpmc_give_back_borrowed(self));
}

static PyMethodDef MpmcPort_methods[] = {
    {"send", (PyCFunction)(void (*)(void))MpmcPort_send, METH_FASTCALL,
     "send(parts, timeout) -> int: append one message made of the bytes-like parts (at most 8).  0 or "
     "1 (sent; 1: fd waiters are armed and want a wake-up), -ETIMEDOUT, -EMSGSIZE (can never fit), "
     "-EPROTO (corrupt cursors), -EBADF (closed meanwhile), -errno of msync."},
    {"recv_into", (PyCFunction)(void (*)(void))MpmcPort_recv_into, METH_FASTCALL,
     "recv_into(out, timeout) -> int: take one message into out; its length, -ETIMEDOUT, -ENOBUFS (out "
     "is smaller than the next message, whose size is in .needed; nothing taken), -EPROTO, -EBADMSG "
     "(a corrupt record: everything pending was discarded), -EBADF."},
    {"wait", (PyCFunction)(void (*)(void))MpmcPort_wait, METH_FASTCALL,
     "wait(timeout) -> int: 0 once a message is pending (another consumer may take it first), "
     "-ETIMEDOUT, -EBADF."},
    {"try_send", (PyCFunction)(void (*)(void))MpmcPort_try_send, METH_FASTCALL,
     "try_send(data, sid=0) -> bool: append data behind an ipcraft frame header if that can be done at "
     "once (lock free, room, size within limit and under 256 KiB); False leaves everything to the general "
     "path."},
    {"try_send_many", (PyCFunction)(void (*)(void))MpmcPort_try_send_many, METH_FASTCALL,
     "try_send_many(items, sid=0) -> int: append the longest prefix of the sequence of bytes-like items "
     "that can be appended at once, each behind an ipcraft frame header, under one lock hold and with "
     "one publication (a batch is seen whole or not at all); how many were appended."},
    {"try_recv_many", (PyCFunction)(void (*)(void))MpmcPort_try_recv_many, METH_FASTCALL,
     "try_recv_many(max_messages, sid=-1) -> list[bytes]: take up to max_messages ordinary frames "
     "(of serializer sid when >= 0), under one lock hold, publishing tail once (spinning briefly on an "
     "empty ring); it stops before anything the general path must see."},
    {"try_recv_into", (PyCFunction)(void (*)(void))MpmcPort_try_recv_into, METH_FASTCALL,
     "try_recv_into(buffer, offset=0) -> int | None: copy the next ordinary frame's payload into buffer "
     "at offset and take it; None (nothing taken) when the general path must act (empty, foreign, too "
     "large, too small a buffer, closed, sync, fd user, bad arguments)."},
    {"try_recv", (PyCFunction)MpmcPort_try_recv, METH_NOARGS,
     "try_recv() -> bytes | None: take the next message's payload if it is an ordinary ipcraft frame "
     "within limit and can be taken at once; None leaves everything to the general path."},
    {"reserve", (PyCFunction)MpmcPort_reserve, METH_O,
     "reserve(n) -> int: lock the producer side and loan n contiguous payload bytes at head (their "
     "offset in the buffer) until commit() or abort(); -EAGAIN (lock busy or no room now), -EXDEV "
     "(sync=true, the payload would wrap, or this handle lends already: send a copy), -EMSGSIZE, -EPROTO, "
     "-EBADF."},
    {"commit", (PyCFunction)MpmcPort_commit, METH_O,
     "commit(sid) -> int: publish the loan as one ipcraft frame of serializer sid, unlock, wake."},
    {"abort", (PyCFunction)MpmcPort_abort, METH_NOARGS, "abort() -> int: drop the loan unpublished, unlock."},
    {"peek", (PyCFunction)MpmcPort_peek, METH_NOARGS,
     "peek() -> (offset, length, sid) | int: lock the consumer side and borrow the next ordinary frame "
     "in place until consume() or unpeek(); -EAGAIN (lock busy or empty), -EXDEV (sync=true, an fd "
     "user, this handle lends already, or a record the copying path must take: wrapped, too large, "
     "foreign, corrupt), -EBADF."},
    {"consume", (PyCFunction)MpmcPort_consume, METH_NOARGS,
     "consume() -> int: drop the borrowed record, unlock, wake the producers."},
    {"unpeek", (PyCFunction)MpmcPort_unpeek, METH_NOARGS, "unpeek() -> int: unlock, keeping the record."},
    {"pending", (PyCFunction)MpmcPort_pending, METH_NOARGS,
     "pending() -> int: bytes of records waiting in the ring."},
    {"close", (PyCFunction)MpmcPort_close, METH_NOARGS,
     "close(): let go of the buffer (after any operation still running in another thread)."},
    {NULL, NULL, 0, NULL},
};

static PyObject *MpmcPort_get_fd_user(MpmcPort *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->fd_user);
}

static int MpmcPort_set_fd_user(MpmcPort *self, PyObject *value, void *c)
{
    (void)c;
    int on = value == NULL ? 0 : PyObject_IsTrue(value);
    if (on < 0)
        return -1;
    self->fd_user = on;
    return 0;
}

static PyGetSetDef MpmcPort_getset[] = {
    {"fd_user", (getter)MpmcPort_get_fd_user, (setter)MpmcPort_set_fd_user,
     "set once this handle gave out a fileno(): try_recv() then leaves every receive to the general "
     "path, which re-arms the fd", NULL},
    {"needed", (getter)MpmcPort_get_needed, NULL, "size of the message a too-small recv_into left", NULL},
    {"recovered", (getter)MpmcPort_get_recovered, NULL,
     "how many times this port took a lock whose holder had died", NULL},
    {"capacity", (getter)MpmcPort_get_capacity, NULL, "data-area bytes, read once at construction", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject MpmcPort_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipcraft._native.MpmcPort",
    .tp_basicsize = sizeof(MpmcPort),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "MpmcPort(buf, spin_ns=100000, sync=False, limit=-1): one process's handle on a multi-producer "
              "multi-consumer ring formatted in buf (see ipcraft/_rings/mpmc.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)MpmcPort_init,
    .tp_dealloc = (destructor)MpmcPort_dealloc,
    .tp_methods = MpmcPort_methods,
    .tp_getset = MpmcPort_getset,
};

static PyObject *mpmc_layout(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return Py_BuildValue(
        "{sKsIsIsIsIsIsIsIsIsIsIsIsIsIsIsIsIsIsIsIsIsI}", "MAGIC", (unsigned long long)MPMC_MAGIC,
        "VERSION", MPMC_VERSION, "HEADER_SIZE", MPMC_HEADER_SIZE, "MIN_CAPACITY", MPMC_MIN_CAPACITY,
        "OFF_MAGIC", OFF_MAGIC, "OFF_VERSION", OFF_VERSION, "OFF_FLAGS", OFF_FLAGS, "OFF_CAPACITY",
        OFF_CAPACITY, "OFF_DATA", OFF_DATA, "OFF_CREATOR_PID", OFF_CREATOR_PID, "OFF_PRODUCER_LOCK",
        OFF_PRODUCER_LOCK, "OFF_HEAD", OFF_HEAD, "OFF_CONSUMER_LOCK", OFF_CONSUMER_LOCK, "OFF_TAIL",
        OFF_TAIL, "OFF_CONSUMERS_SLEEPING", OFF_CONSUMERS_SLEEPING, "OFF_PRODUCERS_SLEEPING",
        OFF_PRODUCERS_SLEEPING, "OFF_FD_ARMED", OFF_FD_ARMED, "OFF_FD_SLOTS", OFF_FD_SLOTS, "FD_SLOTS",
        FD_SLOTS, "FD_SLOT_SIZE", FD_SLOT_SIZE, "REC_HEADER", REC_HEADER, "FRAME_MAGIC", FRAME_MAGIC);
}

static PyMethodDef mpmc_functions[] = {
    {"mpmc_layout", mpmc_layout, METH_NOARGS,
     "mpmc_layout() -> dict: the header offsets and constants this build of mpmc.c uses."},
    {NULL, NULL, 0, NULL},
};

int ipc_mpmc_register(PyObject *m)
{
    if (sizeof(pthread_mutex_t) > OFF_HEAD - OFF_PRODUCER_LOCK) {
        PyErr_SetString(PyExc_ImportError, "pthread_mutex_t does not fit the MPMC ring header");
        return -1;
    }
    if (ipc_add_type(m, &MpmcPort_Type, "MpmcPort") < 0)
        return -1;
    return PyModule_AddFunctions(m, mpmc_functions);
}
