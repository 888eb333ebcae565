/* The multi-producer multi-consumer ring of ring:// and file:// (layout and reasons: ipcraft/_rings/mpmc.py).
 *
 * Two robust process-shared pthread mutexes serialise the producers among themselves and the consumers
 * among themselves; between the producer holding its lock and the consumer holding its lock the ring
 * is an ordinary single-producer single-consumer ring.  A record is written completely, then `head`
 * is published with one release store; a consumer reads `head` with an acquire load, copies the
 * record out, then publishes `tail` with one release store.  Publication being a single store is what
 * makes a crash at any instruction harmless: a producer killed before its store leaves bytes beyond
 * head that the next producer overwrites; a consumer killed before its store leaves the record for
 * the next consumer.  The kernel releases a dead holder's mutex (FUTEX_OWNER_DIED), the next locker
 * gets EOWNERDEAD, marks it consistent and carries on: there is nothing to repair.  Every lock
 * operation goes through robust.c, which refuses a lock whose words are corrupt (EPROTO), and every
 * cursor read from shared memory passes mpmc_cursors_ok() before it addresses the ring.
 *
 * Waiting: spin (briefly, yielding, on a busy machine: see rings.h), then sleep in FUTEX_WAIT on the
 * low 32 bits of the cursor the waiter needs to move (head for consumers, tail for producers), in
 * slices of SLEEP_SLICE_NS so that a wake-up lost with a killed process costs at most one slice.  Dekker's pattern: the waiter stores its side's "sleeping"
 * flag, fences, re-checks; the other side publishes its cursor, fences, reads the flag, and only then
 * pays for FUTEX_WAKE (of every sleeper: one flag serves all of them).
 *
 * Every operation runs without the GIL when it has to wait or copy much; a port pins its buffer, and
 * close() while another thread is inside an operation defers the release of the buffer until it
 * leaves.  Returns are 0, a count, or -errno; the Python side (_rings/mpmc.py) translates them.  The Python
 * type and the fast path live in mpmc_port.c, the shared declarations in mpmc.h.
 */
#include "mpmc.h"
#include "robust.h"
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

/* A spinner's periodic check: 0 go on, or -EBADF (closed), -ETIMEDOUT, RING_WAIT_SIGNALS (time to take the
 * GIL for signal handlers).  Sets *now. */
static int spin_check(MpmcPort *p, int has_deadline, long long deadline, long long slice_end,
                      long long *now)
{
    *now = ring_now_ns();
    if (__atomic_load_n(&p->closed, __ATOMIC_RELAXED))
        return -EBADF;
    if (has_deadline && *now >= deadline)
        return -ETIMEDOUT;
    return *now >= slice_end ? RING_WAIT_SIGNALS : 0;
}

/* ---- locks --------------------------------------------------------------------------------- */

/* What a lock attempt's result means here: 0 locked, 1 not now (EBUSY, ETIMEDOUT), or -EPROTO.
 * EOWNERDEAD is repaired: publication is one store, so whatever the dead holder left beyond the
 * cursors is simply not there (see the file comment).  These locks are the queue's own, so every
 * other result (a corrupt lock, ENOTRECOVERABLE or EDEADLK from scribbled words) means the header was
 * written by someone else: -EPROTO. */
static int lock_result(MpmcPort *p, pthread_mutex_t *m, int rc)
{
    if (rc == 0)
        return 0;
    if (rc == EBUSY || rc == ETIMEDOUT)
        return 1;
    if (rc == EOWNERDEAD && ipc_robust_consistent(m) == 0) {
        __atomic_add_fetch(&p->recovered, 1, __ATOMIC_RELAXED);
        return 0;
    }
    if (rc == EOWNERDEAD)
        ipc_robust_unlock(m);
    return -EPROTO;
}

/* 0 locked, 1 not now, or -EPROTO (see lock_result). */
int mpmc_lock_try(MpmcPort *p, pthread_mutex_t *m)
{
    return lock_result(p, m, ipc_robust_trylock(m));
}

/* Unlock a queue lock; -EPROTO if its words were corrupted meanwhile (then it may stay locked). */
int mpmc_unlock(pthread_mutex_t *m)
{
    return ipc_robust_unlock(m) == 0 ? 0 : -EPROTO;
}

