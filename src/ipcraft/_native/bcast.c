/* The broadcast ring of bcast:// (layout and reasons: ipcraft/_rings/bcast.py).
 *
 * One data area, many readers.  Publishers serialise on one robust process-shared mutex; each
 * subscriber owns a slot of the subscriber table with its own cursor.  A record is written beyond
 * `head` and published with one release store of `head`, so a publisher killed at any instruction
 * leaves nothing half-published.  Before writing, a publisher raises `intent` (the end of the bytes it
 * is about to overwrite, plus the capacity behind it) and advances `oldest` past every record those
 * bytes destroy: a reader copies a record out, then re-reads `intent` (acquire fence first: the seqlock
 * pattern) and keeps the copy only if `intent <= cursor + capacity`, i.e. nobody started overwriting
 * it.  That single check makes drop mode safe (a lapped reader learns it was lapped, never keeps torn
 * bytes) and block mode safe against eviction; in block mode a publisher also waits until the slowest
 * live subscriber leaves room, and evicts a dead one (pid gone, or its start time differs: a reused
 * pid) or one that made no progress for slow_timeout.
 *
 * Every value read from shared memory is checked before it is used (cursors against head and the
 * capacity, record lengths against the largest message, the length's complement, the sequence
 * number against the one expected): a process that scribbles on the ring gets -EPROTO, never a wild
 * copy.  Returns are 0, a count or -errno; ipcraft/_rings/bcast.py translates them.
 *
 * Names are bcast_-prefixed; the wait/spin helpers are native.h's, the Dekker wake is mpmc.c's
 * mpmc_wake_sleepers().
 */
#include "mpmc.h" /* mpmc_wake_sleepers, the slice lengths; mpmc.h includes rings.h */
#include "robust.h" /* the publishers' lock: its words are checked before glibc reads them */
#include <structmember.h>
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#define BCAST_MAGIC 0x4254464152435049ULL /* b"IPCRAFTB" little-endian */
#define BCAST_VERSION 1u
#define BCAST_HEADER_SIZE 4096u
#define BCAST_MIN_CAPACITY 4096u
#define BO_MAGIC 0
#define BO_VERSION 8
#define BO_FLAGS 12
#define BO_CAPACITY 16
#define BO_DATA 24
#define BO_CREATOR_PID 32
#define BO_SLOTS 36
#define BO_SLOW_NS 40
#define BO_PUBLISHERS 48
#define BO_PUBLISHERS_EVER 52
#define BO_ENDED_CLEAN 56
#define BO_HIWATER 60
#define BO_FD_ARMED 64
#define BO_LOCK 128
#define BO_HEAD 192
#define BO_INTENT 200
#define BO_OLDEST 208
#define BO_LATEST 216
#define BO_NEXT_SEQ 224
#define BO_SUBS_SLEEPING 256
#define BO_BELL 264
#define BO_PUBS_SLEEPING 320
#define BO_PROGRESS 328
#define BO_PUB_TABLE 512
#define BO_PUB_SLOTS 32
#define BO_PUB_SLOT_SIZE 16
#define BO_SUB_TABLE 4096
#define BO_SUB_SLOT_SIZE 64
#define SO_CURSOR 0
#define SO_EXPECTED 8
#define SO_STATE 16
#define SO_PID 20
#define SO_START 24
#define SO_TOKEN 32
#define SO_ARMED 40
#define SO_MISSED 48
#define SLOT_FREE 0u
#define SLOT_LIVE 1u
#define SLOT_EVICTED 2u
#define FLAG_BLOCK 1u
#define BREC 16u
#define PAD_LEN 0xFFFFFFFFu
#define BCAST_FD_NAME "ipcraft-bcast-%016llx"
#define BSLICE_NS 10000000LL
#define PID_MAX_LIMIT 4194304u /* the kernel's largest pid_max */ /* a waiting publisher re-checks the slowest subscriber this often */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int has_view, closed, inflight;
    char *base, *data, *slotp;
    uint64_t cap, mask, maxrec, token;
    uint32_t nslots;
    int block, slot, reserved, sender, has_sender, nowait;
    long long spin_ns, slow_ns;
    pthread_mutex_t *lock;
    uint64_t *head_p, *intent_p, *oldest_p, *latest_p, *seq_p, *bell_p, *progress_p, *armed_p;
    uint32_t *subs_sleep_p, *pubs_sleep_p, *hiwater_p, *pubs_p;
    /* subscriber state (a copy of the slot's cursor and expected sequence number) */
    uint64_t cursor, expected, peeked, peeked_seq;
    int last_sid; /* the serializer id of the message try_recv() returned */
    uint64_t limit; /* the fast paths take payloads up to this size (max_message_size) */
    int fd_user;    /* a fileno() was given out: receives take the general path, which re-arms it */
    int taking;     /* inside try_recv_many: records copied beyond the published cursor */
    int fast_copy;  /* a fast receive is copying without the GIL: the general path must not move the cursor */
    /* publisher state: the record being written (send, or reserve() until commit()/abort()) */
    uint64_t rec_at, rec_end, rec_seq, seen_min;
    int blocked_who;                    /* the slowest subscriber a waiting publisher watches, */
    uint64_t blocked_cursor;            /* its cursor then, */
    long long blocked_since, checked_at; /* since when it has not moved, when its pid was last checked */
    unsigned long long needed, recovered, evicted;
} BcastPort;

static inline uint64_t brec_size(uint64_t n) { return BREC + ((n + 15) & ~(uint64_t)15); }
static inline uint64_t *u64at(char *p, size_t off) { return (uint64_t *)(p + off); }
static inline uint32_t *u32at(char *p, size_t off) { return (uint32_t *)(p + off); }

/* ---- process identity ---------------------------------------------------------------------- */

/* The start time of `pid` (field 22 of /proc/pid/stat, clock ticks since boot), or 0 if it is gone or a
 * zombie. */
