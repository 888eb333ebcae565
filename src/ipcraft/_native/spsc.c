/* The single-producer single-consumer ring: push/pop with the copy, waits, wake-ups (see _rings/spsc.py).
 *
 * The layout (header page, cursor cache lines, record format) is described in _rings/spsc.py, which checks
 * at import that the constants in spsc.h match its own (spsc_layout()).  A SpscPort is one side of one
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
 * Operations return 0, a value, or -errno.  Waits run without the GIL, in slices: the caller
 * (spsc_port.c) takes the GIL between slices to run signal handlers (Ctrl-C interrupts a wait).
 */
#include "spsc.h"
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

void spsc_efd_signal(int fd)
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
static inline void wake_other(SpscPort *r, uint32_t *flag)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(flag, __ATOMIC_RELAXED) && __atomic_exchange_n(flag, 0, __ATOMIC_SEQ_CST))
        spsc_efd_signal(r->signal_fd);
}

void spsc_release_if_done(SpscPort *r)
{
    if (r->closed && r->inflight == 0 && r->has_view) {
        r->has_view = 0;
        PyBuffer_Release(&r->view);
    }
}

/* ---- producer ------------------------------------------------------------------------------- */

/* Whether this side's next message is a reply: its partner (the consumer port of the same connection,
 * see pair()) has taken a message since this side last placed one (reply_mark, set by to_front). */
static inline int is_reply(SpscPort *r)
{
    return r->partner != NULL && ((SpscPort *)r->partner)->consumed != r->reply_mark;
}

/* Free the shared region: after the consumer's last read of a message in it, or by a producer that
 * claimed it and then sent nothing (release: the region's bytes are done with before it is free). */
static inline void free_shared(SpscPort *r)
{
    __atomic_store_n(r->owner_p, 0, __ATOMIC_RELEASE);
}

/* Whether a record of n payload bytes (rec with its header) at ring offset p is worth sending from the
 * ring's front: a reply (this side's partner, the consumer port of the same connection, see pair(),
 * has taken a message since this side last placed one) of SPSC_REPLY_FRONT_MIN bytes or more, or any
 * record of SPSC_STREAM_FRONT_MIN or more, that fits before p (so p is not the front), on a busy
 * machine (asked last: it may read /proc).  Sets the reply mark either way. */
static int to_front(SpscPort *r, uint64_t n, uint64_t rec, uint64_t p)
{
    int replying = is_reply(r);
    if (r->partner != NULL)
        r->reply_mark = ((SpscPort *)r->partner)->consumed;
    return (n >= SPSC_STREAM_FRONT_MIN || (replying && n >= SPSC_REPLY_FRONT_MIN)) && rec <= p &&
           ipc_cpus_busy(ring_now_ns());
}

/* Where a record of n payload bytes goes: sets *pad (wrap padding first) and *adv (head advance).
 * Returns 0, -EAGAIN (not enough room now) or -EPROTO (the consumer's cursor is impossible).
 *
 * On a busy machine a large reply goes to the front of an empty ring (a wrap marker at the cursor, the
 * record at offset 0), not to the next place.  The two processes of a request/response exchange then
 * share one CPU, and every message lands in memory that CPU touched one round trip earlier instead of
 * in a part of the ring last touched megabytes ago: a 64 KiB round trip's four copies cost a fifth
 * less (benchmarks/copy_locality.py).  Not on an idle machine, where the processes run on two CPUs and
 * writing the lines the consumer has just read takes them back from its cache; for the same reason
 * not within a stream of smaller sends, which keeps filling the ring in order.  A stream of records
 * of SPSC_STREAM_FRONT_MIN bytes or more does go to the front of an emptied ring: spsc_push yields
 * the CPU after each, so the consumer sharing it drains the ring first, and the next record lands
 * where the last one was read, as a socket's recycled pages do (1 MiB one-way beside a CPU-bound
 * neighbour: 8.5-9.2 GB/s instead of 7.0-7.1, the bare seqpacket loop 8.4). */
int spsc_place(SpscPort *r, uint64_t n, uint64_t *pad, uint64_t *adv)
{
    uint64_t rec = rec_size(n), p = r->pos & r->mask;
    int front = to_front(r, n, rec, p);
    *pad = p + rec > r->cap ? r->cap - p : 0;
    *adv = *pad + rec;
    if (r->pos - r->seen + *adv <= r->cap && !front)
        return 0;
    uint64_t tail = ring_load_acquire(r->tail_p);
    if (r->pos - tail > r->cap || (tail & 7))
        return -EPROTO;
    r->seen = tail;
    if (front && tail == r->pos) { /* empty: all of the ring is free, [0, p) included */
        *pad = r->cap - p;
        *adv = *pad + rec;
        return 0;
    }
    return r->pos - tail + *adv <= r->cap ? 0 : -EAGAIN;
}