/* Without the GIL: lock `m` by the deadline.  0, -ETIMEDOUT, -EBADF (closed meanwhile), RING_WAIT_SIGNALS
 * (take the GIL, run handlers, call again) or -errno. */
static int lock_wait(MpmcPort *p, pthread_mutex_t *m, int has_deadline, long long deadline)
{
    long long start = ring_now_ns(), slice_end = start + SIGNAL_SLICE_NS;
    for (unsigned i = 1;; i++) {
        int rc = mpmc_lock_try(p, m);
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
        ring_cpu_relax();
    }
    long long end = ring_now_ns() + SLEEP_SLICE_NS;
    if (has_deadline && deadline < end)
        end = deadline;
    struct timespec ts = {.tv_sec = end / 1000000000LL, .tv_nsec = end % 1000000000LL};
    int rc = lock_result(p, m, ipc_robust_clocklock(m, &ts));
    if (rc == 1)
        return has_deadline && ring_now_ns() >= deadline ? -ETIMEDOUT : RING_WAIT_SIGNALS;
    return rc;
}

/* Let go of the buffer and the socket once closed and no operation is running (GIL held). */
void mpmc_release_if_done(MpmcPort *p, int force)
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

void mpmc_copy_out(MpmcPort *p, uint64_t pos, char *dst, uint64_t n)
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