static uint64_t bcast_start_time(uint32_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X')
        return 0; /* a zombie has exited: it reads nothing and publishes nothing any more */
    p++;
    for (int field = 3; field < 22 && p; field++) /* p: the space before field `field` (3: the state) */
        p = strchr(p + 1, ' ');
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

/* Whether the process that claimed a slot as (pid, start) still runs (a reused pid does not). */
static int bcast_alive(uint32_t pid, uint64_t start)
{
    if (pid == 0 || pid > PID_MAX_LIMIT)
        return 0; /* never kill(-n): a scribbled pid must not address a process group */
    if (kill((pid_t)pid, 0) < 0 && errno == ESRCH)
        return 0;
    if (start == 0)
        return 1; /* still being claimed: the start time comes next */
    return bcast_start_time(pid) == start;
}

/* ---- the lock ------------------------------------------------------------------------------ */

/* Repair after a publisher died holding the lock: walk from `latest` to `head` and take the sequence
 * number after the last record published (the dead one may have died between its head store and its
 * next_seq store).  Only published bytes are read; anything odd stops the walk. */
static void bcast_repair(BcastPort *p)
{
    uint64_t head = ring_load_acquire(p->head_p), pos = ring_load_acquire(p->latest_p), last = 0;
    int found = 0;
    for (int i = 0; i < 4 && pos < head && head - pos <= p->cap && !(pos & 15); i++) {
        uint64_t seq;
        uint32_t len, chk;
        char *r = p->data + (pos & p->mask);
        memcpy(&seq, r, 8);
        memcpy(&len, r + 8, 4);
        memcpy(&chk, r + 12, 4);
        if (chk != ~len)
            break;
        if (len == PAD_LEN) {
            pos = (pos | p->mask) + 1;
            continue;
        }
        if (len > p->maxrec)
            break;
        last = seq;
        found = 1;
        __atomic_store_n(p->latest_p, pos, __ATOMIC_RELEASE);
        pos += brec_size(len);
    }
    if (found && last + 1 > __atomic_load_n(p->seq_p, __ATOMIC_RELAXED))
        __atomic_store_n(p->seq_p, last + 1, __ATOMIC_RELEASE);
    p->recovered++;
}

/* What a lock attempt's result means (robust.c checks the mutex's words before glibc reads them):
 * 0 locked, 1 not now (EBUSY, ETIMEDOUT), or -EPROTO (the lock words were scribbled on: a corrupt lock,
 * ENOTRECOVERABLE, EDEADLK...).  EOWNERDEAD is repaired (bcast_repair). */
static int bcast_lock_result(BcastPort *p, int rc)
{
    if (rc == 0)
        return 0;
    if (rc == EBUSY || rc == ETIMEDOUT)
        return 1;
    if (rc == EOWNERDEAD && ipc_robust_consistent(p->lock) == 0) {
        bcast_repair(p);
        return 0;
    }
    if (rc == EOWNERDEAD)
        ipc_robust_unlock(p->lock);
    return -EPROTO;
}

static int bcast_lock(BcastPort *p, int has_deadline, long long deadline)
{
    for (unsigned i = 1;; i++) {
        int rc = bcast_lock_result(p, ipc_robust_trylock(p->lock));
        if (rc <= 0)
            return rc;
        if (p->nowait)
            return -EAGAIN;
        if ((i & 63) == 0) {
            if (__atomic_load_n(&p->closed, __ATOMIC_RELAXED))
                return -EBADF;
            if (i > 4096)
                break;
            sched_yield();
        }
        ring_cpu_relax();
    }
    for (;;) {
        long long end = ring_now_ns() + SLEEP_SLICE_NS;
        if (has_deadline && deadline < end)
            end = deadline;
        struct timespec ts = {.tv_sec = end / 1000000000LL, .tv_nsec = end % 1000000000LL};
        int rc = bcast_lock_result(p, ipc_robust_clocklock(p->lock, &ts));
        if (rc <= 0)
            return rc;
        if (has_deadline && ring_now_ns() >= deadline)
            return -ETIMEDOUT;
        if (__atomic_load_n(&p->closed, __ATOMIC_RELAXED))
            return -EBADF;
        return RING_WAIT_SIGNALS;
    }
}

/* ---- publishing ---------------------------------------------------------------------------- */

/* The smallest cursor of the live subscribers (head if none); *who its slot. */
static uint64_t bcast_min_cursor(BcastPort *p, uint64_t head, int *who)
{
    uint64_t best = head;
    uint32_t n = __atomic_load_n(p->hiwater_p, __ATOMIC_ACQUIRE);
    if (n > p->nslots)
        n = p->nslots;
    *who = -1;
    for (uint32_t i = 0; i < n; i++) {
        char *s = p->base + BO_SUB_TABLE + (size_t)i * BO_SUB_SLOT_SIZE;
        if (__atomic_load_n(u32at(s, SO_STATE), __ATOMIC_SEQ_CST) != SLOT_LIVE)
            continue;
        uint64_t c = __atomic_load_n(u64at(s, SO_CURSOR), __ATOMIC_ACQUIRE);
        if (head - c > p->cap) /* behind by more than the ring (a lapped or corrupt cursor): ignore */
            continue;
        if (c < best) {
            best = c;
            *who = (int)i;
        }
    }
    return best;
}

/* Evict slot `who` (LIVE -> EVICTED): the subscriber is told at its next read. */
static void bcast_evict(BcastPort *p, int who)
{
    char *s = p->base + BO_SUB_TABLE + (size_t)who * BO_SUB_SLOT_SIZE;
    uint32_t live = SLOT_LIVE;
    if (__atomic_compare_exchange_n(u32at(s, SO_STATE), &live, SLOT_EVICTED, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_RELAXED))
        p->evicted++;
}

/* Block mode, the lock held, without the GIL: wait until `end` fits behind the slowest live
 * subscriber, evicting dead or too-slow ones.  0, -ETIMEDOUT, -EBADF or RING_WAIT_SIGNALS. */
static int bcast_wait_room(BcastPort *p, uint64_t head, uint64_t end, int has_deadline, long long deadline)
{
    if (end - p->seen_min <= p->cap && !((int64_t)(head - p->seen_min) < 0))
        return 0;
    long long start = ring_now_ns(), slice_end = start + SIGNAL_SLICE_NS;
    for (;;) {
        int who;
        uint64_t m = bcast_min_cursor(p, head, &who);
        if (end - m <= p->cap) {
            p->seen_min = m;
            p->blocked_who = -1;
            return 0;
        }
        if (p->nowait)
            return -EAGAIN;
        long long now = ring_now_ns();
        if (who != p->blocked_who || m != p->blocked_cursor) {
            p->blocked_who = who;
            p->blocked_cursor = m;
            p->blocked_since = now;
        }
        if (now - p->checked_at >= BSLICE_NS) {
            p->checked_at = now;
            char *s = p->base + BO_SUB_TABLE + (size_t)who * BO_SUB_SLOT_SIZE;
            uint32_t pid = __atomic_load_n(u32at(s, SO_PID), __ATOMIC_ACQUIRE);
            uint64_t st = __atomic_load_n(u64at(s, SO_START), __ATOMIC_ACQUIRE);
            if (!bcast_alive(pid, st) || (p->slow_ns > 0 && now - p->blocked_since >= p->slow_ns)) {
                bcast_evict(p, who);
                continue;
            }
        }
        if (__atomic_load_n(&p->closed, __ATOMIC_RELAXED))
            return -EBADF;
        if (has_deadline && now >= deadline)
            return -ETIMEDOUT;
        if (now >= slice_end)
            return RING_WAIT_SIGNALS;
        if (p->spin_ns < 0 || now - start < p->spin_ns) {
            ring_cpu_relax();
            continue;
        }
        __atomic_store_n(p->pubs_sleep_p, 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint32_t seen = (uint32_t)__atomic_load_n(p->progress_p, __ATOMIC_ACQUIRE);
        if (end - bcast_min_cursor(p, head, &who) <= p->cap)
            continue;
        long long left = BSLICE_NS;
        if (has_deadline && deadline - now < left)
            left = deadline - now;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = left};
        syscall(SYS_futex, (uint32_t *)p->progress_p, FUTEX_WAIT, seen, &ts, NULL, 0);
    }
}

/* The lock held: make room for a record of `need` bytes (plus padding to skip the end of the data
 * area), advance `oldest` past what will be overwritten, raise `intent`.  Sets p->rec_at (the record's
 * position) and p->rec_end.  0 or -errno (the lock is still held). */
static int bcast_reserve_at(BcastPort *p, uint64_t head, uint64_t seq, uint64_t need, int has_deadline,
                            long long deadline)
{
    uint64_t oldest = __atomic_load_n(p->oldest_p, __ATOMIC_RELAXED);
    uint64_t intent = __atomic_load_n(p->intent_p, __ATOMIC_RELAXED);
    if ((head & 15) || head - oldest > p->cap || (int64_t)(intent - head) < 0 || intent - head > p->cap)
        return -EPROTO;
    uint64_t to_end = p->cap - (head & p->mask), at = head;
    if (need > to_end)
        at += to_end;
    uint64_t end = at + need;
    if (p->block) {
        int rc = bcast_wait_room(p, head, end, has_deadline, deadline);
        if (rc != 0)
            return rc;
    }
    if (end > intent)
        intent = end;
    uint64_t floor = intent - p->cap;
    while ((int64_t)(oldest - floor) < 0 && oldest < head) {
        uint32_t len, chk;
        char *r = p->data + (oldest & p->mask);
        memcpy(&len, r + 8, 4);
        memcpy(&chk, r + 12, 4);
        if (chk != ~len || (len != PAD_LEN && len > p->maxrec))
            return -EPROTO;
        oldest = len == PAD_LEN ? (oldest | p->mask) + 1 : oldest + brec_size(len);
    }
    if (oldest > head)
        return -EPROTO;
    if ((int64_t)(oldest - floor) < 0)
        oldest = floor > head ? head : floor; /* nothing left before head: the ring is empty */
    __atomic_store_n(p->oldest_p, oldest, __ATOMIC_RELEASE);
    __atomic_store_n(p->intent_p, intent, __ATOMIC_RELAXED);
    /* intent is visible before any byte below is changed: the writer's half of the seqlock pattern
     * (a reader copies, then an acquire fence, then re-reads intent: bcast_intact), for which a release
     * fence is enough (store-store order; on x86 only a compiler barrier).  A seq_cst fence here was an
     * mfence per send, stalled until the head line, which a spinning subscriber keeps reading, came back
     * from the subscriber's core.  No Dekker pair needs more: the publisher reads the cursors before
     * raising intent (a subscriber that publishes a cursor meanwhile re-checks intent after copying),
     * and bcast_publish's seq_cst fence orders head against the sleepers' flag. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    if (at != head) {
        char *r = p->data + (head & p->mask);
        uint32_t pad[2] = {PAD_LEN, 0};
        memcpy(r, &seq, 8);
        memcpy(r + 8, pad, 8);
    }
    p->rec_at = at;
    p->rec_end = end;
    p->rec_seq = seq;
    return 0;
}

/* The next record at the published head, with the next sequence number (the lock held). */
static int bcast_reserve(BcastPort *p, uint64_t need, int has_deadline, long long deadline)
{
    return bcast_reserve_at(p, __atomic_load_n(p->head_p, __ATOMIC_RELAXED),
                            __atomic_load_n(p->seq_p, __ATOMIC_RELAXED), need, has_deadline, deadline);
}

/* The lock held: the header of the reserved record of `len` bytes (its bytes are written). */
static void bcast_write_header(BcastPort *p, uint32_t len)
{
    char *r = p->data + (p->rec_at & p->mask);
    uint32_t hdr[2] = {len, ~len};
    memcpy(r, &p->rec_seq, 8);
    memcpy(r + 8, hdr, 8);
}

/* The lock held, records written up to `end`, the last at `last` with sequence number `seq`: publish
 * them with one store of head, unlock, wake the sleeping subscribers once. */
static void bcast_publish(BcastPort *p, uint64_t end, uint64_t last, uint64_t seq)
{
    __atomic_store_n(p->head_p, end, __ATOMIC_RELEASE);
    __atomic_store_n(p->latest_p, last, __ATOMIC_RELEASE);
    __atomic_store_n(p->seq_p, seq + 1, __ATOMIC_RELEASE);
    ipc_robust_unlock(p->lock);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(p->subs_sleep_p, __ATOMIC_RELAXED)) {
        __atomic_add_fetch(p->bell_p, 1, __ATOMIC_SEQ_CST);
        mpmc_wake_sleepers(p->subs_sleep_p, p->bell_p);
    }
}

/* The lock held, the payload written at rec_at + BREC: write the header, publish, unlock, wake. */
static void bcast_commit(BcastPort *p, uint32_t len)
{
    bcast_write_header(p, len);
    bcast_publish(p, p->rec_end, p->rec_at, p->rec_seq);
}

/* Poke the abstract sockets of the subscribers that armed their fileno() (see FdWake in _rings/bcast.py). */
static void bcast_poke(BcastPort *p)
{
    if (!__atomic_load_n(p->armed_p, __ATOMIC_RELAXED))
        return;
    if (!p->has_sender) {
        if ((p->sender = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0)
            return;
        p->has_sender = 1;
    }
    uint32_t n = __atomic_load_n(p->hiwater_p, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < n && i < p->nslots; i++) {
        char *s = p->base + BO_SUB_TABLE + (size_t)i * BO_SUB_SLOT_SIZE;
        uint64_t one = 1;
        if (!__atomic_load_n(u64at(s, SO_ARMED), __ATOMIC_RELAXED) ||
            !__atomic_compare_exchange_n(u64at(s, SO_ARMED), &one, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
            continue;
        __atomic_sub_fetch(p->armed_p, 1, __ATOMIC_SEQ_CST);
        uint64_t token = __atomic_load_n(u64at(s, SO_TOKEN), __ATOMIC_ACQUIRE);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        int len = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, BCAST_FD_NAME, (unsigned long long)token);
        socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len);
        (void)sendto(p->sender, "!", 1, 0, (struct sockaddr *)&a, alen);
    }
}

/* ---- subscribing --------------------------------------------------------------------------- */

static inline int bcast_intact(BcastPort *p, uint64_t pos)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return __atomic_load_n(p->intent_p, __ATOMIC_ACQUIRE) <= pos + p->cap;
}

static inline int bcast_mine(BcastPort *p)
{
    return __atomic_load_n(u32at(p->slotp, SO_STATE), __ATOMIC_SEQ_CST) == SLOT_LIVE &&
           __atomic_load_n(u64at(p->slotp, SO_TOKEN), __ATOMIC_RELAXED) == p->token;
}

/* Find the next record at the cursor without consuming it: its length (the payload starts at
 * p->data + (p->peeked & mask) + BREC), -EAGAIN (nothing new), -EOVERFLOW (lapped), -ESTALE (evicted),
 * -EPROTO (corrupt).  Pad records are skipped (the cursor moves past them). */
static long long bcast_peek(BcastPort *p)
{
    for (;;) {
        if (!bcast_mine(p))
            return -ESTALE;
        uint64_t c = p->cursor, head = ring_load_acquire(p->head_p);
        if (c == head)
            return -EAGAIN;
        if (head - c > p->cap || (int64_t)(head - c) < 0 || (c & 15))
            return bcast_intact(p, c) ? -EPROTO : -EOVERFLOW;
        char *r = p->data + (c & p->mask);
        uint64_t seq;
        uint32_t len, chk;
        memcpy(&seq, r, 8);
        memcpy(&len, r + 8, 4);
        memcpy(&chk, r + 12, 4);
        if (!bcast_intact(p, c))
            return -EOVERFLOW;
        if (chk != ~len)
            return -EPROTO;
        if (len == PAD_LEN) {
            uint64_t next = (c | p->mask) + 1;
            if (next > head)
                return -EPROTO;
            p->cursor = next;
            if (!p->taking) /* (a batch publishes its cursor once, after checking what it copied) */
                __atomic_store_n(u64at(p->slotp, SO_CURSOR), next, __ATOMIC_RELEASE);
            continue;
        }
        if (len > p->maxrec || brec_size(len) > head - c || (c & p->mask) + brec_size(len) > p->cap ||
            (p->expected != 0 && seq != p->expected))
            return -EPROTO;
        p->peeked = c;
        p->peeked_seq = seq;
        return len;
    }
}

/* Consume the peeked record of `len` bytes: check it was not overwritten meanwhile (-EOVERFLOW),
 * or that this subscriber was not evicted (-ESTALE), then advance the cursor and wake a waiting
 * publisher. */
static int bcast_consume(BcastPort *p, uint64_t len)
{
    uint64_t c = p->peeked;
    if (!bcast_intact(p, c))
        return bcast_mine(p) ? -EOVERFLOW : -ESTALE;
    uint64_t next = c + brec_size(len);
    p->cursor = next;
    p->expected = p->peeked_seq + 1;
    __atomic_store_n(u64at(p->slotp, SO_EXPECTED), p->expected, __ATOMIC_RELAXED);
    __atomic_store_n(u64at(p->slotp, SO_CURSOR), next, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(p->pubs_sleep_p, __ATOMIC_SEQ_CST)) {
        __atomic_add_fetch(p->progress_p, 1, __ATOMIC_SEQ_CST);
        mpmc_wake_sleepers(p->pubs_sleep_p, p->progress_p);
    }
    return 0;
}

/* Every publisher that ever attached has left (closed, or was found dead and reaped). */
static inline int bcast_ended(BcastPort *p)
{
    return __atomic_load_n(p->pubs_p, __ATOMIC_ACQUIRE) == 0 && __atomic_load_n(p->pubs_p + 1, __ATOMIC_ACQUIRE) != 0;
}

/* Without the GIL: wait until head differs from `pos` (or the publishers are gone: -EPIPE): spin until
 * spin_until, then sleep on the bell.  wait="spin" spins for ever, yielding at each check on a busy
 * machine (ring_spin_futile).  wait="block" keeps its full spin on a busy machine: cutting it short
 * there (as shm:// does) measured 50-56 us p50 instead of 16-17 us with 3 subscribers on 2 CPUs,
 * where every message then costs a sleep and a wake-up.
 * 0, -ETIMEDOUT, -EBADF, -EPIPE or RING_WAIT_SIGNALS. */
static int bcast_wait_head(BcastPort *p, uint64_t pos, int has_deadline, long long deadline, long long spin_until)
{
    long long now = ring_now_ns(), start = now, slice_end = now + SIGNAL_SLICE_NS;
    unsigned mask = RING_IDLE_ROUNDS - 1;
    for (unsigned i = 0;; i++) {
        if (ring_load_acquire(p->head_p) != pos)
            return 0;
        if (bcast_ended(p)) /* the last publisher's close comes after its last head store: look again */
            return ring_load_acquire(p->head_p) != pos ? 0 : -EPIPE;
        if (p->nowait)
            return -EAGAIN;
        if ((i & mask) == 0) {
            now = ring_now_ns();
            if (__atomic_load_n(&p->closed, __ATOMIC_RELAXED))
                return -EBADF;
            if (has_deadline && now >= deadline)
                return -ETIMEDOUT;
            if (now >= slice_end)
                return RING_WAIT_SIGNALS;
            if (p->spin_ns < 0) /* wait="spin" never sleeps: on a busy machine it yields at each check */
                (void)ring_spin_futile(start, now, 1, &mask);
        }
        if (p->spin_ns < 0 || now < spin_until) {
            ring_cpu_relax();
            continue;
        }
        __atomic_store_n(p->subs_sleep_p, 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint32_t seen = (uint32_t)__atomic_load_n(p->bell_p, __ATOMIC_ACQUIRE);
        if (ring_load_acquire(p->head_p) != pos || bcast_ended(p))
            continue;
        long long left = SLEEP_SLICE_NS;
        if (has_deadline && deadline - now < left)
            left = deadline - now;
        struct timespec ts = {.tv_sec = left / 1000000000LL, .tv_nsec = left % 1000000000LL};
        long rc = syscall(SYS_futex, (uint32_t *)p->bell_p, FUTEX_WAIT, seen, &ts, NULL, 0);
        if (rc < 0 && (errno == EINTR || errno == ETIMEDOUT))
            return RING_WAIT_SIGNALS;
        now = ring_now_ns();
    }
}

/* ---- the Python type ----------------------------------------------------------------------- */

static int BcastPort_init(BcastPort *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buf", "slot", "token", "spin_ns", NULL};
    PyObject *buf;
    int slot = -1;
    unsigned long long token = 0;
    long long spin_ns = 100000;
    if (self->has_view || self->closed) {
        PyErr_SetString(PyExc_TypeError, "BcastPort is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|iKL:BcastPort", kwlist, &buf, &slot, &token, &spin_ns))
        return -1;
    if (PyObject_GetBuffer(buf, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    char *base = ipc_buffer_at(&self->view, 0, BCAST_HEADER_SIZE);
    if (base == NULL) {
        PyBuffer_Release(&self->view);
        return -1;
    }
    uint64_t magic, cap, doff, slow;
    uint32_t version, flags, nslots;
    memcpy(&magic, base + BO_MAGIC, 8);
    memcpy(&version, base + BO_VERSION, 4);
    memcpy(&flags, base + BO_FLAGS, 4);
    memcpy(&cap, base + BO_CAPACITY, 8);
    memcpy(&doff, base + BO_DATA, 8);
    memcpy(&nslots, base + BO_SLOTS, 4);
    memcpy(&slow, base + BO_SLOW_NS, 8);
    const char *bad = NULL;
    uint64_t table_end = BO_SUB_TABLE + (uint64_t)nslots * BO_SUB_SLOT_SIZE;
    if (((uintptr_t)base & 4095) != 0)
        bad = "the ring must start page aligned";
    else if (magic != BCAST_MAGIC || version != BCAST_VERSION)
        bad = "bad ring magic or version";
    else if (cap < BCAST_MIN_CAPACITY || (cap & (cap - 1)) || nslots == 0 || nslots > 65536 ||
             doff < table_end || (doff & 4095) || doff > (uint64_t)self->view.len ||
             (uint64_t)self->view.len - doff < cap || slow > (uint64_t)LLONG_MAX)
        bad = "the ring header is out of range";
    else if (slot >= (int)nslots)
        bad = "slot out of range";
    if (bad) {
        PyErr_SetString(PyExc_ValueError, bad);
        PyBuffer_Release(&self->view);
        return -1;
    }
    self->has_view = 1;
    self->base = base;
    self->data = base + doff;
    self->cap = cap;
    self->mask = cap - 1;
    self->maxrec = cap / 2 - BREC;
    self->nslots = nslots;
    self->block = (flags & FLAG_BLOCK) != 0;
    self->slow_ns = (long long)slow;
    self->spin_ns = spin_ns;
    self->lock = (pthread_mutex_t *)(base + BO_LOCK);
    self->head_p = u64at(base, BO_HEAD);
    self->intent_p = u64at(base, BO_INTENT);
    self->oldest_p = u64at(base, BO_OLDEST);
    self->latest_p = u64at(base, BO_LATEST);
    self->seq_p = u64at(base, BO_NEXT_SEQ);
    self->bell_p = u64at(base, BO_BELL);
    self->progress_p = u64at(base, BO_PROGRESS);
    self->armed_p = u64at(base, BO_FD_ARMED);
    self->subs_sleep_p = u32at(base, BO_SUBS_SLEEPING);
    self->pubs_sleep_p = u32at(base, BO_PUBS_SLEEPING);
    self->hiwater_p = u32at(base, BO_HIWATER);
    self->pubs_p = u32at(base, BO_PUBLISHERS);
    self->slot = slot;
    self->token = token;
    self->blocked_who = -1; /* not waiting for anyone (slot 0 at cursor 0 is a real case) */
    self->limit = UINT64_MAX;
    if (slot >= 0) {
        self->slotp = base + BO_SUB_TABLE + (size_t)slot * BO_SUB_SLOT_SIZE;
        self->cursor = ring_load_acquire(u64at(self->slotp, SO_CURSOR));
        self->expected = ring_load_acquire(u64at(self->slotp, SO_EXPECTED));
    }
    return 0;
}

static void bcast_release(BcastPort *self)
{
    if (self->closed && self->inflight == 0 && self->has_view) {
        self->has_view = 0;
        PyBuffer_Release(&self->view);
    }
    if (self->closed && self->inflight == 0 && self->has_sender) {
        self->has_sender = 0;
        close(self->sender);
    }
}

static void BcastPort_dealloc(BcastPort *self)
{
    if (self->reserved && self->has_view) {
        self->reserved = 0;
        ipc_robust_unlock(self->lock);
    }
    self->closed = 1;
    self->inflight = 0;
    bcast_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int bcast_usable(BcastPort *self, int subscriber)
{
    if (self->closed || !self->has_view) {
        PyErr_SetString(PyExc_ValueError, "BcastPort is closed");
        return 0;
    }
    if (self->fast_copy) { /* another thread's recv()/recv_bytes() is copying a large message out */
        PyObject *errors = PyImport_ImportModule("ipcraft.errors");
        PyObject *busy = errors ? PyObject_GetAttrString(errors, "Busy") : NULL;
        if (busy != NULL)
            PyErr_SetString(busy, "another thread is already receiving on this handle");
        Py_XDECREF(busy);
        Py_XDECREF(errors);
        return 0;
    }
    if (subscriber != (self->slot >= 0)) {
        PyErr_SetString(PyExc_TypeError, subscriber ? "a publisher's port cannot receive"
                                                    : "a subscriber's port cannot publish");
        return 0;
    }
    return 1;
}

/* Run `step` (a reserve or a receive attempt) with waits between attempts, GIL released while waiting. */
typedef long long (*bcast_step)(BcastPort *, void *, int, long long, long long);

typedef struct {
    BcastPort *p;
    bcast_step step;
    void *arg;
    int has_deadline;
    long long deadline, spin_until;
} BcastWait;

static long long bcast_slice(void *ctx)
{
    BcastWait *w = ctx;
    long long rc;
    do
        rc = w->step(w->p, w->arg, w->has_deadline, w->deadline, w->spin_until);
    while (rc == -EAGAIN);
    return rc;
}

static long long bcast_run(BcastPort *p, bcast_step step, void *arg, PyObject *timeout_obj)
{
    struct timespec ts;
    int has_deadline;
    if (ipc_timeout_arg(timeout_obj, &ts, &has_deadline) < 0)
        return RING_PY_ERROR;
    long long start = ring_now_ns();
    BcastWait w = {p, step, arg, has_deadline, start + (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec,
                   p->spin_ns < 0 ? LLONG_MAX : start + p->spin_ns};
    p->nowait = 1; /* the first attempt keeps the GIL and never waits */
    long long result = step(p, arg, has_deadline, w.deadline, w.spin_until);
    p->nowait = 0;
    if (result != -EAGAIN)
        return result;
    if (has_deadline && ts.tv_sec == 0 && ts.tv_nsec == 0)
        return -ETIMEDOUT;
    p->inflight++;
    result = ring_wait_loop(bcast_slice, &w);
    p->inflight--;
    bcast_release(p);
    return result;
}

/* One reserve attempt: lock, reserve.  Returns 0 with the lock held, or -errno / RING_WAIT_SIGNALS. */
static long long step_reserve(BcastPort *p, void *arg, int has_deadline, long long deadline, long long spin_until)
{
    (void)spin_until;
    int rc = bcast_lock(p, has_deadline, deadline);
    if (rc != 0)
        return rc;
    rc = bcast_reserve(p, *(uint64_t *)arg, has_deadline, deadline);
    if (rc != 0)
        ipc_robust_unlock(p->lock);
    return rc;
}

/* One receive attempt: peek; if nothing, wait for head to move.  Returns the length or -errno. */
static long long step_peek(BcastPort *p, void *arg, int has_deadline, long long deadline, long long spin_until)
{
    (void)arg;
    long long n = bcast_peek(p);
    if (n != -EAGAIN)
        return n;
    int rc = bcast_wait_head(p, p->cursor, has_deadline, deadline, spin_until);
    return rc == 0 ? -EAGAIN : rc;
}

static PyObject *result_or_error(long long rc)
{
    if (rc == RING_PY_ERROR)
        return NULL;
    return PyLong_FromLongLong(rc);
}

/* Write ipcraft's 8-byte frame header of an n-byte payload of serializer sid into the reserved record;
 * where the payload goes. */
static char *bcast_write_frame(BcastPort *p, int sid, Py_ssize_t n)
{
    char *r = p->data + (p->rec_at & p->mask) + BREC;
    unsigned char frame[8] = {FRAME_MAGIC, (unsigned char)sid, 0, 0};
    uint32_t n32 = (uint32_t)n;
    memcpy(frame + 4, &n32, 4);
    memcpy(r, frame, 8);
    return r + 8;
}

/* send(sid, data, timeout): one message behind ipcraft's 8-byte frame header.  0 or -errno. */
static PyObject *BcastPort_send(BcastPort *self, PyObject *args)
{
    int sid;
    Py_buffer data;
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTuple(args, "iy*|O:send", &sid, &data, &timeout))
        return NULL;
    if (!bcast_usable(self, 0) || self->reserved) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "a send_view() reservation is in progress");
        PyBuffer_Release(&data);
        return NULL;
    }
    uint64_t len = 8 + (uint64_t)data.len;
    if (len > self->maxrec) {
        PyBuffer_Release(&data);
        return PyLong_FromLong(-EMSGSIZE);
    }
    uint64_t need = brec_size(len);
    long long rc = bcast_run(self, step_reserve, &need, timeout);
    if (rc == 0) {
        char *r = bcast_write_frame(self, sid, data.len);
        if (data.len >= GIL_FREE_BYTES) {
            Py_BEGIN_ALLOW_THREADS
            memcpy(r, data.buf, (size_t)data.len);
            Py_END_ALLOW_THREADS
        } else {
            memcpy(r, data.buf, (size_t)data.len);
        }
        bcast_commit(self, (uint32_t)len);
        bcast_poke(self);
    }
    PyBuffer_Release(&data);
    return result_or_error(rc);
}

/* reserve(n, timeout): reserve a record of n bytes and keep the lock: the offset of its bytes in the
 * buffer, or -errno.  commit() publishes them and releases the lock; abort() only releases it. */
static PyObject *BcastPort_reserve(BcastPort *self, PyObject *args)
{
    unsigned long long n;
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTuple(args, "K|O:reserve", &n, &timeout) || !bcast_usable(self, 0))
        return NULL;
    if (self->reserved) {
        PyErr_SetString(PyExc_RuntimeError, "a send_view() reservation is in progress");
        return NULL;
    }
    if (n > self->maxrec)
        return PyLong_FromLong(-EMSGSIZE);
    uint64_t need = brec_size(n);
    long long rc = bcast_run(self, step_reserve, &need, timeout);
    if (rc != 0)
        return result_or_error(rc);
    self->reserved = 1;
    self->needed = n;
    return PyLong_FromLongLong((long long)(self->data - self->base) + (long long)(self->rec_at & self->mask) +
                               BREC);
}

static PyObject *bcast_end_reservation(BcastPort *self, int publish)
{
    if (!self->reserved) {
        PyErr_SetString(PyExc_RuntimeError, "no send_view() reservation is in progress");
        return NULL;
    }
    self->reserved = 0;
    if (publish) {
        bcast_commit(self, (uint32_t)self->needed);
        bcast_poke(self);
    } else {
        ipc_robust_unlock(self->lock);
    }
    Py_RETURN_NONE;
}

static PyObject *BcastPort_commit(BcastPort *self, PyObject *unused)
{
    (void)unused;
    return bcast_end_reservation(self, 1);
}

static PyObject *BcastPort_abort(BcastPort *self, PyObject *unused)
{
    (void)unused;
    return bcast_end_reservation(self, 0);
}

/* recv_into(out, timeout): the next record copied into out: its length, or -errno (-ENOBUFS: out
 * is too small, `needed` says how large; the record stays). */
static PyObject *BcastPort_recv_into(BcastPort *self, PyObject *args)
{
    Py_buffer out;
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTuple(args, "w*|O:recv_into", &out, &timeout))
        return NULL;
    if (!bcast_usable(self, 1)) {
        PyBuffer_Release(&out);
        return NULL;
    }
    long long n;
    for (;;) {
        n = bcast_run(self, step_peek, NULL, timeout);
        if (n < 0)
            break;
        if ((uint64_t)n > (uint64_t)out.len) {
            self->needed = (uint64_t)n;
            n = bcast_intact(self, self->peeked) ? -ENOBUFS : -EOVERFLOW;
            break;
        }
        char *src = self->data + (self->peeked & self->mask) + BREC;
        if (n >= GIL_FREE_BYTES) {
            self->inflight++;
            Py_BEGIN_ALLOW_THREADS
            memcpy(out.buf, src, (size_t)n);
            Py_END_ALLOW_THREADS
            self->inflight--;
        } else {
            memcpy(out.buf, src, (size_t)n);
        }
        int rc = bcast_consume(self, (uint64_t)n);
        if (rc < 0)
            n = rc;
        break;
    }
    PyBuffer_Release(&out);
    bcast_release(self);
    return result_or_error(n);
}

/* ---- the fast paths (FastPath, FastBatches of _transports/_contract.py) ----------------------
 *
 * Each finishes the common case in one call, holding the GIL except while a receive spins on an empty
 * ring or a large message (GIL_FREE_BYTES or more) is copied straight between the caller's object and
 * the ring (the port is then in flight, and a receive by another thread meanwhile is Busy).  None
 * reports an error itself: it answers False / None / a short count for anything else (would block, a
 * lap, an eviction, the end of the stream, a frame of another format or over `limit`, another thread
 * inside the port), and the general path then does it with its full semantics. */

/* memcpy, without the GIL when it is large (the port is then marked in flight: a close() meanwhile keeps
 * the mapping until the caller's bcast_release()). */
static void bcast_copy(BcastPort *p, void *dst, const void *src, size_t n)
{
    if (n < GIL_FREE_BYTES) {
        memcpy(dst, src, n);
        return;
    }
    p->inflight++;
    Py_BEGIN_ALLOW_THREADS
    memcpy(dst, src, n);
    Py_END_ALLOW_THREADS
    p->inflight--;
}

/* Whether a fast-path send may run now: a publisher's open port, no reservation, nobody inside. */
static int fast_send_ok(BcastPort *p)
{
    return p->has_view && !p->closed && p->slot < 0 && !p->reserved && p->inflight == 0;
}

/* The lock held: reserve and fill one record of payload v behind a frame header, the record at `head`
 * with sequence number `seq`.  0, or -errno (nothing written; -EAGAIN: no room now). */
static int bcast_put_locked(BcastPort *p, uint64_t head, uint64_t seq, int sid, const Py_buffer *v)
{
    if ((uint64_t)v->len > p->limit || 8 + (uint64_t)v->len > p->maxrec)
        return -EMSGSIZE;
    int rc = bcast_reserve_at(p, head, seq, brec_size(8 + (uint64_t)v->len), 0, 0);
    if (rc != 0)
        return rc;
    bcast_copy(p, bcast_write_frame(p, sid, v->len), v->buf, (size_t)v->len);
    bcast_write_header(p, (uint32_t)(8 + v->len));
    return 0;
}

/* Take the publishers' lock without waiting (nowait): 0, or -errno. */
static int bcast_lock_now(BcastPort *p)
{
    p->nowait = 1;
    int rc = bcast_lock(p, 0, 0);
    p->nowait = 0;
    return rc;
}

/* try_send(data, sid=0) -> bool: publish data behind a frame header if that can be done at once. */
static PyObject *BcastPort_try_send(BcastPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    long sid;
    if (ring_sid_arg(args, nargs, "try_send(data, sid=0)", &sid) < 0)
        return NULL;
    Py_buffer v;
    if (!fast_send_ok(self) || PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    int ok = 0;
    if ((uint64_t)v.len <= self->limit && bcast_lock_now(self) == 0) {
        self->nowait = 1;
        int rc = bcast_put_locked(self, __atomic_load_n(self->head_p, __ATOMIC_RELAXED),
                                  __atomic_load_n(self->seq_p, __ATOMIC_RELAXED), (int)sid, &v);
        self->nowait = 0;
        if (rc == 0) {
            bcast_publish(self, self->rec_end, self->rec_at, self->rec_seq);
            bcast_poke(self);
            ok = 1;
        } else {
            ipc_robust_unlock(self->lock);
        }
    }
    PyBuffer_Release(&v);
    bcast_release(self);
    return PyBool_FromLong(ok);
}

/* try_send_many(items, sid=0) -> int: publish the longest prefix of the sequence of bytes-like items
 * that fits now, under one hold of the lock, with one store of head (a subscriber, or a crash, sees all
 * of the batch or none of it) and one wake-up. */
static PyObject *BcastPort_try_send_many(BcastPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    long sid;
    PyObject *seq = ring_send_many_args(args, nargs, &sid);
    if (seq == NULL)
        return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq), done = 0;
    if (k == 0 || !fast_send_ok(self) || bcast_lock_now(self) != 0) {
        Py_DECREF(seq);
        return PyLong_FromLong(0);
    }
    uint64_t head = __atomic_load_n(self->head_p, __ATOMIC_RELAXED), next = __atomic_load_n(self->seq_p, __ATOMIC_RELAXED);
    uint64_t last = 0;
    self->nowait = 1;
    for (; done < k; done++) {
        Py_buffer v;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, done), &v, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            break;
        }
        int rc = bcast_put_locked(self, head, next, (int)sid, &v);
        PyBuffer_Release(&v);
        if (rc != 0)
            break;
        last = self->rec_at;
        head = self->rec_end;
        next = self->rec_seq + 1;
    }
    self->nowait = 0;
    if (done > 0) {
        bcast_publish(self, head, last, next - 1);
        bcast_poke(self);
    } else {
        ipc_robust_unlock(self->lock);
    }
    Py_DECREF(seq);
    bcast_release(self);
    return PyLong_FromSsize_t(done);
}