void spsc_put_header(char *rec, int sid, unsigned flags, uint32_t n)
{
    rec[0] = (char)REC_MAGIC;
    rec[1] = (char)sid;
    uint16_t f = (uint16_t)flags;
    memcpy(rec + 2, &f, 2);
    memcpy(rec + 4, &n, 4);
}

void spsc_publish(SpscPort *r, uint64_t adv)
{
    r->pos += adv;
    __atomic_store_n(r->head_p, r->pos, __ATOMIC_RELEASE);
    wake_other(r, r->cwait_p);
}

/* Place a record of n bytes at the private cursor and write its header (a wrap marker before it if
 * needed): sets *payload to where its n bytes go and *adv to how far head will move.  0, or -EAGAIN /
 * -EPROTO (spsc_place) with nothing written. */
static int begin_record(SpscPort *r, int sid, uint64_t n, char **payload, uint64_t *adv)
{
    uint64_t pad;
    int rc = spsc_place(r, n, &pad, adv);
    if (rc < 0)
        return rc;
    char *at = r->data + (r->pos & r->mask);
    if (pad) {
        spsc_put_header(at, 0, REC_FLAG_WRAP, 0);
        at = r->data;
    }
    spsc_put_header(at, sid, 0, (uint32_t)n);
    *payload = at + REC_HEADER;
    return 0;
}

/* Write one whole record at the private cursor and move it, unpublished (GIL held). */
static int write_record(SpscPort *r, int sid, const char *src, uint64_t n)
{
    char *payload;
    uint64_t adv;
    int rc = begin_record(r, sid, n, &payload, &adv);
    if (rc == 0) {
        memcpy(payload, src, n);
        r->pos += adv;
    }
    return rc;
}

/* Push up to k records (srcs[i], lens[i]) that fit now, each whole, then publish head once and wake
 * the consumer at most once: a batch costs one release store, one fence and one flag load.  Stops
 * before the first record that does not fit now or exceeds the limit.  Returns how many were pushed
 * (0 included), or -errno from the gate or -EPROTO when none was. */
long long spsc_push_many(SpscPort *r, int sid, const char *const *srcs, const uint64_t *lens, long long k)
{
    int rc = spsc_producer_gate(r, 0);
    long long done = 0;
    uint64_t start = r->pos;
    while (rc == 0 && done < k && lens[done] <= r->limit && (rc = write_record(r, sid, srcs[done], lens[done])) == 0)
        done++;
    if (r->pos != start) {
        uint64_t end = r->pos;
        r->pos = start;
        spsc_publish(r, end - start);
    }
    return done || rc == -EAGAIN ? done : rc;
}

int spsc_producer_gate(SpscPort *r, uint64_t n)
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

/* Whether a message of n payload bytes goes through the shared region, and if so claim it (then this
 * call owns it until the consumer has copied the message out).  Only a reply (the partner port has
 * taken a message since this side last placed one) of SPSC_SHARED_MIN bytes or more that fits.
 *
 * Why: a request/response exchange through two rings copies each message into the memory of its own
 * direction, last touched a round trip ago; the region holds the request and then the reply, so every
 * copy lands in memory the CPUs have just touched, as a socket's recycled pages do.  Measured: the
 * 1 MiB round trip falls by about a fifth, idle or busy.  A stream of sends (not replies) keeps to the
 * ring, and a claim that fails (the region still holds the peer's message) just uses the ring. */