/* After publishing a cursor: wake that side's sleepers if its flag says any sleep (Dekker: fence, read). */
void mpmc_wake_sleepers(uint32_t *flag, uint64_t *cursor)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(flag, __ATOMIC_RELAXED) && __atomic_exchange_n(flag, 0, __ATOMIC_SEQ_CST))
        syscall(SYS_futex, (uint32_t *)cursor, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* ---- one attempt, the lock taken ----------------------------------------------------------- */


/* Producer, holding its lock: write one record at *head, unpublished, and advance *head past it.
 * 0, -EAGAIN (no room now) or -EPROTO, with nothing written. */
int mpmc_write_locked(MpmcPort *p, uint64_t *head, const Parts *parts)
{
    uint64_t need = rec_size(parts->total);
    if (!mpmc_cursors_ok(p->cap, *head, p->seen_tail) || *head - p->seen_tail + need > p->cap) {
        uint64_t tail = ring_load_acquire(p->tail_p);
        if (!mpmc_cursors_ok(p->cap, *head, tail))
            return -EPROTO;
        p->seen_tail = tail;
        if (*head - tail + need > p->cap)
            return -EAGAIN;
    }
    uint32_t hdr[2] = {(uint32_t)parts->total, ~(uint32_t)parts->total};
    memcpy(p->data + (*head & p->mask), hdr, REC_HEADER); /* 8-aligned: never split */
    uint64_t pos = *head + REC_HEADER;
    for (int i = 0; i < parts->nparts; i++) {
        copy_in(p, pos, parts->src[i], parts->len[i]);
        pos += parts->len[i];
    }
    *head += need;
    return 0;
}

/* Producer, holding its lock: 0 (published), -EAGAIN (no room now) or -EPROTO. */
static int push_locked(MpmcPort *p, const Parts *parts)
{
    uint64_t head = __atomic_load_n(p->head_p, __ATOMIC_RELAXED), need = rec_size(parts->total);
    int rc = mpmc_write_locked(p, &head, parts);
    if (rc < 0)
        return rc;
    head -= need;
    if (p->sync && (rc = sync_range(p, head, need)) < 0)
        return rc; /* nothing published: the message is not sent */
    __atomic_store_n(p->head_p, head + need, __ATOMIC_RELEASE);
    return 0;
}

/* Consumer, holding its lock: the length of the next message, its position in *tail, or -EAGAIN
 * (empty), -EPROTO (corrupt cursors), -EBADMSG (a corrupt record header).  Changes nothing shared. */
long long mpmc_peek_locked(MpmcPort *p, uint64_t *tail_out, uint64_t *head_out)
{
    *tail_out = __atomic_load_n(p->tail_p, __ATOMIC_RELAXED);
    return mpmc_peek_at(p, *tail_out, head_out);
}

/* mpmc_peek_locked at a tail of the caller's (a batch that has not published its progress yet). */
long long mpmc_peek_at(MpmcPort *p, uint64_t tail, uint64_t *head_out)
{
    uint64_t head = p->seen_head;
    if ((int64_t)(head - tail) <= 0) {
        head = ring_load_acquire(p->head_p);
        p->seen_head = head;
    }
    *head_out = head;
    if (head == tail)
        return -EAGAIN;
    if (!mpmc_cursors_ok(p->cap, head, tail))
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
    long long n = mpmc_peek_locked(p, &tail, &head);
    if (n == -EBADMSG)
        __atomic_store_n(p->tail_p, head, __ATOMIC_RELEASE);
    if (n < 0)
        return n;
    if ((uint64_t)n > room) {
        p->needed = (uint64_t)n;
        return -ENOBUFS;
    }
    mpmc_copy_out(p, tail + REC_HEADER, out, (uint64_t)n);
    __atomic_store_n(p->tail_p, tail + rec_size((uint64_t)n), __ATOMIC_RELEASE);
    return n;
}

/* Poke the sockets of the armed fd users (see FdWake in _rings/mpmc.py); a name nobody binds any more
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

/* After head moved (the producer lock released): wake the sleeping consumers and the armed fd users. */
void mpmc_wake_consumers(MpmcPort *p)
{
    mpmc_wake_sleepers(p->csleep_p, p->head_p);
    if (__atomic_load_n(p->fdarm_p, __ATOMIC_RELAXED))
        wake_fd_slots(p);
}

long long mpmc_attempt(MpmcPort *p, int producer, const Parts *parts, char *out, uint64_t room)
{
    if (producer) {
        int rc = push_locked(p, parts);
        int urc = mpmc_unlock(p->plock);
        if (urc != 0 && rc == 0)
            rc = urc; /* published, but the lock's words are corrupt: report it */
        if (rc == 0) {
            if (p->sync && (rc = sync_header(p)) < 0)
                return rc;
            mpmc_wake_consumers(p);
        }
        return rc;
    }
    long long n = pop_locked(p, out, room);
    int urc = mpmc_unlock(p->clock_);
    if (urc != 0)
        return urc; /* what was taken is lost with the corrupt lock: the queue must be made anew */
    if (n >= 0 || n == -EBADMSG) {
        if (p->sync) {
            int rc = sync_header(p);
            if (rc < 0)
                return rc;
        }
        mpmc_wake_sleepers(p->psleep_p, p->tail_p);
    }
    return n;
}

/* ---- waiting ------------------------------------------------------------------------------- */

/* Whether a producer with a record of `need` bytes (need == 0: a consumer) may stop waiting. */
int mpmc_ready(MpmcPort *p, uint64_t need)
{
    uint64_t head = ring_load_acquire(p->head_p), tail = ring_load_acquire(p->tail_p);
    if (head - tail > p->cap)
        return 1; /* corrupt (or torn between the two loads): let the locked attempt tell */
    return need ? head - tail + need <= p->cap : head != tail;
}

/* Without the GIL: wait until mpmc_ready(), spinning until spin_until (sooner on a busy machine, see
 * rings.h), then sleeping.  0 ready, -ETIMEDOUT, -EBADF, RING_WAIT_SIGNALS or -errno. */
static int wait_slice(MpmcPort *p, uint64_t need, int has_deadline, long long deadline,
                      long long spin_until)
{
    uint32_t *flag = need ? p->psleep_p : p->csleep_p;
    uint64_t *cursor = need ? p->tail_p : p->head_p;
    long long now = ring_now_ns(), start = now, slice_end = now + SIGNAL_SLICE_NS;
    unsigned mask = RING_IDLE_ROUNDS - 1;
    if (p->spin_ns >= 0 && ring_skip_spin(need, now))
        spin_until = now; /* room for a large record comes only after a large copy (rings.h) */
    for (unsigned i = 0; p->spin_ns < 0 || now < spin_until; i++) {
        if (mpmc_ready(p, need))
            return 0;
        if ((i & mask) == 0) {
            int rc = spin_check(p, has_deadline, deadline, slice_end, &now);
            if (rc != 0)
                return rc;
            if (ring_spin_futile(start, now, p->spin_ns < 0, &mask))
                break; /* a busy machine: sleep now (rings.h) */
        }
        ring_cpu_relax();
    }
    for (;;) {
        if (__atomic_load_n(&p->closed, __ATOMIC_RELAXED))
            return -EBADF;
        __atomic_store_n(flag, 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint32_t seen = (uint32_t)__atomic_load_n(cursor, __ATOMIC_ACQUIRE);
        if (mpmc_ready(p, need))
            return 0;
        now = ring_now_ns();
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
            return RING_WAIT_SIGNALS;
    }
}

/* ---- the operation loop -------------------------------------------------------------------- */

/* Without the GIL: lock, attempt, wait for the other side, until done.  >= 0, -errno or RING_WAIT_SIGNALS. */
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
        rc = mpmc_attempt(p, producer, parts, out, room);
        if (rc != -EAGAIN)
            return rc;
        if (has_deadline && ring_now_ns() >= deadline)
            return -ETIMEDOUT;
        if ((rc = wait_slice(p, need, has_deadline, deadline, spin_until)) != 0)
            return rc;
    }
}