/* ring_spin's check for the fast receives: something at the cursor (or an event), or closed. */
static int bcast_spin_check(void *ctx)
{
    BcastPort *p = ctx;
    if (ring_load_acquire(p->head_p) != p->cursor || !bcast_mine(p) || bcast_ended(p))
        return 1;
    return __atomic_load_n(&p->closed, __ATOMIC_RELAXED) ? -1 : 0;
}

/* Whether a fast receive should look now: a subscriber's open port with no fileno() user and nobody
 * inside; on an empty ring it first spins (GIL released) up to FAST_SPIN_MAX_NS or spin_ns, because a
 * message often comes within microseconds and the general path costs more than that in Python.  With
 * wait="spin" a busy machine does not cut that spin short (it yields at each check instead): the
 * general path would spin too, and a message that comes there costs microseconds more. */
static int bcast_fast_recv_ready(BcastPort *p, int batch)
{
    if (!p->has_view || p->closed || p->slot < 0 || (p->fd_user && !batch) || p->inflight)
        return 0;
    if (ring_load_acquire(p->head_p) == p->cursor && p->spin_ns != 0) {
        long long ns = p->spin_ns < 0 || p->spin_ns > FAST_SPIN_MAX_NS ? FAST_SPIN_MAX_NS : p->spin_ns;
        int got;
        p->inflight++;
        Py_BEGIN_ALLOW_THREADS
        got = ring_spin(bcast_spin_check, p, ns, p->spin_ns < 0);
        Py_END_ALLOW_THREADS
        p->inflight--;
        bcast_release(p);
        if (!got || p->closed)
            return 0;
    }
    return 1;
}

