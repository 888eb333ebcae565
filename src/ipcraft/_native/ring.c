/* The single-producer single-consumer ring: push/pop with the copy, waits, wake-ups (see _ring.py).
 *
 * The layout (header page, cursor cache lines, record format) is described in _ring.py, which checks
 * at import that the constants below match its own (ring_layout()).  A RingEnd is one side of one
 * ring: the producer or the consumer.  It holds a buffer export on the mapping for its whole life, so
 * the memory cannot be unmapped under it, and it copies the capacity out of the header once, at
 * construction: every address it computes afterwards is bounded by that private copy.  Cursors and
 * record headers read from shared memory are validated before any copy; a bad one is -EPROTO.
 *
 * Ordering: a record is written, then the producer's cursor (head) is published with a release
 * store; the consumer reads head with an acquire load before reading the record, and publishes tail
 * with a release store after it has copied the record out.  Wake-ups follow Dekker's pattern: the
 * waiter stores its "waiting" flag, issues a full fence, then re-checks the ring before sleeping; the
 * other side publishes its cursor, issues a full fence, then reads the flag.  One of the two must see
 * the other's store, so a wake-up is never lost.  The side that finds the flag set clears it with an
 * exchange and writes the waiter's eventfd once.
 *
 * Methods return 0, a value, or -errno.  The try_* methods are the channel's fast path: they return
 * True/bytes when they completed the operation, and False/None whenever anything else has to happen
 * (the general methods then tell what).  Waits release the GIL; a signal that interrupts one runs the
 * Python handlers (Ctrl-C raises KeyboardInterrupt out of the wait).
 */
#include "native.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RING_MAGIC 0x5254464152435049ULL /* b"IPCRAFTR" little-endian */
#define RING_VERSION 1u
#define RING_HEADER_SIZE 4096u
#define RING_MIN_CAPACITY 64u
#define OFF_MAGIC 0
#define OFF_VERSION 8
#define OFF_FLAGS 12
#define OFF_CAPACITY 16
#define OFF_DATA 24
#define OFF_CREATOR_PID 32
#define OFF_OPENER_PID 36
#define OFF_HEAD 128             /* producer's cache line */
#define OFF_PRODUCER_CLOSED 136
#define OFF_TAIL 256             /* consumer's cache line */
#define OFF_CONSUMER_CLOSED 264
#define OFF_CONSUMER_WAITING 384 /* the consumer sleeps (or keeps its eventfd level-triggered) */
#define OFF_PRODUCER_WAITING 512 /* the producer sleeps on a full ring */
#define REC_HEADER 8u
#define REC_MAGIC 0xA1u
#define REC_FLAG_WRAP 0x8000u

#define CHECK_SIGNALS_NS 10000000LL /* while spinning, take the GIL this often to run signal handlers */
#define WATCH_NS 1000000LL          /* while spinning, poll the peer-liveness fds this often */
#define FAST_SPIN_MAX_NS 1000000LL  /* the fast path spins at most this long before the general path */
#define GIL_FREE_COPY 262144u       /* copies this large release the GIL */
#define WAIT_SIGNALS 1

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view;
    char *base, *data;
    uint64_t cap, mask, limit;
    uint64_t *head_p, *tail_p;
    uint32_t *pclosed_p, *cclosed_p, *cwait_p, *pwait_p;
    int producer, signal_fd, wait_fd, nwatch, watch_fds[4];
    long long spin_ns;   /* < 0: never sleep */
    uint64_t pos;        /* producer: head, consumer: tail (this side is their only writer) */
    uint64_t seen;       /* producer: the last tail read, consumer: the last head read */
    uint64_t loan_off, loan_pad, loan_len, borrow_total;
    int level, busy, loaned, borrowed, inflight, closed;
} RingEnd;

