/* The multi-producer multi-consumer ring of ring:// and file:// (layout and reasons: ipcraft/_mpmc.py).
 *
 * Two robust process-shared pthread mutexes serialise the producers among themselves and the consumers
 * among themselves; between the producer holding its lock and the consumer holding its lock the ring
 * is an ordinary single-producer single-consumer ring.  A record is written completely, then `head`
 * is published with one release store; a consumer reads `head` with an acquire load, copies the
 * record out, then publishes `tail` with one release store.  Publication being a single store is what
 * makes a crash at any instruction harmless: a producer killed before its store leaves bytes beyond
 * head that the next producer overwrites; a consumer killed before its store leaves the record for
 * the next consumer.  The kernel releases a dead holder's mutex (FUTEX_OWNER_DIED), the next locker
 * gets EOWNERDEAD, marks it consistent and carries on: there is nothing to repair.
 *
 * Waiting: spin, then sleep in FUTEX_WAIT on the low 32 bits of the cursor the waiter needs to move
 * (head for consumers, tail for producers), in slices of SLEEP_SLICE_NS so that a wake-up lost with
 * a killed process costs at most one slice.  Dekker's pattern: the waiter stores its side's "sleeping"
 * flag, fences, re-checks; the other side publishes its cursor, fences, reads the flag, and only then
 * pays for FUTEX_WAKE (of every sleeper: one flag serves all of them).
 *
 * Every operation runs without the GIL when it has to wait or copy much; a port pins its buffer, and
 * close() while another thread is inside an operation defers the release of the buffer until it
 * leaves.  Returns are 0, a count, or -errno; the Python side (_mpmc.py) translates them.
 */
#include "native.h"
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MPMC_MAGIC 0x5154464152435049ULL /* b"IPCRAFTQ" little-endian */
#define MPMC_VERSION 1u
#define MPMC_HEADER_SIZE 4096u
#define MPMC_MIN_CAPACITY 4096u
#define OFF_MAGIC 0
#define OFF_VERSION 8
#define OFF_FLAGS 12
#define OFF_CAPACITY 16
#define OFF_DATA 24
#define OFF_CREATOR_PID 32
#define OFF_PRODUCER_LOCK 128
#define OFF_HEAD 192
#define OFF_CONSUMER_LOCK 256
#define OFF_TAIL 320
#define OFF_CONSUMERS_SLEEPING 384
#define OFF_PRODUCERS_SLEEPING 512
#define OFF_FD_ARMED 640
#define OFF_FD_SLOTS 1024
#define FD_SLOTS 32
#define FD_SLOT_SIZE 16
#define REC_HEADER 8u
#define FRAME_MAGIC 0xA1u                   /* ipcraft's frame header (_framing.py), for the fast path */
#define FD_NAME_FORMAT "ipcraft-mpmc-%016llx" /* abstract socket of an fd user (FdWake in _mpmc.py) */

#define SLEEP_SLICE_NS 100000000LL  /* a sleeper re-checks this often (a wake lost with a killed process) */
#define SIGNAL_SLICE_NS 10000000LL  /* a spinner takes the GIL this often to run signal handlers */
#define LOCK_SPIN_NS 50000LL        /* spin for a busy lock this long before sleeping on it */
#define GIL_FREE_BYTES 65536u       /* copies this large run without the GIL */
#define FAST_SPIN_MAX_NS 1000000LL  /* try_recv spins at most this long on an empty ring */
#define MAX_PARTS 8
#define WAIT_SIGNALS (-200000) /* internal: take the GIL, run signal handlers, carry on */
#define PY_ERROR (-100000)      /* internal: a Python exception is set */

enum { OP_RECV, OP_SEND, OP_WAIT };

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view, closed, inflight, sync;
    char *base, *data;
    uint64_t cap, mask;
    uint64_t *head_p, *tail_p;
    pthread_mutex_t *plock, *clock_;
    uint32_t *csleep_p, *psleep_p;
    uint64_t *fdarm_p; /* how many fd users are armed (_mpmc.py keeps it) */
    long long spin_ns; /* < 0: never sleep (wait="spin") */
    long pagesize;
    int sender, has_sender; /* an unbound datagram socket for wake_fd_slots, made on first use */
    int spun;               /* try_recv spun in vain just now: the general receive sleeps at once */
    int fd_user;            /* this handle gave out a fileno(): receive by the general path (it rearms) */
    uint64_t limit; /* the fast path's largest payload (the channel's max_message_size) */
    uint64_t seen_head, seen_tail; /* caches: head and tail only grow, so an old value is a safe bound */
    unsigned long long needed, recovered;
} MpmcPort;

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