/* The ordinary ipcraft frame at the cursor (of serializer sid when sid >= 0, at most `limit` bytes) as
 * new bytes, the cursor moved past it locally (not yet published to the slot); Py_None (borrowed, nothing
 * taken) for anything the general path must see; NULL with an exception set. */
static PyObject *bcast_next_frame(BcastPort *p, long long sid)
{
    long long n = bcast_peek(p);
    if (n < 8)
        return Py_None;
    const unsigned char *src = (const unsigned char *)p->data + (p->peeked & p->mask) + BREC;
    uint32_t length;
    memcpy(&length, src + 4, 4);
    if (src[0] != FRAME_MAGIC || src[2] || src[3] || (uint64_t)length + 8 != (uint64_t)n || length > p->limit ||
        (sid >= 0 && src[1] != sid))
        return Py_None;
    PyObject *out = PyBytes_FromStringAndSize(NULL, length);
    if (out != NULL) {
        p->fast_copy = 1;
        bcast_copy(p, PyBytes_AS_STRING(out), src + 8, length); /* (checked after: bcast_finish_take) */
        p->fast_copy = 0;
        p->last_sid = src[1];
        p->cursor = p->peeked + brec_size((uint64_t)n);
        p->expected = p->peeked_seq + 1;
    }
    return out;
}