static inline uint64_t ld_acq(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t rec_size(uint64_t n) { return REC_HEADER + ((n + 7) & ~(uint64_t)7); }

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void efd_signal(int fd)
{
    uint64_t one = 1;
    if (fd >= 0 && write(fd, &one, 8) < 0) {
        /* EAGAIN: the counter is saturated, the waiter will wake anyway. */
    }
}

static void efd_drain(int fd)
{
    uint64_t v;
    if (fd >= 0 && read(fd, &v, 8) < 0) {
        /* EAGAIN: nothing pending. */
    }
}

/* After publishing our cursor: wake the other side if it sleeps (Dekker: fence, then read its flag). */
static inline void wake_other(RingEnd *r, uint32_t *flag)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(flag, __ATOMIC_RELAXED) && __atomic_exchange_n(flag, 0, __ATOMIC_SEQ_CST))
        efd_signal(r->signal_fd);
}

static void release_if_done(RingEnd *r)
{
    if (r->closed && r->inflight == 0 && r->has_view) {
        r->has_view = 0;
        PyBuffer_Release(&r->view);
    }
}

/* ---- producer ------------------------------------------------------------------------------- */

/* Where a record of n payload bytes goes: sets *pad (wrap padding first) and *adv (head advance).
 * Returns 0, -EAGAIN (not enough room now) or -EPROTO (the consumer's cursor is impossible). */
static int place(RingEnd *r, uint64_t n, uint64_t *pad, uint64_t *adv)
{
    uint64_t rec = rec_size(n), p = r->pos & r->mask;
    *pad = p + rec > r->cap ? r->cap - p : 0;
    *adv = *pad + rec;
    if (r->pos - r->seen + *adv <= r->cap)
        return 0;
    uint64_t tail = ld_acq(r->tail_p);
    if (r->pos - tail > r->cap || (tail & 7))
        return -EPROTO;
    r->seen = tail;
    return r->pos - tail + *adv <= r->cap ? 0 : -EAGAIN;
}

static void put_header(char *rec, int sid, unsigned flags, uint32_t n)
{
    rec[0] = (char)REC_MAGIC;
    rec[1] = (char)sid;
    uint16_t f = (uint16_t)flags;
    memcpy(rec + 2, &f, 2);
    memcpy(rec + 4, &n, 4);
}

static void publish(RingEnd *r, uint64_t adv)
{
    r->pos += adv;
    __atomic_store_n(r->head_p, r->pos, __ATOMIC_RELEASE);
    wake_other(r, r->cwait_p);
}

static int producer_gate(RingEnd *r, uint64_t n)
{
    if (r->closed || !r->has_view)
        return -EBADF;
    if (!r->producer)
        return -EINVAL;
    if (r->busy)
        return -EBUSY;
    if (n > r->limit)
        return -EMSGSIZE;
    if (__atomic_load_n(r->cclosed_p, __ATOMIC_ACQUIRE))
        return -ESHUTDOWN;
    return 0;
}

/* Push one record; the copy runs without the GIL when it is large (busy keeps other threads out). */
static int push(RingEnd *r, int sid, const char *src, uint64_t n)
{
    uint64_t pad, adv;
    int rc = producer_gate(r, n);
    if (rc == 0)
        rc = place(r, n, &pad, &adv);
    if (rc < 0)
        return rc;
    char *at = r->data + (r->pos & r->mask);
    if (pad) {
        put_header(at, 0, REC_FLAG_WRAP, 0);
        at = r->data;
    }
    put_header(at, sid, 0, (uint32_t)n);
    if (n >= GIL_FREE_COPY) {
        r->busy = 1;
        r->inflight++;
        Py_BEGIN_ALLOW_THREADS
        memcpy(at + REC_HEADER, src, n);
        Py_END_ALLOW_THREADS
        r->inflight--;
        r->busy = 0;
        if (r->closed) { /* closed by another thread meanwhile: publish nothing */
            release_if_done(r);
            return -EBADF;
        }
    } else {
        memcpy(at + REC_HEADER, src, n);
    }
    publish(r, adv);
    return 0;
}