/* A spinner's periodic check: 0 go on, or -EBADF (closed), -ETIMEDOUT, WAIT_SIGNALS (time to take the
 * GIL for signal handlers).  Sets *now. */
static int spin_check(MpmcPort *p, int has_deadline, long long deadline, long long slice_end,
                      long long *now)
{
    *now = now_ns();
    if (__atomic_load_n(&p->closed, __ATOMIC_RELAXED))
        return -EBADF;
    if (has_deadline && *now >= deadline)
        return -ETIMEDOUT;
    return *now >= slice_end ? WAIT_SIGNALS : 0;
}

/* ---- locks --------------------------------------------------------------------------------- */

/* 0 locked, 1 not now (EBUSY), or -errno.  EOWNERDEAD is repaired here: publication is one store, so
 * whatever the dead holder left beyond the cursors is simply not there (see the file comment). */
static int lock_try(MpmcPort *p, pthread_mutex_t *m)
{
    int rc = pthread_mutex_trylock(m);
    if (rc == EBUSY)
        return 1;
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(m);
        __atomic_add_fetch(&p->recovered, 1, __ATOMIC_RELAXED);
        return 0;
    }
    return -rc;
}

/* Without the GIL: lock `m` by the deadline.  0, -ETIMEDOUT, -EBADF (closed meanwhile), WAIT_SIGNALS
 * (take the GIL, run handlers, call again) or -errno. */
static int lock_wait(MpmcPort *p, pthread_mutex_t *m, int has_deadline, long long deadline)
{
    long long start = now_ns(), slice_end = start + SIGNAL_SLICE_NS;
    for (unsigned i = 1;; i++) {
        int rc = lock_try(p, m);
        if (rc <= 0)
            return rc;
        if ((i & 63) == 0) {
            long long now;
            if ((rc = spin_check(p, has_deadline, deadline, slice_end, &now)) != 0)
                return rc;
            if (p->spin_ns >= 0 && now - start >= LOCK_SPIN_NS)
                break;
            sched_yield(); /* on 2 cores the holder may be waiting for this one */
        }
        cpu_relax();
    }
    long long end = now_ns() + SLEEP_SLICE_NS;
    if (has_deadline && deadline < end)
        end = deadline;
    struct timespec ts = {.tv_sec = end / 1000000000LL, .tv_nsec = end % 1000000000LL};
    int rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
    if (rc == 0)
        return 0;
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(m);
        __atomic_add_fetch(&p->recovered, 1, __ATOMIC_RELAXED);
        return 0;
    }
    if (rc == ETIMEDOUT)
        return has_deadline && now_ns() >= deadline ? -ETIMEDOUT : WAIT_SIGNALS;
    return -rc;
}

/* Let go of the buffer and the socket once closed and no operation is running (GIL held). */
static void release_if_done(MpmcPort *p, int force)
{
    if ((p->closed || force) && p->inflight == 0 && p->has_view) {
        p->has_view = 0;
        PyBuffer_Release(&p->view);
    }
    if ((p->closed || force) && p->inflight == 0 && p->has_sender) {
        p->has_sender = 0;
        close(p->sender);
    }
}

/* ---- the copies ---------------------------------------------------------------------------- */

static void copy_in(MpmcPort *p, uint64_t pos, const char *src, uint64_t n)
{
    uint64_t at = pos & p->mask, first = n < p->cap - at ? n : p->cap - at;
    memcpy(p->data + at, src, first);
    if (n > first)
        memcpy(p->data, src + first, n - first);
}

static void copy_out(MpmcPort *p, uint64_t pos, char *dst, uint64_t n)
{
    uint64_t at = pos & p->mask, first = n < p->cap - at ? n : p->cap - at;
    memcpy(dst, p->data + at, first);
    if (n > first)
        memcpy(dst + first, p->data, n - first);
}