/* End a fast receive that took records from `first` (expected `first_seq` there): if a publisher
 * started overwriting them while they were copied, put the cursor back and answer 0 (the general path
 * reports the lap); else publish the cursor once and wake a waiting publisher once. */
static int bcast_finish_take(BcastPort *p, uint64_t first, uint64_t first_seq)
{
    if (p->cursor == first)
        return 1;
    if (!bcast_intact(p, first) || !bcast_mine(p) || p->closed) {
        p->cursor = first;
        p->expected = first_seq;
        return 0;
    }
    __atomic_store_n(u64at(p->slotp, SO_EXPECTED), p->expected, __ATOMIC_RELAXED);
    __atomic_store_n(u64at(p->slotp, SO_CURSOR), p->cursor, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(p->pubs_sleep_p, __ATOMIC_SEQ_CST)) {
        __atomic_add_fetch(p->progress_p, 1, __ATOMIC_SEQ_CST);
        mpmc_wake_sleepers(p->pubs_sleep_p, p->progress_p);
    }
    return 1;
}

/* try_recv() -> bytes | None: the fast path of Subscriber.recv/recv_bytes.  The next message's payload
 * when one is there now (or comes while it spins), an ordinary ipcraft frame of at most `limit` bytes
 * (its serializer id in last_sid); None for anything else, which the general path then handles. */