/* ---- consumer ------------------------------------------------------------------------------- */

/* Locate the next record: *rec its header, *n its payload length, *total how far tail moves past it
 * (a wrap marker before it included).  0, -EAGAIN (empty) or -EPROTO. */
static int next_record(RingEnd *r, char **rec, uint64_t *n, uint64_t *total)
{
    if (r->pos == r->seen) {
        uint64_t head = ld_acq(r->head_p);
        if (head - r->pos > r->cap || (head & 7))
            return -EPROTO;
        r->seen = head;
        if (head == r->pos)
            return -EAGAIN;
    }
    uint64_t avail = r->seen - r->pos, p = r->pos & r->mask, skip = 0;
    char *at = r->data + p;
    uint16_t flags;
    memcpy(&flags, at + 2, 2);
    if ((unsigned char)at[0] == REC_MAGIC && flags == REC_FLAG_WRAP) {
        skip = r->cap - p;
        at = r->data;
        p = 0;
        memcpy(&flags, at + 2, 2);
    }
    if ((unsigned char)at[0] != REC_MAGIC || flags != 0)
        return -EPROTO;
    uint32_t len = __atomic_load_n((uint32_t *)(at + 4), __ATOMIC_RELAXED); /* read once */
    uint64_t size = rec_size(len);
    if (skip + size > avail || p + size > r->cap)
        return -EPROTO;
    *rec = at;
    *n = len;
    *total = skip + size;
    return 0;
}

static int consumer_gate(RingEnd *r)
{
    if (r->closed || !r->has_view)
        return -EBADF;
    if (r->producer)
        return -EINVAL;
    return r->busy ? -EBUSY : 0;
}

static int ring_empty(RingEnd *r) { return ld_acq(r->head_p) == r->pos; }

/* Level-triggered mode: make "the eventfd is readable" equal "a record is pending".
 * Invariant kept everywhere: consumer_waiting == 1 implies the eventfd counter is 0. */
static void level_resync(RingEnd *r)
{
    efd_drain(r->wait_fd);
    __atomic_store_n(r->cwait_p, 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!ring_empty(r) && __atomic_exchange_n(r->cwait_p, 0, __ATOMIC_SEQ_CST))
        efd_signal(r->wait_fd);
}

static void level_sync(RingEnd *r)
{
    if (r->level && ring_empty(r) && __atomic_load_n(r->cwait_p, __ATOMIC_SEQ_CST) != 1)
        level_resync(r);
}

static void consume(RingEnd *r, uint64_t total)
{
    r->pos += total;
    __atomic_store_n(r->tail_p, r->pos, __ATOMIC_RELEASE);
    wake_other(r, r->pwait_p);
    level_sync(r);
}

/* ---- waiting -------------------------------------------------------------------------------- */

/* Whether the wait is over.  Runs without the GIL, so it reads the cursors but changes nothing. */
static int ready(RingEnd *r, uint64_t n)
{
    if (!r->producer)
        return !ring_empty(r);
    uint64_t rec = rec_size(n), p = r->pos & r->mask, tail = ld_acq(r->tail_p);
    uint64_t adv = (p + rec > r->cap ? r->cap - p : 0) + rec;
    return r->pos - tail > r->cap || r->pos - tail + adv <= r->cap; /* a corrupt cursor: let send() say so */
}

static int other_closed(RingEnd *r)
{
    return __atomic_load_n(r->producer ? r->cclosed_p : r->pclosed_p, __ATOMIC_ACQUIRE) != 0;
}

static int watch_fired(RingEnd *r)
{
    struct pollfd fds[4];
    for (int i = 0; i < r->nwatch; i++)
        fds[i] = (struct pollfd){.fd = r->watch_fds[i], .events = POLLIN};
    return r->nwatch && poll(fds, (nfds_t)r->nwatch, 0) > 0;
}