/* msync the ring bytes [pos, pos + n) (both pieces when they wrap), widened to whole pages. */
static int sync_range(MpmcPort *p, uint64_t pos, uint64_t n)
{
    uint64_t at = pos & p->mask, first = n < p->cap - at ? n : p->cap - at;
    uint64_t offs[2] = {MPMC_HEADER_SIZE + at, MPMC_HEADER_SIZE}, lens[2] = {first, n - first};
    for (int i = 0; i < 2; i++) {
        if (lens[i] == 0)
            continue;
        uint64_t lo = offs[i] & ~(uint64_t)(p->pagesize - 1), hi = offs[i] + lens[i];
        if (msync(p->base + lo, hi - lo, MS_SYNC) < 0)
            return -errno;
    }
    return 0;
}

static int sync_header(MpmcPort *p)
{
    return msync(p->base, MPMC_HEADER_SIZE, MS_SYNC) < 0 ? -errno : 0;
}

static inline void wake_sleepers(uint32_t *flag, uint64_t *cursor)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(flag, __ATOMIC_RELAXED) && __atomic_exchange_n(flag, 0, __ATOMIC_SEQ_CST))
        syscall(SYS_futex, (uint32_t *)cursor, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* ---- one attempt, the lock taken ----------------------------------------------------------- */

typedef struct {
    const char *src[MAX_PARTS];
    uint64_t len[MAX_PARTS];
    int nparts;
    uint64_t total;
} Parts;

/* Producer, holding its lock: 0 (published), -EAGAIN (no room now) or -EPROTO. */
static int push_locked(MpmcPort *p, const Parts *parts)
{
    uint64_t head = __atomic_load_n(p->head_p, __ATOMIC_RELAXED), need = rec_size(parts->total);
    if (head - p->seen_tail > p->cap || head - p->seen_tail + need > p->cap) {
        uint64_t tail = ld_acq(p->tail_p);
        if (head - tail > p->cap || ((head | tail) & 7))
            return -EPROTO;
        p->seen_tail = tail;
        if (head - tail + need > p->cap)
            return -EAGAIN;
    }
    uint32_t hdr[2] = {(uint32_t)parts->total, ~(uint32_t)parts->total};
    memcpy(p->data + (head & p->mask), hdr, REC_HEADER); /* 8-aligned: never split */
    uint64_t pos = head + REC_HEADER;
    for (int i = 0; i < parts->nparts; i++) {
        copy_in(p, pos, parts->src[i], parts->len[i]);
        pos += parts->len[i];
    }
    if (p->sync) {
        int rc = sync_range(p, head, need);
        if (rc < 0)
            return rc; /* nothing published: the message is not sent */
    }
    __atomic_store_n(p->head_p, head + need, __ATOMIC_RELEASE);
    return 0;
}

/* Consumer, holding its lock: the length of the next message, its position in *tail, or -EAGAIN
 * (empty), -EPROTO (corrupt cursors), -EBADMSG (a corrupt record header).  Changes nothing shared. */
static long long peek_locked(MpmcPort *p, uint64_t *tail_out, uint64_t *head_out)
{
    uint64_t tail = __atomic_load_n(p->tail_p, __ATOMIC_RELAXED), head = p->seen_head;
    if ((int64_t)(head - tail) <= 0) {
        head = ld_acq(p->head_p);
        p->seen_head = head;
    }
    *tail_out = tail;
    *head_out = head;
    if (head == tail)
        return -EAGAIN;
    if (head - tail > p->cap || ((head | tail) & 7))
        return -EPROTO;
    uint32_t hdr[2];
    memcpy(hdr, p->data + (tail & p->mask), REC_HEADER);
    if (hdr[1] != ~hdr[0] || rec_size(hdr[0]) > head - tail)
        return -EBADMSG;
    return hdr[0];
}

/* Consumer, holding its lock: the message length (copied into out), -EAGAIN, -EPROTO, -ENOBUFS (out
 * is too small: p->needed) or -EBADMSG (a corrupt record: everything pending was discarded, since the
 * next record boundary cannot be trusted). */
static long long pop_locked(MpmcPort *p, char *out, uint64_t room)
{
    uint64_t tail, head;
    long long n = peek_locked(p, &tail, &head);
    if (n == -EBADMSG)
        __atomic_store_n(p->tail_p, head, __ATOMIC_RELEASE);
    if (n < 0)
        return n;
    if ((uint64_t)n > room) {
        p->needed = (uint64_t)n;
        return -ENOBUFS;
    }
    copy_out(p, tail + REC_HEADER, out, (uint64_t)n);
    __atomic_store_n(p->tail_p, tail + rec_size((uint64_t)n), __ATOMIC_RELEASE);
    return n;
}

/* Poke the sockets of the armed fd users (see FdWake in _mpmc.py); a name nobody binds any more
 * frees its slot.  Runs after the producer's fence, so an arming consumer is never missed. */
static void wake_fd_slots(MpmcPort *p)
{
    if (!p->has_sender) {
        if ((p->sender = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0)
            return;
        p->has_sender = 1;
    }
    for (int i = 0; i < FD_SLOTS; i++) {
        uint64_t *token_p = (uint64_t *)(p->base + OFF_FD_SLOTS + i * FD_SLOT_SIZE), *armed_p = token_p + 1;
        uint64_t one = 1;
        if (!__atomic_load_n(armed_p, __ATOMIC_RELAXED) ||
            !__atomic_compare_exchange_n(armed_p, &one, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
            continue;
        __atomic_sub_fetch(p->fdarm_p, 1, __ATOMIC_SEQ_CST);
        uint64_t token = __atomic_load_n(token_p, __ATOMIC_ACQUIRE);
        if (token == 0)
            continue;
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        int len = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, FD_NAME_FORMAT, (unsigned long long)token);
        socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len);
        if (sendto(p->sender, "!", 1, 0, (struct sockaddr *)&a, alen) < 0 &&
            (errno == ECONNREFUSED || errno == ENOENT))
            __atomic_compare_exchange_n(token_p, &token, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
    }
}

static long long attempt(MpmcPort *p, int producer, const Parts *parts, char *out, uint64_t room)
{
    if (producer) {
        int rc = push_locked(p, parts);
        pthread_mutex_unlock(p->plock);
        if (rc == 0) {
            if (p->sync && (rc = sync_header(p)) < 0)
                return rc;
            wake_sleepers(p->csleep_p, p->head_p);
            if (__atomic_load_n(p->fdarm_p, __ATOMIC_RELAXED))
                wake_fd_slots(p);
        }
        return rc;
    }
    long long n = pop_locked(p, out, room);
    pthread_mutex_unlock(p->clock_);
    if (n >= 0 || n == -EBADMSG) {
        if (p->sync) {
            int rc = sync_header(p);
            if (rc < 0)
                return rc;
        }
        wake_sleepers(p->psleep_p, p->tail_p);
    }
    return n;
}

/* ---- waiting ------------------------------------------------------------------------------- */

/* Whether a producer with a record of `need` bytes (need == 0: a consumer) may stop waiting. */
static int ready(MpmcPort *p, uint64_t need)
{
    uint64_t head = ld_acq(p->head_p), tail = ld_acq(p->tail_p);
    if (head - tail > p->cap)
        return 1; /* corrupt (or torn between the two loads): let the locked attempt tell */
    return need ? head - tail + need <= p->cap : head != tail;
}

/* Without the GIL: wait until ready().  0 ready, -ETIMEDOUT, -EBADF, WAIT_SIGNALS or -errno. */
static int wait_slice(MpmcPort *p, uint64_t need, int has_deadline, long long deadline,
                      long long spin_until)
{
    uint32_t *flag = need ? p->psleep_p : p->csleep_p;
    uint64_t *cursor = need ? p->tail_p : p->head_p;
    long long now = now_ns(), slice_end = now + SIGNAL_SLICE_NS;
    for (unsigned i = 0; p->spin_ns < 0 || now < spin_until; i++) {
        if (ready(p, need))
            return 0;
        int rc;
        if ((i & 63) == 0 && (rc = spin_check(p, has_deadline, deadline, slice_end, &now)) != 0)
            return rc;
        cpu_relax();
    }
    for (;;) {
        if (__atomic_load_n(&p->closed, __ATOMIC_RELAXED))
            return -EBADF;
        __atomic_store_n(flag, 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint32_t seen = (uint32_t)__atomic_load_n(cursor, __ATOMIC_ACQUIRE);
        if (ready(p, need))
            return 0;
        now = now_ns();
        if (has_deadline && now >= deadline)
            return -ETIMEDOUT;
        long long left = SLEEP_SLICE_NS;
        if (has_deadline && deadline - now < left)
            left = deadline - now;
        struct timespec ts = {.tv_sec = left / 1000000000LL, .tv_nsec = left % 1000000000LL};
        long rc = syscall(SYS_futex, (uint32_t *)cursor, FUTEX_WAIT, seen, &ts, NULL, 0);
        /* A signal that arrived just before the sleep did not interrupt it: a whole slice slept is
         * the caller's cue to run the signal handlers (the spin phase is over, it comes back here). */
        if (rc < 0 && (errno == EINTR || errno == ETIMEDOUT))
            return WAIT_SIGNALS;
    }
}

/* ---- the operation loop -------------------------------------------------------------------- */

/* Without the GIL: lock, attempt, wait for the other side, until done.  >= 0, -errno or WAIT_SIGNALS. */
static long long exchange(MpmcPort *p, int op, const Parts *parts, char *out, uint64_t room,
                          int has_deadline, long long deadline, long long spin_until)
{
    int producer = op == OP_SEND;
    pthread_mutex_t *m = producer ? p->plock : p->clock_;
    uint64_t need = producer ? rec_size(parts->total) : 0;
    for (;;) {
        long long rc = lock_wait(p, m, has_deadline, deadline);
        if (rc != 0)
            return rc;
        rc = attempt(p, producer, parts, out, room);
        if (rc != -EAGAIN)
            return rc;
        if (has_deadline && now_ns() >= deadline)
            return -ETIMEDOUT;
        if ((rc = wait_slice(p, need, has_deadline, deadline, spin_until)) != 0)
            return rc;
    }
}

/* Run one send, receive or wait, as the port's mode says.  Called with the GIL; returns with it.
 * Returns >= 0 on success, -errno, or PY_ERROR with a Python exception set. */
static long long operate(MpmcPort *p, int op, const Parts *parts, char *out, uint64_t room,
                         PyObject *timeout_obj)
{
    struct timespec ts;
    int has_deadline;
    if (ipc_timeout_arg(timeout_obj, &ts, &has_deadline) < 0)
        return PY_ERROR;
    int zero = has_deadline && ts.tv_sec == 0 && ts.tv_nsec == 0;
    if (op == OP_WAIT) {
        if (ready(p, 0))
            return 0;
    } else if (op == OP_RECV || parts->total < GIL_FREE_BYTES) {
        /* The fast path keeps the GIL: an uncontended lock and a copy of modest size cost less than
         * releasing it.  (A consumer cannot know the size before it looks: it always tries.) */
        int producer = op == OP_SEND;
        int rc = lock_try(p, producer ? p->plock : p->clock_);
        if (rc < 0)
            return rc;
        if (rc == 0) {
            long long n = attempt(p, producer, parts, out, room);
            if (n != -EAGAIN)
                return n;
            if (zero)
                return -ETIMEDOUT;
        }
    }
    long long start = now_ns(), result;
    long long deadline = start + (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    long long spin_until = p->spin_ns < 0 ? LLONG_MAX : start + p->spin_ns;
    if (op != OP_SEND && p->spun)
        spin_until = start; /* try_recv just spun in vain: one spin phase per wait */
    p->spun = 0;
    p->inflight++;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        if (op == OP_WAIT)
            result = wait_slice(p, 0, has_deadline, deadline, spin_until);
        else
            result = exchange(p, op, parts, out, room, has_deadline, deadline, spin_until);
        Py_END_ALLOW_THREADS
        if (result != WAIT_SIGNALS)
            break;
        if (PyErr_CheckSignals() < 0) {
            result = PY_ERROR;
            break;
        }
    }
    p->inflight--;
    release_if_done(p, 0);
    return result;
}

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
    head = ld_acq((uint64_t *)(base + OFF_HEAD));
    tail = ld_acq((uint64_t *)(base + OFF_TAIL));
    if (((uintptr_t)base & (uintptr_t)(pagesize - 1)) != 0)
        bad = "the ring must start page aligned";
    else if (magic != MPMC_MAGIC || version != MPMC_VERSION)
        bad = "bad ring magic or version";
    else if (cap < MPMC_MIN_CAPACITY || (cap & (cap - 1)) || doff != MPMC_HEADER_SIZE ||
             (uint64_t)self->view.len < MPMC_HEADER_SIZE + cap)
        bad = "the ring capacity is not a power of two >= 4096 that fits the buffer";
    else if (head - tail > cap || ((head | tail) & 7))
        bad = "the ring cursors are out of range";
    if (bad) {
        PyErr_SetString(PyExc_ValueError, bad);
        PyBuffer_Release(&self->view);
        return -1;
    }
    self->has_view = 1;
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
    release_if_done(self, 1);
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
    if (rc == PY_ERROR)
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
            rc = PY_ERROR;
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
        else if ((rc = operate(self, OP_SEND, &parts, NULL, 0, args[1])) == 0)
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
    long long rc = operate(self, OP_RECV, NULL, out.buf, (uint64_t)out.len, args[1]);
    PyBuffer_Release(&out);
    return result_of(rc);
}

static PyObject *MpmcPort_wait(MpmcPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (usable(self, nargs, 1, "wait(timeout)") < 0)
        return NULL;
    return result_of(operate(self, OP_WAIT, NULL, NULL, 0, args[0]));
}

/* ---- the channel's fast path: complete the common case at once, else leave it to the general path */

static PyObject *MpmcPort_try_send(MpmcPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    long sid = 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "try_send(data, sid=0) takes 1 or 2 arguments");
        return NULL;
    }
    if (nargs == 2 && ((sid = PyLong_AsLong(args[1])) == -1 && PyErr_Occurred()))
        return NULL;
    if (sid < 0 || sid > 255) {
        PyErr_SetString(PyExc_ValueError, "sid is a serializer id 0-255");
        return NULL;
    }
    Py_buffer v;
    if (!self->has_view || self->closed || PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    uint64_t n = (uint64_t)v.len;
    unsigned char hdr[8] = {FRAME_MAGIC, (unsigned char)sid, 0, 0};
    uint32_t n32 = (uint32_t)n;
    memcpy(hdr + 4, &n32, 4);
    Parts parts = {.src = {(const char *)hdr, v.buf}, .len = {8, n}, .nparts = 2, .total = n + 8};
    int ok = !self->sync && n <= self->limit && n < GIL_FREE_BYTES && lock_try(self, self->plock) == 0 &&
             attempt(self, 1, &parts, NULL, 0) == 0;
    PyBuffer_Release(&v);
    return PyBool_FromLong(ok);
}

/* Without the GIL: spin up to ns for a pending record (the fast receive's brief wait).  1 if one is. */
static int spin_for(MpmcPort *p, long long ns)
{
    long long end = now_ns() + ns;
    for (unsigned i = 1;; i++) {
        if (ready(p, 0))
            return 1;
        if ((i & 63) == 0 && (now_ns() >= end || __atomic_load_n(&p->closed, __ATOMIC_RELAXED)))
            return 0;
        cpu_relax();
    }
}

static PyObject *MpmcPort_try_recv(MpmcPort *self, PyObject *unused)
{
    (void)unused;
    uint64_t tail, head;
    unsigned char hdr[8];
    uint32_t len;
    if (!self->has_view || self->closed || self->sync || self->fd_user)
        Py_RETURN_NONE;
    if (!ready(self, 0) && self->spin_ns != 0) {
        /* An empty ring: spin here (a reply often comes within microseconds, and the general path
         * costs more than that in Python); if in vain, the general path sleeps without spinning again. */
        long long ns = self->spin_ns < 0 || self->spin_ns > FAST_SPIN_MAX_NS ? FAST_SPIN_MAX_NS : self->spin_ns;
        int got;
        self->inflight++;
        Py_BEGIN_ALLOW_THREADS
        got = spin_for(self, ns);
        Py_END_ALLOW_THREADS
        self->inflight--;
        release_if_done(self, 0);
        self->spun = !got && self->spin_ns >= 0;
        if (!got || self->closed)
            Py_RETURN_NONE;
    }
    if (lock_try(self, self->clock_) != 0)
        Py_RETURN_NONE;
    long long n = peek_locked(self, &tail, &head);
    if (n >= 8) {
        memcpy(hdr, self->data + ((tail + REC_HEADER) & self->mask), 8); /* 8-aligned: never split */
        memcpy(&len, hdr + 4, 4);
    }
    /* Anything unusual (empty, corrupt, another frame format, too large) is the general path's. */
    if (n < 8 || hdr[0] != FRAME_MAGIC || hdr[2] || hdr[3] || len != (uint64_t)n - 8 || len > self->limit) {
        pthread_mutex_unlock(self->clock_);
        Py_RETURN_NONE;
    }
    PyObject *b = PyBytes_FromStringAndSize(NULL, len);
    if (b != NULL) {
        copy_out(self, tail + 2 * REC_HEADER, PyBytes_AS_STRING(b), len);
        __atomic_store_n(self->tail_p, tail + rec_size((uint64_t)n), __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(self->clock_);
    if (b != NULL)
        wake_sleepers(self->psleep_p, self->tail_p);
    return b;
}

static PyObject *MpmcPort_pending(MpmcPort *self, PyObject *unused)
{
    if (usable(self, 0, 0, "pending()") < 0)
        return NULL;
    (void)unused;
    return PyLong_FromUnsignedLongLong(ld_acq(self->head_p) - ld_acq(self->tail_p));
}

static PyObject *MpmcPort_close(MpmcPort *self, PyObject *unused)
{
    (void)unused;
    self->closed = 1;
    release_if_done(self, 0);
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
     "once (lock free, room, size within limit); False leaves everything to the general path."},
    {"try_recv", (PyCFunction)MpmcPort_try_recv, METH_NOARGS,
     "try_recv() -> bytes | None: take the next message's payload if it is an ordinary ipcraft frame "
     "within limit and can be taken at once; None leaves everything to the general path."},
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

static PyTypeObject MpmcPortType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipcraft._native.MpmcPort",
    .tp_basicsize = sizeof(MpmcPort),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "MpmcPort(buf, spin_ns=100000, sync=False, limit=-1): one process's handle on a multi-producer "
              "multi-consumer ring formatted in buf (see ipcraft/_mpmc.py).",
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
        "{sKsIsIsIsIsIsIsIsIsIsIsIsIsIsIsIsIsI}", "MAGIC", (unsigned long long)MPMC_MAGIC,
        "VERSION", MPMC_VERSION, "HEADER_SIZE", MPMC_HEADER_SIZE, "MIN_CAPACITY", MPMC_MIN_CAPACITY,
        "OFF_MAGIC", OFF_MAGIC, "OFF_VERSION", OFF_VERSION, "OFF_FLAGS", OFF_FLAGS, "OFF_CAPACITY",
        OFF_CAPACITY, "OFF_DATA", OFF_DATA, "OFF_CREATOR_PID", OFF_CREATOR_PID, "OFF_PRODUCER_LOCK",
        OFF_PRODUCER_LOCK, "OFF_HEAD", OFF_HEAD, "OFF_CONSUMER_LOCK", OFF_CONSUMER_LOCK, "OFF_TAIL",
        OFF_TAIL, "OFF_CONSUMERS_SLEEPING", OFF_CONSUMERS_SLEEPING, "OFF_PRODUCERS_SLEEPING",
        OFF_PRODUCERS_SLEEPING, "OFF_FD_ARMED", OFF_FD_ARMED, "OFF_FD_SLOTS", OFF_FD_SLOTS);
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
    if (PyType_Ready(&MpmcPortType) < 0)
        return -1;
    Py_INCREF(&MpmcPortType);
    if (PyModule_AddObject(m, "MpmcPort", (PyObject *)&MpmcPortType) < 0) {
        Py_DECREF(&MpmcPortType);
        return -1;
    }
    return PyModule_AddFunctions(m, mpmc_functions);
}