static PyObject *bcast_try_recv(BcastPort *self)
{
    if (!bcast_fast_recv_ready(self, 0))
        Py_RETURN_NONE;
    uint64_t first = self->cursor, first_seq = self->expected;
    PyObject *b = bcast_next_frame(self, -1);
    if (b == NULL)
        return NULL;
    if (b == Py_None) /* (the cursor moved only past pad records, which peek published) */
        Py_RETURN_NONE;
    if (!bcast_finish_take(self, first, first_seq)) {
        Py_DECREF(b);
        Py_RETURN_NONE;
    }
    return b;
}

static PyObject *BcastPort_try_recv(BcastPort *self, PyObject *unused)
{
    (void)unused;
    PyObject *b = bcast_try_recv(self);
    bcast_release(self); /* a close() by another thread while a large message was copied */
    return b;
}

/* try_recv_many(max_messages, sid=-1) -> list[bytes]: up to max_messages ordinary frames (of serializer
 * sid when sid >= 0) that are there now, taken with one publication of the cursor; it stops before
 * anything else.  An empty list when none (the general path then waits or reports).  Unlike try_recv it
 * serves a fileno() user too (Subscriber.recv_many takes the rest of a batch after the general path
 * received the first): the fd is re-armed by the general path, through which every wait goes. */
static PyObject *BcastPort_try_recv_many(BcastPort *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long most, sid;
    if (ring_recv_many_args(args, nargs, &most, &sid) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL || most <= 0 || !bcast_fast_recv_ready(self, 1))
        return out;
    uint64_t first = self->cursor, first_seq = self->expected, cursor = first, expected = first_seq;
    self->taking = 1;
    while (PyList_GET_SIZE(out) < most) {
        PyObject *b = bcast_next_frame(self, sid);
        if (b == Py_None)
            break;
        if (b == NULL || PyList_Append(out, b) < 0) {
            Py_XDECREF(b);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(b);
        cursor = self->cursor;
        expected = self->expected;
    }
    self->taking = 0;
    self->cursor = cursor; /* after the last frame taken (peek may have looked further) */
    self->expected = expected;
    if (out == NULL) {
        self->cursor = first;
        self->expected = first_seq;
        return NULL;
    }
    if (!bcast_finish_take(self, first, first_seq))
        Py_SETREF(out, PyList_New(0));
    bcast_release(self);
    return out;
}

/* peek(timeout): (offset of the payload in the buffer, length) of the next record, left in place,
 * or -errno.  consume() then checks and takes it. */
static PyObject *BcastPort_peek(BcastPort *self, PyObject *args)
{
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTuple(args, "|O:peek", &timeout) || !bcast_usable(self, 1))
        return NULL;
    long long n = bcast_run(self, step_peek, NULL, timeout);
    if (n < 0)
        return result_or_error(n);
    self->needed = (uint64_t)n;
    long long off = (long long)(self->data - self->base) + (long long)(self->peeked & self->mask) + BREC;
    return Py_BuildValue("(LL)", off, n);
}

static PyObject *BcastPort_consume(BcastPort *self, PyObject *unused)
{
    (void)unused;
    if (!bcast_usable(self, 1))
        return NULL;
    return PyLong_FromLong(bcast_consume(self, self->needed));
}

/* wait(timeout): 0 when a record (or a lap, an eviction) is there to read, -ETIMEDOUT, -EPIPE. */
static long long step_wait(BcastPort *p, void *arg, int has_deadline, long long deadline, long long spin_until)
{
    uint64_t pos = *(uint64_t *)arg;
    if (ring_load_acquire(p->head_p) != pos || (p->slot >= 0 && !bcast_mine(p)))
        return 0;
    int rc = bcast_wait_head(p, pos, has_deadline, deadline, spin_until);
    return rc == 0 ? 0 : rc;
}

static PyObject *BcastPort_wait(BcastPort *self, PyObject *args)
{
    PyObject *timeout = Py_None, *pos_obj = Py_None;
    if (!PyArg_ParseTuple(args, "|OO:wait", &timeout, &pos_obj) || !bcast_usable(self, self->slot >= 0))
        return NULL;
    uint64_t pos = self->cursor;
    if (pos_obj != Py_None) {
        pos = PyLong_AsUnsignedLongLong(pos_obj);
        if (PyErr_Occurred())
            return NULL;
    }
    return result_or_error(bcast_run(self, step_wait, &pos, timeout));
}

/* resync(): move the cursor to the oldest record still present (and back to LIVE if evicted while
 * the slot is still this port's); the number of messages skipped, or -errno (-ESTALE: the slot was
 * taken from this port). */