/* One operation's arguments, for ring_wait_loop. */
struct mpmc_op {
    MpmcPort *p;
    int op;
    const Parts *parts;
    char *out;
    uint64_t room;
    int has_deadline;
    long long deadline, spin_until;
};

static long long mpmc_op_slice(void *ctx)
{
    struct mpmc_op *o = ctx;
    if (o->op == OP_WAIT)
        return wait_slice(o->p, 0, o->has_deadline, o->deadline, o->spin_until);
    return exchange(o->p, o->op, o->parts, o->out, o->room, o->has_deadline, o->deadline, o->spin_until);
}

/* Run one send, receive or wait, as the port's mode says.  Called with the GIL; returns with it.
 * Returns >= 0 on success, -errno, or RING_PY_ERROR with a Python exception set. */
long long mpmc_operate(MpmcPort *p, int op, const Parts *parts, char *out, uint64_t room,
                         PyObject *timeout_obj)
{
    struct timespec ts;
    int has_deadline;
    if (ipc_timeout_arg(timeout_obj, &ts, &has_deadline) < 0)
        return RING_PY_ERROR;
    int zero = has_deadline && ts.tv_sec == 0 && ts.tv_nsec == 0;
    if (op == OP_WAIT) {
        if (mpmc_ready(p, 0))
            return 0;
    } else if (op == OP_RECV || parts->total < GIL_FREE_BYTES) {
        /* The fast path keeps the GIL: an uncontended lock and a copy of modest size cost less than
         * releasing it.  (A consumer cannot know the size before it looks: it always tries.) */
        int producer = op == OP_SEND;
        int rc = mpmc_lock_try(p, producer ? p->plock : p->clock_);
        if (rc < 0)
            return rc;
        if (rc == 0) {
            long long n = mpmc_attempt(p, producer, parts, out, room);
            if (n != -EAGAIN)
                return n;
            if (zero)
                return -ETIMEDOUT;
        }
    }
    long long start = ring_now_ns(), result;
    long long deadline = start + (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    long long spin_until = p->spin_ns < 0 ? LLONG_MAX : start + (op == OP_SEND ? p->spin_ns : p->spin_cur);
    long long began = start;
    if (op != OP_SEND && p->spun) {
        spin_until = start; /* try_recv just spun in vain: one spin phase per wait */
        began = p->wait_t0;
    }
    p->spun = 0;
    struct mpmc_op o = {p, op, parts, out, room, has_deadline, deadline, spin_until};
    p->inflight++;
    result = ring_wait_loop(mpmc_op_slice, &o);
    p->inflight--;
    if (op != OP_SEND && result >= 0 && p->spin_ns >= 0)
        p->spin_cur = ring_adapt_spin(p->spin_ns, ring_now_ns() - began); /* rings.h */
    mpmc_release_if_done(p, 0);
    return result;
}