/* The other side is gone: clean close (-ESHUTDOWN) or death (-EPIPE); what it left is still served. */
static int gone(RingEnd *r, uint64_t n)
{
    int closed = other_closed(r); /* read before the cursors: a producer closes after its last push */
    if (ready(r, n) && !(r->producer && closed))
        return 0;
    return closed ? -ESHUTDOWN : -EPIPE;
}

static int settle(RingEnd *r, uint64_t n)
{
    if (__atomic_load_n(&r->closed, __ATOMIC_RELAXED))
        return -EBADF;
    int closed = other_closed(r); /* read before the cursors: a producer closes after its last push */
    if (r->producer && closed)
        return -ESHUTDOWN;
    if (ready(r, n))
        return 0;
    return closed ? -ESHUTDOWN : 1;
}

/* One slice of a wait, without the GIL: returns 0 (ready), WAIT_SIGNALS (take the GIL, run signal
 * handlers, come back) or -errno.  *spin_until is when spinning stops and sleeping starts. */
static int wait_slice(RingEnd *r, uint64_t n, int has_deadline, long long deadline, long long spin_until)
{
    uint32_t *flag = r->producer ? r->pwait_p : r->cwait_p;
    long long now = now_ns(), slice_end = now + CHECK_SIGNALS_NS, next_watch = now;
    for (unsigned i = 0; r->spin_ns < 0 || now < spin_until; i++) {
        int s = settle(r, n);
        if (s <= 0)
            return s;
        if ((i & 63) == 0) {
            now = now_ns();
            if (has_deadline && now >= deadline)
                return -ETIMEDOUT;
            if (now >= next_watch) {
                if (watch_fired(r))
                    return gone(r, n);
                next_watch = now + WATCH_NS;
            }
            if (now >= slice_end)
                return WAIT_SIGNALS;
        }
        cpu_relax();
    }
    for (;;) {
        int s = settle(r, n);
        if (s <= 0)
            return s;
        efd_drain(r->wait_fd);
        __atomic_store_n(flag, 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        s = settle(r, n);
        if (s <= 0) {
            if (__atomic_exchange_n(flag, 0, __ATOMIC_SEQ_CST) && !r->producer && r->level)
                efd_signal(r->wait_fd);
            return s;
        }
        struct pollfd fds[5];
        fds[0] = (struct pollfd){.fd = r->wait_fd, .events = POLLIN};
        for (int i = 0; i < r->nwatch; i++)
            fds[i + 1] = (struct pollfd){.fd = r->watch_fds[i], .events = POLLIN};
        struct timespec ts, *tsp = NULL;
        if (has_deadline) {
            long long left = deadline - now_ns();
            if (left < 0)
                left = 0;
            ts.tv_sec = left / 1000000000LL;
            ts.tv_nsec = left % 1000000000LL;
            tsp = &ts;
        }
        int rc = ppoll(fds, (nfds_t)(r->nwatch + 1), tsp, NULL);
        if (rc < 0)
            return errno == EINTR ? WAIT_SIGNALS : -errno;
        if (rc == 0)
            return settle(r, n) == 0 ? 0 : -ETIMEDOUT;
        for (int i = 1; i <= r->nwatch; i++)
            if (fds[i].revents)
                return gone(r, n);
    }
}

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

static int RingEnd_init(RingEnd *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buf", "offset", "producer", "signal_fd", "wait_fd", "watch_fds",
                             "spin_ns", "limit", NULL};
    PyObject *buf, *sig = NULL, *wfd = NULL, *watch = NULL;
    Py_ssize_t offset;
    int producer;
    long long spin_ns = 50000, limit = -1;
    if (self->has_view) {
        PyErr_SetString(PyExc_TypeError, "RingEnd is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Onp|OOOLL:RingEnd", kwlist, &buf, &offset, &producer,
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
    char *base = ipc_buffer_at(&self->view, offset, RING_HEADER_SIZE);
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
    head = ld_acq((uint64_t *)(base + OFF_HEAD));
    tail = ld_acq((uint64_t *)(base + OFF_TAIL));
    const char *bad = NULL;
    if (magic != RING_MAGIC || version != RING_VERSION || flags != 0)
        bad = "bad ring magic, version or flags (a variant this SPSC code cannot serve)";
    else if (cap < RING_MIN_CAPACITY || (cap & (cap - 1)) || cap > (1ULL << 40) || doff != RING_HEADER_SIZE ||
             (uint64_t)(self->view.len - offset) < RING_HEADER_SIZE + cap)
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
    self->data = base + RING_HEADER_SIZE;
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
    self->pos = producer ? head : tail;
    self->seen = producer ? tail : head;
    return 0;
}

static void RingEnd_dealloc(RingEnd *self)
{
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

static PyObject *RingEnd_try_send(RingEnd *self, PyObject *const *args, Py_ssize_t nargs)
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
    int rc = push(self, sid, src, (uint64_t)n);
    if (v.obj)
        PyBuffer_Release(&v);
    return PyBool_FromLong(rc == 0);
}

static PyObject *RingEnd_send(RingEnd *self, PyObject *const *args, Py_ssize_t nargs)
{
    int sid;
    Py_buffer v;
    const char *src;
    Py_ssize_t n;
    if (send_args(args, nargs, "send", &sid) < 0 || get_src(args[0], &v, &src, &n) < 0)
        return NULL;
    int rc = push(self, sid, src, (uint64_t)n);
    if (v.obj)
        PyBuffer_Release(&v);
    return PyLong_FromLong(rc);
}

/* Spin (without the GIL) until a record is pending or `ns` pass; 1 if one is. */
static int spin_for(RingEnd *r, long long ns)
{
    int got = 0;
    r->inflight++;
    Py_BEGIN_ALLOW_THREADS
    long long until = now_ns() + ns;
    for (unsigned i = 1;; i++) {
        if (!ring_empty(r) || other_closed(r)) {
            got = 1;
            break;
        }
        if ((i & 63) == 0 && now_ns() >= until)
            break;
        cpu_relax();
    }
    Py_END_ALLOW_THREADS
    r->inflight--;
    release_if_done(r);
    return got;
}

static PyObject *RingEnd_try_recv(RingEnd *self, PyObject *unused)
{
    (void)unused;
    char *rec;
    uint64_t n, total;
    if (consumer_gate(self) < 0)
        Py_RETURN_NONE;
    int rc = next_record(self, &rec, &n, &total);
    if (rc == -EAGAIN && self->spin_ns != 0 && !other_closed(self)) {
        long long ns = self->spin_ns < 0 || self->spin_ns > FAST_SPIN_MAX_NS ? FAST_SPIN_MAX_NS : self->spin_ns;
        if (spin_for(self, ns) && consumer_gate(self) == 0)
            rc = next_record(self, &rec, &n, &total);
    }
    if (rc < 0 || n > self->limit)
        Py_RETURN_NONE;
    PyObject *b = PyBytes_FromStringAndSize(n >= GIL_FREE_COPY ? NULL : rec + REC_HEADER, (Py_ssize_t)n);
    if (b == NULL)
        return NULL;
    if (n >= GIL_FREE_COPY) {
        self->busy = 1;
        self->inflight++;
        char *dst = PyBytes_AS_STRING(b);
        Py_BEGIN_ALLOW_THREADS
        memcpy(dst, rec + REC_HEADER, n);
        Py_END_ALLOW_THREADS
        self->inflight--;
        self->busy = 0;
        if (self->closed) {
            release_if_done(self);
            Py_DECREF(b);
            Py_RETURN_NONE;
        }
    }
    consume(self, total);
    return b;
}

static PyObject *RingEnd_peek(RingEnd *self, PyObject *unused)
{
    (void)unused;
    char *rec;
    uint64_t n, total;
    int rc = consumer_gate(self);
    if (rc == 0)
        rc = next_record(self, &rec, &n, &total);
    if (rc < 0)
        return PyLong_FromLong(rc);
    self->busy = self->borrowed = 1;
    self->borrow_total = total;
    Py_ssize_t off = rec + REC_HEADER - (char *)self->view.buf;
    return Py_BuildValue("(nKi)", off, (unsigned long long)n, (int)(unsigned char)rec[1]);
}

static PyObject *RingEnd_consume(RingEnd *self, PyObject *unused)
{
    (void)unused;
    if (!self->borrowed)
        return PyLong_FromLong(-EINVAL);
    self->busy = self->borrowed = 0;
    if (self->closed)
        return PyLong_FromLong(-EBADF);
    consume(self, self->borrow_total);
    return PyLong_FromLong(0);
}

/* Give back a borrowed record (kept in the ring) or a loan (never published). */
static PyObject *give_back(RingEnd *self, int *lent)
{
    if (!*lent)
        return PyLong_FromLong(-EINVAL);
    self->busy = *lent = 0;
    return PyLong_FromLong(0);
}

static PyObject *RingEnd_unpeek(RingEnd *self, PyObject *unused)
{
    (void)unused;
    return give_back(self, &self->borrowed);
}

static PyObject *RingEnd_reserve(RingEnd *self, PyObject *arg)
{
    long long n = PyLong_AsLongLong(arg);
    uint64_t pad, adv;
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0)
        return PyLong_FromLong(-EINVAL);
    int rc = producer_gate(self, (uint64_t)n);
    if (rc == 0)
        rc = place(self, (uint64_t)n, &pad, &adv);
    if (rc < 0)
        return PyLong_FromLong(rc);
    self->busy = self->loaned = 1;
    self->loan_pad = pad;
    self->loan_len = (uint64_t)n;
    self->loan_off = pad ? 0 : (self->pos & self->mask);
    return PyLong_FromSsize_t(self->data + self->loan_off + REC_HEADER - (char *)self->view.buf);
}

static PyObject *RingEnd_commit(RingEnd *self, PyObject *arg)
{
    long sid = PyLong_AsLong(arg);
    if (sid == -1 && PyErr_Occurred())
        return NULL;
    if (!self->loaned)
        return PyLong_FromLong(-EINVAL);
    self->busy = self->loaned = 0;
    if (self->closed)
        return PyLong_FromLong(-EBADF);
    if (self->loan_pad)
        put_header(self->data + (self->pos & self->mask), 0, REC_FLAG_WRAP, 0);
    put_header(self->data + self->loan_off, (int)(sid & 255), 0, (uint32_t)self->loan_len);
    publish(self, self->loan_pad + rec_size(self->loan_len));
    return PyLong_FromLong(0);
}

static PyObject *RingEnd_abort(RingEnd *self, PyObject *unused)
{
    (void)unused;
    return give_back(self, &self->loaned);
}

static PyObject *RingEnd_wait(RingEnd *self, PyObject *const *args, Py_ssize_t nargs)
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
    long long start = now_ns();
    long long deadline = start + (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    long long spin_until = has_timeout && deadline < start + self->spin_ns ? deadline : start + self->spin_ns;
    int rc;
    self->inflight++;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = wait_slice(self, (uint64_t)n, has_timeout, deadline, spin_until);
        Py_END_ALLOW_THREADS
        if (rc != WAIT_SIGNALS)
            break;
        if (PyErr_CheckSignals() < 0) {
            self->inflight--;
            release_if_done(self);
            return NULL;
        }
    }
    self->inflight--;
    if (!self->closed && !self->producer && rc != 0)
        level_sync(self);
    release_if_done(self);
    return PyLong_FromLong(rc);
}