static PyObject *BcastPort_resync(BcastPort *self, PyObject *unused)
{
    (void)unused;
    if (!bcast_usable(self, 1))
        return NULL;
    if (__atomic_load_n(u64at(self->slotp, SO_TOKEN), __ATOMIC_ACQUIRE) != self->token)
        return PyLong_FromLong(-ESTALE);
    uint32_t evicted = SLOT_EVICTED;
    __atomic_compare_exchange_n(u32at(self->slotp, SO_STATE), &evicted, SLOT_LIVE, 0, __ATOMIC_SEQ_CST,
                                __ATOMIC_RELAXED);
    for (int tries = 0; tries < 1000; tries++) {
        uint64_t o = ring_load_acquire(self->oldest_p), head = ring_load_acquire(self->head_p), seq;
        uint64_t next_seq = ring_load_acquire(self->seq_p);
        if (head - o > self->cap || (o & 15))
            return PyLong_FromLong(-EPROTO);
        uint32_t len = 0, chk = 0;
        if (o != head) {
            char *r = self->data + (o & self->mask);
            memcpy(&seq, r, 8);
            memcpy(&len, r + 8, 4);
            memcpy(&chk, r + 12, 4);
        } else {
            seq = next_seq;
        }
        /* publish the cursor before checking it is still intact: a blocking publisher that did not see
         * it then raised intent past it, which the check below sees (seq_cst on both sides). */
        __atomic_store_n(u64at(self->slotp, SO_CURSOR), o, __ATOMIC_SEQ_CST);
        if (!bcast_intact(self, o) || ring_load_acquire(self->oldest_p) != o)
            continue;
        if (o != head && chk != ~len)
            return PyLong_FromLong(-EPROTO);
        if ((int64_t)(seq - self->expected) < 0 && self->expected != 0)
            return PyLong_FromLong(-EPROTO);
        long long missed = self->expected == 0 ? 0 : (long long)(seq - self->expected);
        uint64_t old = __atomic_load_n(u64at(self->slotp, SO_MISSED), __ATOMIC_RELAXED);
        __atomic_store_n(u64at(self->slotp, SO_MISSED), old + (uint64_t)missed, __ATOMIC_RELAXED);
        self->cursor = o;
        self->expected = seq;
        __atomic_store_n(u64at(self->slotp, SO_EXPECTED), seq, __ATOMIC_RELAXED);
        return PyLong_FromLongLong(missed);
    }
    return PyLong_FromLong(-EPROTO); /* never settled: intent or oldest is scribbled */
}

/* join(latest): a fresh subscriber's cursor at the end of the stream (latest=False) or at the most
 * recent record (True), with the exact sequence number expected there, so that a lap before its first
 * read is counted too.  The most recent record is the one that ends at head (pads only ever precede a
 * record); a publisher between its head and latest stores makes the two disagree: look again.
 * 0 or -EPROTO. */
static PyObject *BcastPort_join(BcastPort *self, PyObject *arg)
{
    int latest = PyObject_IsTrue(arg);
    if (latest < 0 || !bcast_usable(self, 1))
        return NULL;
    for (int tries = 0; tries < 100000; tries++) {
        uint64_t head = ring_load_acquire(self->head_p), at = ring_load_acquire(self->latest_p), seq = 1;
        if (head != 0) {
            if (at >= head || head - at > self->cap / 2 || (at & 15)) {
                sched_yield();
                continue;
            }
            uint32_t hdr[2];
            char *r = self->data + (at & self->mask);
            memcpy(&seq, r, 8);
            memcpy(hdr, r + 8, 8);
            if (!bcast_intact(self, at) || ring_load_acquire(self->head_p) != head)
                continue;
            if (hdr[1] != ~hdr[0] || hdr[0] > self->maxrec || at + brec_size(hdr[0]) != head) {
                sched_yield();
                continue;
            }
            if (!latest)
                seq++;
        }
        uint64_t pos = latest && head != 0 ? at : head;
        self->cursor = pos;
        self->expected = seq;
        __atomic_store_n(u64at(self->slotp, SO_EXPECTED), seq, __ATOMIC_RELAXED);
        __atomic_store_n(u64at(self->slotp, SO_CURSOR), pos, __ATOMIC_SEQ_CST);
        return PyLong_FromLong(0);
    }
    return PyLong_FromLong(-EPROTO);
}