static int claim_shared(SpscPort *r, uint64_t n)
{
    if (r->shared == NULL || n < SPSC_SHARED_MIN || n > r->shared_cap || !is_reply(r))
        return 0;
    uint32_t free_ = 0;
    return __atomic_load_n(r->owner_p, __ATOMIC_RELAXED) == 0 &&
           __atomic_compare_exchange_n(r->owner_p, &free_, r->shared_id, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

/* Push one record; the copy runs without the GIL when it is large (busy keeps other threads out). */
int spsc_push(SpscPort *r, int sid, const char *src, uint64_t n)
{
    uint64_t adv;
    char *payload;
    int rc = spsc_producer_gate(r, n);
    if (rc < 0)
        return rc;
    int shared = claim_shared(r, n);
    if (shared) {
        rc = begin_record(r, sid, 0, &payload, &adv);
        if (rc < 0) {
            free_shared(r);
            return rc;
        }
        spsc_put_header(payload - REC_HEADER, sid, REC_FLAG_SHARED, (uint32_t)n);
        spsc_put_header(r->shared - REC_HEADER, sid, 0, (uint32_t)n);
        payload = r->shared;
    } else {
        rc = begin_record(r, sid, n, &payload, &adv);
    }
    if (rc < 0)
        return rc;
    if (n >= GIL_FREE_COPY) {
        r->busy = 1;
        r->inflight++;
        Py_BEGIN_ALLOW_THREADS
        memcpy(payload, src, n);
        Py_END_ALLOW_THREADS
        r->inflight--;
        r->busy = 0;
        if (r->closed) { /* closed by another thread meanwhile: publish nothing */
            if (shared)
                free_shared(r);
            spsc_release_if_done(r);
            return -EBADF;
        }
    } else {
        memcpy(payload, src, n);
    }
    spsc_publish(r, adv);
    if (n >= SPSC_STREAM_FRONT_MIN && ipc_cpus_busy(ring_now_ns())) {
        /* A busy machine: let a consumer queued on this CPU take the record now (see spsc_place). */
        Py_BEGIN_ALLOW_THREADS
        sched_yield();
        Py_END_ALLOW_THREADS
    }
    return 0;
}

/* ---- consumer ------------------------------------------------------------------------------- */

/* Locate the next record: *rec its header, *n its payload length, *total how far tail moves past it
 * (a wrap marker before it included).  0, -EAGAIN (empty) or -EPROTO. */
int spsc_next_record(SpscPort *r, char **rec, uint64_t *n, uint64_t *total)
{
    if (r->pos == r->seen) {
        uint64_t head = ring_load_acquire(r->head_p);
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
    int shared = flags == REC_FLAG_SHARED && r->shared != NULL; /* the payload is in the region */
    if ((unsigned char)at[0] != REC_MAGIC || (flags != 0 && !shared))
        return -EPROTO;
    uint32_t len = __atomic_load_n((uint32_t *)(at + 4), __ATOMIC_RELAXED); /* read once */
    uint64_t size = shared ? REC_HEADER : rec_size(len);
    if (skip + size > avail || p + size > r->cap || (shared && len > r->shared_cap))
        return -EPROTO;
    if (shared) { /* the payload is in the shared region, which this side frees once it consumes it */
        r->shared_pending = 1;
        r->shared_pos = r->pos + skip;
        at = r->shared - REC_HEADER;
    }
    *rec = at;
    *n = len;
    *total = skip + size;
    return 0;
}

int spsc_consumer_gate(SpscPort *r)
{
    if (r->closed || !r->has_view)
        return -EBADF;
    if (r->producer)
        return -EINVAL;
    return r->busy ? -EBUSY : 0;
}

/* Level-triggered mode: make "the eventfd is readable" equal "a record is pending".
 * Invariant kept everywhere: consumer_waiting == 1 implies the eventfd counter is 0. */
void spsc_level_resync(SpscPort *r)
{
    efd_drain(r->wait_fd);
    __atomic_store_n(r->cwait_p, 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!spsc_empty(r) && __atomic_exchange_n(r->cwait_p, 0, __ATOMIC_SEQ_CST))
        spsc_efd_signal(r->wait_fd);
}

void spsc_level_sync(SpscPort *r)
{
    if (r->level && spsc_empty(r) && __atomic_load_n(r->cwait_p, __ATOMIC_SEQ_CST) != 1)
        spsc_level_resync(r);
}

/* Drop `total` bytes of records (one or many): one release store of tail, one wake-up at most. */
void spsc_consume(SpscPort *r, uint64_t total)
{
    if (r->shared_pending && r->shared_pos - r->pos < total) {
        r->shared_pending = 0;
        free_shared(r);
    }
    r->pos += total;
    r->consumed++;
    __atomic_store_n(r->tail_p, r->pos, __ATOMIC_RELEASE);
    wake_other(r, r->pwait_p);
    spsc_level_sync(r);
}

/* ---- waiting -------------------------------------------------------------------------------- */

/* Whether the wait is over.  Runs without the GIL, so it reads the cursors but changes nothing. */
static int ready(SpscPort *r, uint64_t n)
{
    if (!r->producer)
        return !spsc_empty(r);
    uint64_t rec = rec_size(n), p = r->pos & r->mask, tail = ring_load_acquire(r->tail_p);
    uint64_t adv = (p + rec > r->cap ? r->cap - p : 0) + rec;
    return r->pos - tail > r->cap || r->pos - tail + adv <= r->cap; /* a corrupt cursor: let send() say so */
}

int spsc_other_closed(SpscPort *r)
{
    return __atomic_load_n(r->producer ? r->cclosed_p : r->pclosed_p, __ATOMIC_ACQUIRE) != 0;
}

static int watch_fired(SpscPort *r)
{
    struct pollfd fds[4];
    for (int i = 0; i < r->nwatch; i++)
        fds[i] = (struct pollfd){.fd = r->watch_fds[i], .events = POLLIN};
    return r->nwatch && poll(fds, (nfds_t)r->nwatch, 0) > 0;
}

/* The other side is gone: clean close (-ESHUTDOWN) or death (-EPIPE); what it left is still served. */
static int gone(SpscPort *r, uint64_t n)
{
    if (__atomic_load_n(&r->closed, __ATOMIC_RELAXED))
        return -EBADF; /* we closed, and the descriptors being watched went with it */
    int closed = spsc_other_closed(r); /* read before the cursors: a producer closes after its last push */
    if (ready(r, n) && !(r->producer && closed))
        return 0;
    return closed ? -ESHUTDOWN : -EPIPE;
}

static int settle(SpscPort *r, uint64_t n)
{
    if (__atomic_load_n(&r->closed, __ATOMIC_RELAXED))
        return -EBADF;
    int closed = spsc_other_closed(r); /* read before the cursors: a producer closes after its last push */
    if (r->producer && closed)
        return -ESHUTDOWN;
    if (ready(r, n))
        return 0;
    return closed ? -ESHUTDOWN : 1;
}

/* One slice of a wait, without the GIL: returns 0 (ready), RING_WAIT_SIGNALS (take the GIL, run signal
 * handlers, come back) or -errno.  spin_until is when spinning stops and sleeping starts, or sooner
 * on a busy machine (ring_spin_futile in rings.h). */
int spsc_wait_slice(SpscPort *r, uint64_t n, int has_deadline, long long deadline, long long spin_until)
{
    uint32_t *flag = r->producer ? r->pwait_p : r->cwait_p;
    long long now = ring_now_ns(), start = now, slice_end = now + CHECK_SIGNALS_NS, next_watch = now;
    unsigned mask = RING_IDLE_ROUNDS - 1;
    if (r->producer && r->spin_ns >= 0 && ring_skip_spin(n, now))
        spin_until = now; /* room for a large record comes only after a large copy (rings.h) */
    for (unsigned i = 0; r->spin_ns < 0 || now < spin_until; i++) {
        int s = settle(r, n);
        if (s <= 0)
            return s;
        if ((i & mask) == 0) {
            now = ring_now_ns();
            if (has_deadline && now >= deadline)
                return -ETIMEDOUT;
            if (ring_spin_futile(start, now, r->spin_ns < 0, &mask))
                break; /* a busy machine: sleep now */
            if (now >= next_watch) {
                if (watch_fired(r))
                    return gone(r, n);
                next_watch = now + WATCH_NS;
            }
            if (now >= slice_end)
                return RING_WAIT_SIGNALS;
        }
        ring_cpu_relax();
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
                spsc_efd_signal(r->wait_fd);
            return s;
        }
        struct pollfd fds[5];
        fds[0] = (struct pollfd){.fd = r->wait_fd, .events = POLLIN};
        for (int i = 0; i < r->nwatch; i++)
            fds[i + 1] = (struct pollfd){.fd = r->watch_fds[i], .events = POLLIN};
        struct timespec ts, *tsp = NULL;
        if (has_deadline) {
            long long left = deadline - ring_now_ns();
            if (left < 0)
                left = 0;
            ts.tv_sec = left / 1000000000LL;
            ts.tv_nsec = left % 1000000000LL;
            tsp = &ts;
        }
        int rc = ppoll(fds, (nfds_t)(r->nwatch + 1), tsp, NULL);
        if (rc < 0)
            return errno == EINTR ? RING_WAIT_SIGNALS : -errno;
        if (rc == 0)
            return settle(r, n) == 0 ? 0 : -ETIMEDOUT;
        for (int i = 1; i <= r->nwatch; i++)
            if (fds[i].revents)
                return gone(r, n);
    }
}