static PyObject *RingEnd_set_level(RingEnd *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    if (self->closed || !self->has_view || self->producer || self->wait_fd < 0)
        return PyLong_FromLong(self->closed || !self->has_view ? -EBADF : -EINVAL);
    if (on && !self->level) {
        self->level = 1;
        level_resync(self);
    }
    self->level = on;
    return PyLong_FromLong(0);
}

static PyObject *RingEnd_shutdown(RingEnd *self, PyObject *unused)
{
    (void)unused;
    if (self->closed || !self->has_view)
        return PyLong_FromLong(-EBADF);
    __atomic_store_n(self->producer ? self->pclosed_p : self->cclosed_p, 1, __ATOMIC_SEQ_CST);
    efd_signal(self->signal_fd);
    return PyLong_FromLong(0);
}

static PyObject *RingEnd_close(RingEnd *self, PyObject *unused)
{
    (void)unused;
    int wake = !self->closed && self->inflight;
    __atomic_store_n(&self->closed, 1, __ATOMIC_RELAXED);
    if (wake)
        efd_signal(self->wait_fd); /* a thread of ours sleeping in wait() wakes, sees closed: -EBADF */
    release_if_done(self);
    Py_RETURN_NONE;
}

static PyObject *RingEnd_pending(RingEnd *self, void *unused)
{
    (void)unused;
    if (!self->has_view)
        return PyLong_FromLong(0);
    return PyLong_FromUnsignedLongLong(ld_acq(self->head_p) - ld_acq(self->tail_p));
}