/* seek(position, seq): set the cursor (a fresh subscriber's start). */
static PyObject *BcastPort_seek(BcastPort *self, PyObject *args)
{
    unsigned long long pos, seq;
    if (!PyArg_ParseTuple(args, "KK:seek", &pos, &seq) || !bcast_usable(self, 1))
        return NULL;
    self->cursor = pos;
    self->expected = seq;
    __atomic_store_n(u64at(self->slotp, SO_EXPECTED), seq, __ATOMIC_RELAXED);
    __atomic_store_n(u64at(self->slotp, SO_CURSOR), pos, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

/* latest_into(out): the most recent record copied into out: its length, -EAGAIN (none yet),
 * -ENOBUFS (`needed`), -EPROTO.  Retries while publishers overwrite it under its feet. */
static PyObject *BcastPort_latest_into(BcastPort *self, PyObject *arg)
{
    Py_buffer out;
    if (PyObject_GetBuffer(arg, &out, PyBUF_WRITABLE) < 0)
        return NULL;
    if (!bcast_usable(self, self->slot >= 0)) {
        PyBuffer_Release(&out);
        return NULL;
    }
    long long n = -EAGAIN;
    for (int tries = 0; tries < 100000; tries++) {
        uint64_t head = ring_load_acquire(self->head_p);
        uint64_t at = ring_load_acquire(self->latest_p);
        if (head == 0)
            break;
        if (at >= head || head - at > self->cap || (at & 15)) {
            n = -EAGAIN; /* a publisher between its head and latest stores: look again */
            sched_yield();
            continue;
        }
        char *r = self->data + (at & self->mask);
        uint32_t len, chk;
        memcpy(&len, r + 8, 4);
        memcpy(&chk, r + 12, 4);
        int ok = chk == ~len && len <= self->maxrec && (at & self->mask) + brec_size(len) <= self->cap;
        if (ok && len <= (uint64_t)out.len)
            memcpy(out.buf, r + BREC, len);
        if (!bcast_intact(self, at) || ring_load_acquire(self->latest_p) != at)
            continue;
        if (!ok) {
            n = -EPROTO;
        } else if (len > (uint64_t)out.len) {
            self->needed = len;
            n = -ENOBUFS;
        } else {
            n = len;
        }
        break;
    }
    if (n == -EAGAIN && ring_load_acquire(self->head_p) != 0)
        n = -EPROTO; /* latest never settled inside the published bytes */
    PyBuffer_Release(&out);
    return PyLong_FromLongLong(n);
}

/* pending(): whether a record is waiting at the cursor (subscriber). */
static PyObject *BcastPort_pending(BcastPort *self, PyObject *unused)
{
    (void)unused;
    if (!bcast_usable(self, 1))
        return NULL;
    return PyBool_FromLong(ring_load_acquire(self->head_p) != self->cursor || !bcast_mine(self));
}

/* wake_all(): wake every sleeping subscriber and poke the armed fds (a publisher's close: they re-check
 * the count). */
static PyObject *BcastPort_wake_all(BcastPort *self, PyObject *unused)
{
    (void)unused;
    if (self->closed || !self->has_view)
        Py_RETURN_NONE;
    __atomic_add_fetch(self->bell_p, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, (uint32_t *)self->bell_p, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    bcast_poke(self);
    Py_RETURN_NONE;
}

static PyObject *BcastPort_close(BcastPort *self, PyObject *unused)
{
    (void)unused;
    if (self->reserved && self->has_view) {
        self->reserved = 0;
        ipc_robust_unlock(self->lock);
    }
    __atomic_store_n(&self->closed, 1, __ATOMIC_RELAXED);
    bcast_release(self);
    Py_RETURN_NONE;
}

static PyObject *BcastPort_get_cursor(BcastPort *self, void *c)
{
    (void)c;
    return Py_BuildValue("(KK)", (unsigned long long)self->cursor, (unsigned long long)self->expected);
}

static PyObject *BcastPort_get_last_sid(BcastPort *self, void *c)
{
    (void)c;
    return PyLong_FromLong(self->last_sid);
}

static PyMethodDef BcastPort_methods[] = {
    {"send", (PyCFunction)BcastPort_send, METH_VARARGS, "send(sid, data, timeout=None) -> 0 | -errno"},
    {"reserve", (PyCFunction)BcastPort_reserve, METH_VARARGS, "reserve(n, timeout=None) -> offset | -errno"},
    {"commit", (PyCFunction)BcastPort_commit, METH_NOARGS, "commit() -> None: publish the reservation"},
    {"abort", (PyCFunction)BcastPort_abort, METH_NOARGS, "abort() -> None: drop the reservation"},
    {"recv_into", (PyCFunction)BcastPort_recv_into, METH_VARARGS, "recv_into(out, timeout=None) -> n | -errno"},
    {"try_send", (PyCFunction)(void (*)(void))BcastPort_try_send, METH_FASTCALL,
     "try_send(data, sid=0) -> bool: publish data behind a frame header if that can be done at once"},
    {"try_send_many", (PyCFunction)(void (*)(void))BcastPort_try_send_many, METH_FASTCALL,
     "try_send_many(items, sid=0) -> int: publish the longest prefix that fits now, with one store of head"},
    {"try_recv", (PyCFunction)BcastPort_try_recv, METH_NOARGS,
     "try_recv() -> bytes | None: the next ordinary frame's payload (at most `limit` bytes) if there now"},
    {"try_recv_many", (PyCFunction)(void (*)(void))BcastPort_try_recv_many, METH_FASTCALL,
     "try_recv_many(max_messages, sid=-1) -> list[bytes]: frames there now, one cursor publication"},
    {"peek", (PyCFunction)BcastPort_peek, METH_VARARGS, "peek(timeout=None) -> (offset, n) | -errno"},
    {"consume", (PyCFunction)BcastPort_consume, METH_NOARGS, "consume() -> 0 | -errno"},
    {"wait", (PyCFunction)BcastPort_wait, METH_VARARGS, "wait(timeout=None, position=None) -> 0 | -errno"},
    {"resync", (PyCFunction)BcastPort_resync, METH_NOARGS, "resync() -> missed | -errno"},
    {"seek", (PyCFunction)BcastPort_seek, METH_VARARGS, "seek(position, seq) -> None"},
    {"join", (PyCFunction)BcastPort_join, METH_O, "join(latest) -> 0 | -errno"},
    {"latest_into", (PyCFunction)BcastPort_latest_into, METH_O, "latest_into(out) -> n | -errno"},
    {"pending", (PyCFunction)BcastPort_pending, METH_NOARGS, "pending() -> bool"},
    {"wake_all", (PyCFunction)BcastPort_wake_all, METH_NOARGS, "wake every sleeping subscriber"},
    {"close", (PyCFunction)BcastPort_close, METH_NOARGS, "release the buffer"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef BcastPort_getset[] = {
    {"cursor", (getter)BcastPort_get_cursor, NULL, "(position, expected sequence number)", NULL},
    {"last_sid", (getter)BcastPort_get_last_sid, NULL, "serializer id of try_recv()'s message", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* Plain counters, read as they are (64-bit fields: Linux is LP64). */
static PyMemberDef BcastPort_members[] = {
    {"needed", T_ULONGLONG, offsetof(BcastPort, needed), READONLY, "size of the record a too-small buffer refused"},
    {"recovered", T_ULONGLONG, offsetof(BcastPort, recovered), READONLY, "locks taken over from a dead publisher"},
    {"evicted", T_ULONGLONG, offsetof(BcastPort, evicted), READONLY, "subscribers this publisher evicted"},
    {"max_record", T_ULONGLONG, offsetof(BcastPort, maxrec), READONLY, "the largest record (frame header included)"},
    {"limit", T_ULONGLONG, offsetof(BcastPort, limit), 0, "the fast paths take payloads up to this size"},
    {"fd_user", T_INT, offsetof(BcastPort, fd_user), 0, "a fileno() was given out: receives take the general path"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject BcastPortType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipcraft._native.BcastPort",
    .tp_basicsize = sizeof(BcastPort),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One publisher's or subscriber's access to a bcast:// ring (see ipcraft/_rings/bcast.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)BcastPort_init,
    .tp_dealloc = (destructor)BcastPort_dealloc,
    .tp_methods = BcastPort_methods,
    .tp_getset = BcastPort_getset,
    .tp_members = BcastPort_members,
};

/* bcast_layout(): the constants above, checked by _rings/bcast.py at import. */
static PyObject *bcast_layout(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    static const struct {
        const char *name;
        unsigned long long value;
    } table[] = {
        {"MAGIC", (unsigned long long)(BCAST_MAGIC)},
        {"VERSION", (unsigned long long)(BCAST_VERSION)},
        {"HEADER_SIZE", (unsigned long long)(BCAST_HEADER_SIZE)},
        {"MIN_CAPACITY", (unsigned long long)(BCAST_MIN_CAPACITY)},
        {"OFF_MAGIC", (unsigned long long)(BO_MAGIC)},
        {"OFF_VERSION", (unsigned long long)(BO_VERSION)},
        {"OFF_FLAGS", (unsigned long long)(BO_FLAGS)},
        {"OFF_CAPACITY", (unsigned long long)(BO_CAPACITY)},
        {"OFF_DATA", (unsigned long long)(BO_DATA)},
        {"OFF_CREATOR_PID", (unsigned long long)(BO_CREATOR_PID)},
        {"OFF_SLOTS", (unsigned long long)(BO_SLOTS)},
        {"OFF_SLOW_NS", (unsigned long long)(BO_SLOW_NS)},
        {"OFF_PUBLISHERS", (unsigned long long)(BO_PUBLISHERS)},
        {"OFF_PUBLISHERS_EVER", (unsigned long long)(BO_PUBLISHERS_EVER)},
        {"OFF_ENDED_CLEAN", (unsigned long long)(BO_ENDED_CLEAN)},
        {"OFF_HIWATER", (unsigned long long)(BO_HIWATER)},
        {"OFF_FD_ARMED", (unsigned long long)(BO_FD_ARMED)},
        {"OFF_LOCK", (unsigned long long)(BO_LOCK)},
        {"OFF_HEAD", (unsigned long long)(BO_HEAD)},
        {"OFF_INTENT", (unsigned long long)(BO_INTENT)},
        {"OFF_OLDEST", (unsigned long long)(BO_OLDEST)},
        {"OFF_LATEST", (unsigned long long)(BO_LATEST)},
        {"OFF_NEXT_SEQ", (unsigned long long)(BO_NEXT_SEQ)},
        {"OFF_SUBS_SLEEPING", (unsigned long long)(BO_SUBS_SLEEPING)},
        {"OFF_BELL", (unsigned long long)(BO_BELL)},
        {"OFF_PUBS_SLEEPING", (unsigned long long)(BO_PUBS_SLEEPING)},
        {"OFF_PROGRESS", (unsigned long long)(BO_PROGRESS)},
        {"OFF_PUB_TABLE", (unsigned long long)(BO_PUB_TABLE)},
        {"PUB_SLOTS", (unsigned long long)(BO_PUB_SLOTS)},
        {"PUB_SLOT_SIZE", (unsigned long long)(BO_PUB_SLOT_SIZE)},
        {"OFF_SUB_TABLE", (unsigned long long)(BO_SUB_TABLE)},
        {"SUB_SLOT_SIZE", (unsigned long long)(BO_SUB_SLOT_SIZE)},
        {"SO_CURSOR", (unsigned long long)(SO_CURSOR)},
        {"SO_EXPECTED", (unsigned long long)(SO_EXPECTED)},
        {"SO_STATE", (unsigned long long)(SO_STATE)},
        {"SO_PID", (unsigned long long)(SO_PID)},
        {"SO_START", (unsigned long long)(SO_START)},
        {"SO_TOKEN", (unsigned long long)(SO_TOKEN)},
        {"SO_ARMED", (unsigned long long)(SO_ARMED)},
        {"SO_MISSED", (unsigned long long)(SO_MISSED)},
        {"SLOT_FREE", (unsigned long long)(SLOT_FREE)},
        {"SLOT_LIVE", (unsigned long long)(SLOT_LIVE)},
        {"SLOT_EVICTED", (unsigned long long)(SLOT_EVICTED)},
        {"REC_HEADER", (unsigned long long)(BREC)},
        {"PAD_LEN", (unsigned long long)(PAD_LEN)},
        {"FLAG_BLOCK", (unsigned long long)(FLAG_BLOCK)},
    };
    PyObject *d = PyDict_New();
    for (size_t i = 0; d != NULL && i < sizeof table / sizeof table[0]; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(table[i].value);
        if (v == NULL || PyDict_SetItemString(d, table[i].name, v) < 0) {
            Py_XDECREF(v);
            Py_CLEAR(d);
            break;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *bcast_start_time_py(PyObject *self, PyObject *arg)
{
    (void)self;
    unsigned long pid = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromUnsignedLongLong(bcast_start_time((uint32_t)pid));
}

static PyMethodDef bcast_methods[] = {
    {"bcast_layout", bcast_layout, METH_NOARGS, "The bcast:// ring layout constants."},
    {"bcast_start_time", bcast_start_time_py, METH_O,
     "bcast_start_time(pid) -> the start time in /proc/pid/stat (clock ticks since boot), 0 if gone"},
    {NULL, NULL, 0, NULL},
};

int ipc_bcast_register(PyObject *m)
{
    if (PyModule_AddFunctions(m, bcast_methods) < 0)
        return -1;
    return ipc_add_type(m, &BcastPortType, "BcastPort");
}