static PyObject *RingEnd_get_u64(RingEnd *self, void *which)
{
    uintptr_t w = (uintptr_t)which;
    return PyLong_FromUnsignedLongLong(w == 0 ? self->cap : w == 1 ? self->limit : self->pos);
}

static PyObject *RingEnd_closed(RingEnd *self, void *unused)
{
    (void)unused;
    return PyBool_FromLong(self->closed);
}

static PyMethodDef RingEnd_methods[] = {
    {"try_send", (PyCFunction)(void (*)(void))RingEnd_try_send, METH_FASTCALL,
     "try_send(data, sid=0) -> bool: push one record now if possible (the channel's fast path)."},
    {"send", (PyCFunction)(void (*)(void))RingEnd_send, METH_FASTCALL,
     "send(data, sid=0) -> int: push one record; 0, -EAGAIN (full), -EMSGSIZE, -ESHUTDOWN (the "
     "consumer closed), -EBUSY (a loan or copy in progress), -EPROTO (corrupt cursor), -EBADF."},
    {"try_recv", (PyCFunction)RingEnd_try_recv, METH_NOARGS,
     "try_recv() -> bytes | None: pop one record's payload, spinning briefly on an empty ring."},
    {"peek", (PyCFunction)RingEnd_peek, METH_NOARGS,
     "peek() -> (offset, length, sid) | int: borrow the next record (offset of its payload in the "
     "buffer) until consume() or unpeek(); -EAGAIN (empty), -EBUSY, -EPROTO, -EBADF."},
    {"consume", (PyCFunction)RingEnd_consume, METH_NOARGS, "consume() -> int: release and drop the borrowed record."},
    {"unpeek", (PyCFunction)RingEnd_unpeek, METH_NOARGS, "unpeek() -> int: release the borrowed record, keeping it."},
    {"reserve", (PyCFunction)RingEnd_reserve, METH_O,
     "reserve(n) -> int: loan n bytes for a record (offset of its payload in the buffer) until "
     "commit() or abort(); -EAGAIN (full), -EMSGSIZE, -EBUSY, -ESHUTDOWN, -EPROTO, -EBADF."},
    {"commit", (PyCFunction)RingEnd_commit, METH_O, "commit(sid) -> int: publish the loaned record."},
    {"abort", (PyCFunction)RingEnd_abort, METH_NOARGS, "abort() -> int: drop the loan unpublished."},
    {"wait", (PyCFunction)(void (*)(void))RingEnd_wait, METH_FASTCALL,
     "wait(timeout, n=0) -> int: until a record is pending (consumer) or n payload bytes fit "
     "(producer): spin spin_ns, then sleep on wait_fd.  0, -ETIMEDOUT, -ESHUTDOWN (the other side "
     "closed), -EPIPE (a watch fd fired: the other side died), -EBADF."},
    {"set_level", (PyCFunction)RingEnd_set_level, METH_O,
     "set_level(on) -> int: consumer: keep wait_fd readable exactly while a record is pending."},
    {"shutdown", (PyCFunction)RingEnd_shutdown, METH_NOARGS,
     "shutdown() -> int: mark this side closed in the header and wake the other side."},
    {"close", (PyCFunction)RingEnd_close, METH_NOARGS, "close(): release the buffer (idempotent)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef RingEnd_getset[] = {
    {"capacity", (getter)RingEnd_get_u64, NULL, "data area bytes", (void *)0},
    {"limit", (getter)RingEnd_get_u64, NULL, "largest payload sent or received by the fast path", (void *)1},
    {"position", (getter)RingEnd_get_u64, NULL, "this side's cursor", (void *)2},
    {"pending", (getter)RingEnd_pending, NULL, "bytes between the cursors", NULL},
    {"closed", (getter)RingEnd_closed, NULL, "True after close()", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingEnd_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipcraft._native.RingEnd",
    .tp_basicsize = sizeof(RingEnd),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RingEnd(buf, offset, producer, signal_fd=-1, wait_fd=-1, watch_fds=(), spin_ns=50000, "
              "limit=-1): one side of a single-producer single-consumer ring in buf at offset.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RingEnd_init,
    .tp_dealloc = (destructor)RingEnd_dealloc,
    .tp_methods = RingEnd_methods,
    .tp_getset = RingEnd_getset,
};

static PyObject *ring_layout(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    static const struct { const char *name; unsigned long long value; } k[] = {
        {"MAGIC", RING_MAGIC}, {"VERSION", RING_VERSION}, {"HEADER_SIZE", RING_HEADER_SIZE},
        {"MIN_CAPACITY", RING_MIN_CAPACITY}, {"OFF_MAGIC", OFF_MAGIC}, {"OFF_VERSION", OFF_VERSION},
        {"OFF_FLAGS", OFF_FLAGS}, {"OFF_CAPACITY", OFF_CAPACITY}, {"OFF_DATA", OFF_DATA},
        {"OFF_CREATOR_PID", OFF_CREATOR_PID}, {"OFF_OPENER_PID", OFF_OPENER_PID}, {"OFF_HEAD", OFF_HEAD},
        {"OFF_PRODUCER_CLOSED", OFF_PRODUCER_CLOSED}, {"OFF_TAIL", OFF_TAIL},
        {"OFF_CONSUMER_CLOSED", OFF_CONSUMER_CLOSED}, {"OFF_CONSUMER_WAITING", OFF_CONSUMER_WAITING},
        {"OFF_PRODUCER_WAITING", OFF_PRODUCER_WAITING}, {"REC_HEADER", REC_HEADER},
        {"REC_MAGIC", REC_MAGIC}, {"REC_FLAG_WRAP", REC_FLAG_WRAP},
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

static PyMethodDef ring_methods[] = {
    {"ring_layout", ring_layout, METH_NOARGS,
     "ring_layout() -> dict: the ring layout constants compiled into this module (see _ring.py)."},
    {NULL, NULL, 0, NULL},
};

int ipc_ring_init(PyObject *m)
{
    if (PyType_Ready(&RingEnd_Type) < 0 || PyModule_AddFunctions(m, ring_methods) < 0)
        return -1;
    Py_INCREF(&RingEnd_Type);
    if (PyModule_AddObject(m, "RingEnd", (PyObject *)&RingEnd_Type) < 0) {
        Py_DECREF(&RingEnd_Type);
        return -1;
    }
    return 0;
}
