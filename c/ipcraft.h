/* ipcraft.h: a header-only C peer for two ipcraft channels, ring:// and shm://, carrying raw bytes.
 *
 * It implements the wire format described in docs/spec/: the 8-byte frame header with the
 * raw serializer (id 0), the multi-producer ring of ring:// (docs/spec/mpmc-ring.md) and the client
 * side of the shm:// rendezvous with its two single-producer rings and, in handshake version 2 (the
 * default; define IPC_SHM_VERSION 1 for the layout without it), the shared region for large replies
 * (docs/spec/shm.md, docs/spec/spsc-ring.md).  Linux only; GCC or Clang (it uses the __atomic builtins); link with
 * -pthread.  Include it in one or many files: every function is static.
 *
 *     ipc_chan ch;
 *     int rc = ipc_open(&ch, "shm://demo");         // or "ring://demo"
 *     rc = ipc_send(&ch, "hello", 5);                 // 0 or -errno
 *     ssize_t n = ipc_recv(&ch, buf, sizeof buf);     // payload length or -errno
 *     ipc_close(&ch);
 *
 * Errors are negative errno values: -ENOENT (no such ring / no listener: -ECONNREFUSED), -EACCES,
 * -EPROTO (the other side does not speak this format, or shared memory is corrupt), -EMSGSIZE (a
 * message that can never fit), -ENOBUFS from recv (the buffer is smaller than the next message; it
 * stays queued and ch.info.needed says how large it is), -EBADMSG from recv (a message that is not a
 * raw-serializer frame was taken and dropped; ch.info.last_sid says which serializer sent it),
 * -ESHUTDOWN (shm://: the peer closed; everything it sent has been received) and -EPIPE (shm://:
 * the peer died).
 *
 * Neither side trusts the other: capacities are read once and checked, every cursor and record
 * header is checked before a copy.  The waits spin for about 100 us, then sleep (a futex for ring://,
 * the eventfds for shm://), as ipcraft does.
 */
#ifndef IPCRAFT_H
#define IPCRAFT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ---- the frame header (docs/spec/frame.md) ----------------------------------------------------- */

#define IPC_FRAME_MAGIC 0xA1u
#define IPC_FRAME_HEADER 8u
#define IPC_SID_RAW 0u
#define IPC_SPIN_NS 100000LL

static inline void ipc_put_frame(unsigned char *at, unsigned sid, unsigned flags, uint32_t len)
{
    uint16_t f = (uint16_t)flags;
    at[0] = (unsigned char)IPC_FRAME_MAGIC;
    at[1] = (unsigned char)sid;
    memcpy(at + 2, &f, 2); /* little-endian hosts only: x86-64, aarch64 */
    memcpy(at + 4, &len, 4);
}

static inline uint64_t ipc_rec8(uint64_t n) { return 8u + ((n + 7u) & ~(uint64_t)7u); }

static inline long long ipc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline void ipc_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline uint64_t ipc_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

/* ---- ring:// : the multi-producer multi-consumer ring (docs/spec/mpmc-ring.md) ------------------ */

#define IPC_MPMC_MAGIC 0x5154464152435049ULL /* "IPCRAFTQ" */
#define IPC_MPMC_HEADER 4096u
#define IPC_MPMC_PRODUCER_LOCK 128
#define IPC_MPMC_HEAD 192
#define IPC_MPMC_CONSUMER_LOCK 256
#define IPC_MPMC_TAIL 320
#define IPC_MPMC_CONSUMERS_SLEEPING 384
#define IPC_MPMC_PRODUCERS_SLEEPING 512
#define IPC_MPMC_FD_ARMED 640
#define IPC_MPMC_FD_SLOTS 1024
#define IPC_MPMC_NSLOTS 32

typedef struct {
    char *base, *data;
    size_t size;
    uint64_t cap, mask;
    uint64_t *head, *tail, *fd_armed;
    uint32_t *csleep, *psleep;
    pthread_mutex_t *plock, *clock;
    int poker; /* an unbound datagram socket to wake ipcraft handles that gave out a fileno() */
} ipc_ring;

static inline int ipc_ring_open(ipc_ring *q, const char *name)
{
    char path[300];
    memset(q, 0, sizeof *q);
    q->poker = -1;
    if (!*name || strchr(name, '/') || strlen(name) > 255)
        return -EINVAL;
    snprintf(path, sizeof path, "/dev/shm/%s", name); /* shm_open(name) opens this file (glibc) */
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size < (off_t)(IPC_MPMC_HEADER + 4096)) {
        close(fd);
        return -EPROTO;
    }
    q->size = (size_t)st.st_size;
    q->base = mmap(NULL, q->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (q->base == MAP_FAILED) {
        q->base = NULL;
        return -errno;
    }
    /* The creator writes the magic last; give one that is still formatting a second. */
    long long until = ipc_now_ns() + 1000000000LL;
    while (__atomic_load_n((uint64_t *)q->base, __ATOMIC_ACQUIRE) != IPC_MPMC_MAGIC && ipc_now_ns() < until)
        usleep(1000);
    uint64_t magic, cap, data;
    uint32_t version, flags;
    memcpy(&magic, q->base + 0, 8);
    memcpy(&version, q->base + 8, 4);
    memcpy(&flags, q->base + 12, 4);
    memcpy(&cap, q->base + 16, 8);
    memcpy(&data, q->base + 24, 8);
    if (magic != IPC_MPMC_MAGIC || version != 1 || flags != 0 || cap < 4096 || cap > (1ULL << 32) || (cap & (cap - 1)) ||
        data != IPC_MPMC_HEADER || IPC_MPMC_HEADER + cap > q->size) {
        munmap(q->base, q->size);
        q->base = NULL;
        return -EPROTO;
    }
    q->cap = cap;
    q->mask = cap - 1;
    q->data = q->base + IPC_MPMC_HEADER;
    q->head = (uint64_t *)(q->base + IPC_MPMC_HEAD);
    q->tail = (uint64_t *)(q->base + IPC_MPMC_TAIL);
    q->fd_armed = (uint64_t *)(q->base + IPC_MPMC_FD_ARMED);
    q->csleep = (uint32_t *)(q->base + IPC_MPMC_CONSUMERS_SLEEPING);
    q->psleep = (uint32_t *)(q->base + IPC_MPMC_PRODUCERS_SLEEPING);
    q->plock = (pthread_mutex_t *)(q->base + IPC_MPMC_PRODUCER_LOCK);
    q->clock = (pthread_mutex_t *)(q->base + IPC_MPMC_CONSUMER_LOCK);
    return 0;
}

static inline void ipc_ring_close(ipc_ring *q)
{
    if (q->base)
        munmap(q->base, q->size);
    if (q->poker >= 0)
        close(q->poker);
    q->base = NULL;
    q->poker = -1;
}

/* Robust mutexes: a holder that died hands the lock over with EOWNERDEAD.  Publication is one store,
 * so there is nothing to repair: mark it consistent and go on. */
static inline int ipc_lock(pthread_mutex_t *m)
{
    int rc = pthread_mutex_lock(m);
    if (rc == EOWNERDEAD)
        rc = pthread_mutex_consistent(m);
    return -rc;
}

static inline void ipc_futex_wake(uint64_t *cursor)
{
    syscall(SYS_futex, (uint32_t *)cursor, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* After a cursor is published: wake the other side's sleepers (Dekker: fence, then read the flag). */
static inline void ipc_ring_wake(uint32_t *flag, uint64_t *cursor)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(flag, __ATOMIC_RELAXED) && __atomic_exchange_n(flag, 0, __ATOMIC_SEQ_CST))
        ipc_futex_wake(cursor);
}

/* Poke the abstract sockets of armed fd users (ipcraft handles that gave out a fileno()). */
static inline void ipc_ring_wake_fd_users(ipc_ring *q)
{
    if (!__atomic_load_n(q->fd_armed, __ATOMIC_RELAXED))
        return;
    if (q->poker < 0 && (q->poker = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0)
        return;
    for (int i = 0; i < IPC_MPMC_NSLOTS; i++) {
        uint64_t *token_p = (uint64_t *)(q->base + IPC_MPMC_FD_SLOTS + 16 * i), *armed = token_p + 1, one = 1;
        if (!__atomic_load_n(armed, __ATOMIC_RELAXED) ||
            !__atomic_compare_exchange_n(armed, &one, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
            continue;
        __atomic_sub_fetch(q->fd_armed, 1, __ATOMIC_SEQ_CST);
        uint64_t token = __atomic_load_n(token_p, __ATOMIC_ACQUIRE);
        if (!token)
            continue;
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        int len = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "ipcraft-mpmc-%016llx", (unsigned long long)token);
        socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len);
        if (sendto(q->poker, "!", 1, 0, (struct sockaddr *)&a, alen) < 0 && (errno == ECONNREFUSED || errno == ENOENT))
            __atomic_compare_exchange_n(token_p, &token, 0, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
    }
}

/* Wait until ready(q, need) (spin, then FUTEX_WAIT on the low 32 bits of the cursor, 100 ms slices). */
static inline int ipc_ring_ready(ipc_ring *q, uint64_t need)
{
    uint64_t head = ipc_load(q->head), tail = ipc_load(q->tail);
    if (head - tail > q->cap)
        return 1; /* corrupt or torn between the loads: let the locked attempt tell */
    return need ? head - tail + need <= q->cap : head != tail;
}

static inline void ipc_ring_wait(ipc_ring *q, uint64_t need)
{
    uint32_t *flag = need ? q->psleep : q->csleep;
    uint64_t *cursor = need ? q->tail : q->head;
    long long until = ipc_now_ns() + IPC_SPIN_NS;
    for (unsigned i = 0;; i++) {
        if (ipc_ring_ready(q, need))
            return;
        if ((i & 63) == 0 && ipc_now_ns() >= until)
            break;
        ipc_relax();
    }
    for (;;) {
        __atomic_store_n(flag, 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint32_t seen = (uint32_t)__atomic_load_n(cursor, __ATOMIC_ACQUIRE);
        if (ipc_ring_ready(q, need))
            return;
        struct timespec ts = {0, 100000000L};
        syscall(SYS_futex, (uint32_t *)cursor, FUTEX_WAIT, seen, &ts, NULL, 0);
    }
}

/* Send one raw message: a record {u32 len, u32 ~len, frame header, payload, padding to 8}. */
static inline int ipc_ring_send(ipc_ring *q, const void *buf, size_t n)
{
    uint64_t msg = IPC_FRAME_HEADER + (uint64_t)n, need = ipc_rec8(msg);
    if (n > UINT32_MAX - IPC_FRAME_HEADER || need > q->cap)
        return -EMSGSIZE;
    for (;;) {
        int rc = ipc_lock(q->plock);
        if (rc < 0)
            return rc;
        uint64_t head = __atomic_load_n(q->head, __ATOMIC_RELAXED), tail = ipc_load(q->tail);
        if (head - tail > q->cap || ((head | tail) & 7)) {
            pthread_mutex_unlock(q->plock);
            return -EPROTO;
        }
        if (head - tail + need <= q->cap) {
            unsigned char rec[16];
            uint32_t hdr[2] = {(uint32_t)msg, ~(uint32_t)msg};
            memcpy(rec, hdr, 8);
            ipc_put_frame(rec + 8, IPC_SID_RAW, 0, (uint32_t)n);
            const char *parts[2] = {(const char *)rec, (const char *)buf};
            uint64_t lens[2] = {16, n}, pos = head;
            for (int k = 0; k < 2; k++) { /* the record may wrap around the end of the data area */
                uint64_t at = pos & q->mask, first = lens[k] < q->cap - at ? lens[k] : q->cap - at;
                memcpy(q->data + at, parts[k], first);
                memcpy(q->data, parts[k] + first, lens[k] - first);
                pos += lens[k];
            }
            __atomic_store_n(q->head, head + need, __ATOMIC_RELEASE); /* publication: one store */
            pthread_mutex_unlock(q->plock);
            ipc_ring_wake(q->csleep, q->head);
            ipc_ring_wake_fd_users(q);
            return 0;
        }
        pthread_mutex_unlock(q->plock);
        ipc_ring_wait(q, need);
    }
}

/* Receive one message into buf: its payload length, or -ENOBUFS (q->needed: the size; it stays
 * queued), -EBADMSG (a message that is not a raw frame was taken; or a corrupt record: every
 * pending message was dropped, as ipcraft does), -EPROTO. */
typedef struct {
    size_t needed;
    unsigned last_sid;
} ipc_recv_info;

static inline void ipc_ring_copy_out(ipc_ring *q, uint64_t pos, void *dst, uint64_t n)
{
    uint64_t at = pos & q->mask, first = n < q->cap - at ? n : q->cap - at;
    memcpy(dst, q->data + at, first);
    memcpy((char *)dst + first, q->data, n - first);
}

static inline ssize_t ipc_ring_recv(ipc_ring *q, void *buf, size_t room, ipc_recv_info *info)
{
    for (;;) {
        int rc = ipc_lock(q->clock);
        if (rc < 0)
            return rc;
        uint64_t tail = __atomic_load_n(q->tail, __ATOMIC_RELAXED), head = ipc_load(q->head);
        if (head == tail) {
            pthread_mutex_unlock(q->clock);
            ipc_ring_wait(q, 0);
            continue;
        }
        ssize_t result;
        uint32_t hdr[2];
        unsigned char frame[8];
        if (head - tail > q->cap || ((head | tail) & 7)) {
            pthread_mutex_unlock(q->clock);
            return -EPROTO;
        }
        memcpy(hdr, q->data + (tail & q->mask), 8); /* 8-aligned: never split */
        if (hdr[1] != ~hdr[0] || hdr[0] < IPC_FRAME_HEADER || ipc_rec8(hdr[0]) > head - tail) {
            __atomic_store_n(q->tail, head, __ATOMIC_RELEASE); /* no boundary can be trusted now */
            result = -EBADMSG;
        } else {
            uint64_t n = hdr[0] - IPC_FRAME_HEADER;
            uint16_t flags;
            uint32_t len;
            ipc_ring_copy_out(q, tail + 8, frame, 8);
            memcpy(&flags, frame + 2, 2);
            memcpy(&len, frame + 4, 4);
            info->last_sid = frame[1];
            if (frame[0] != IPC_FRAME_MAGIC || flags != 0 || len != n || frame[1] != IPC_SID_RAW) {
                result = -EBADMSG;
            } else if (n > room) {
                info->needed = n;
                pthread_mutex_unlock(q->clock);
                return -ENOBUFS;
            } else {
                ipc_ring_copy_out(q, tail + 16, buf, n);
                result = (ssize_t)n;
            }
            __atomic_store_n(q->tail, tail + ipc_rec8(hdr[0]), __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(q->clock);
        ipc_ring_wake(q->psleep, q->tail);
        return result;
    }
}

/* ---- shm:// : the SPSC rings and the rendezvous (docs/spec/spsc-ring.md, docs/spec/shm.md) ------- */

#define IPC_SPSC_MAGIC 0x5254464152435049ULL /* "IPCRAFTR" */
#define IPC_SPSC_HEADER 4096u
#define IPC_SPSC_HEAD 128
#define IPC_SPSC_PRODUCER_CLOSED 136
#define IPC_SPSC_HANDLES 144
#define IPC_SPSC_TAIL 256
#define IPC_SPSC_CONSUMER_CLOSED 264
#define IPC_SPSC_CONSUMER_WAITING 384
#define IPC_SPSC_PRODUCER_WAITING 512
#define IPC_SPSC_WRAP 0x8000u
#define IPC_SPSC_SHARED 0x4000u /* the payload is in the connection's shared region */
#define IPC_SHARED_MAGIC 0x4C52464152435049ULL /* "IPCRAFRL" */
#define IPC_SHARED_OWNER 64
#define IPC_SHARED_MIN 8192u /* a reply this large goes through the shared region when it is free */
#ifndef IPC_SHM_VERSION
#define IPC_SHM_VERSION 2
#endif

typedef struct {
    char *base, *data;
    uint64_t cap, mask, pos, seen;
    uint64_t *head, *tail;
    uint32_t *pclosed, *cclosed, *cwait, *pwait;
    int signal_fd, wait_fd, producer;
} ipc_spsc;

typedef struct {
    int sock, efd[4]; /* efd: c2s-data, c2s-room, s2c-data, s2c-room */
    char *map;
    size_t map_size;
    ipc_spsc tx, rx;
    char *shared;        /* version 2: the shared region's data area (its header page precedes it) */
    uint64_t shared_cap; /* its size: capacity / 2 */
    uint32_t *owner;     /* 0 free, 1 the client's (this side's) message, 2 the server's */
    int replying;        /* a message was received since the last send: a large send is a reply */
} ipc_shm;

static inline int ipc_spsc_check(char *base, uint64_t cap)
{
    uint64_t magic, c, data, head, tail;
    uint32_t version, flags;
    memcpy(&magic, base, 8);
    memcpy(&version, base + 8, 4);
    memcpy(&flags, base + 12, 4);
    memcpy(&c, base + 16, 8);
    memcpy(&data, base + 24, 8);
    head = ipc_load((uint64_t *)(base + IPC_SPSC_HEAD));
    tail = ipc_load((uint64_t *)(base + IPC_SPSC_TAIL));
    if (magic != IPC_SPSC_MAGIC || version != 1 || flags != 0 || c != cap || data != IPC_SPSC_HEADER ||
        head - tail > cap || ((head | tail) & 7))
        return -EPROTO;
    return 0;
}

static inline void ipc_spsc_init(ipc_spsc *r, char *base, uint64_t cap, int producer, int signal_fd, int wait_fd)
{
    r->base = base;
    r->data = base + IPC_SPSC_HEADER;
    r->cap = cap;
    r->mask = cap - 1;
    r->head = (uint64_t *)(base + IPC_SPSC_HEAD);
    r->tail = (uint64_t *)(base + IPC_SPSC_TAIL);
    r->pclosed = (uint32_t *)(base + IPC_SPSC_PRODUCER_CLOSED);
    r->cclosed = (uint32_t *)(base + IPC_SPSC_CONSUMER_CLOSED);
    r->cwait = (uint32_t *)(base + IPC_SPSC_CONSUMER_WAITING);
    r->pwait = (uint32_t *)(base + IPC_SPSC_PRODUCER_WAITING);
    r->producer = producer;
    r->signal_fd = signal_fd;
    r->wait_fd = wait_fd;
    r->pos = ipc_load(producer ? r->head : r->tail);
    r->seen = ipc_load(producer ? r->tail : r->head);
}

static inline void ipc_efd_write(int fd)
{
    uint64_t one = 1;
    if (write(fd, &one, 8) < 0) { /* EAGAIN: saturated, the waiter wakes anyway */ }
}

static inline void ipc_efd_drain(int fd)
{
    uint64_t v;
    if (read(fd, &v, 8) < 0) { /* EAGAIN: nothing pending */ }
}

static inline void ipc_spsc_wake(ipc_spsc *r, uint32_t *flag)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(flag, __ATOMIC_RELAXED) && __atomic_exchange_n(flag, 0, __ATOMIC_SEQ_CST))
        ipc_efd_write(r->signal_fd);
}

/* 0 ready, 1 not yet, -ESHUTDOWN: the other side closed (a consumer: and nothing is left). */
static inline int ipc_spsc_settle(ipc_spsc *r, uint64_t adv)
{
    int closed = __atomic_load_n(r->producer ? r->cclosed : r->pclosed, __ATOMIC_ACQUIRE) != 0;
    if (r->producer && closed)
        return -ESHUTDOWN;
    if (r->producer) {
        uint64_t tail = ipc_load(r->tail);
        if (r->pos - tail > r->cap || r->pos - tail + adv <= r->cap)
            return 0;
    } else if (ipc_load(r->head) != r->pos) {
        return 0;
    }
    return closed ? -ESHUTDOWN : 1;
}

/* Wait for room (producer, adv bytes) or a record (consumer): spin, then sleep on the eventfd with
 * the rendezvous socket watched (it hangs up when the peer dies: -EPIPE). */
static inline int ipc_spsc_wait(ipc_spsc *r, int sock, uint64_t adv)
{
    uint32_t *flag = r->producer ? r->pwait : r->cwait;
    long long until = ipc_now_ns() + IPC_SPIN_NS;
    for (unsigned i = 0;; i++) {
        int s = ipc_spsc_settle(r, adv);
        if (s <= 0)
            return s;
        if ((i & 63) == 0 && ipc_now_ns() >= until)
            break;
        ipc_relax();
    }
    for (;;) {
        int s = ipc_spsc_settle(r, adv);
        if (s <= 0)
            return s;
        ipc_efd_drain(r->wait_fd);
        __atomic_store_n(flag, 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        s = ipc_spsc_settle(r, adv);
        if (s <= 0) {
            __atomic_exchange_n(flag, 0, __ATOMIC_SEQ_CST);
            return s;
        }
        struct pollfd fds[2] = {{.fd = r->wait_fd, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
        if (poll(fds, 2, -1) < 0 && errno != EINTR)
            return -errno;
        if (fds[1].revents) { /* the peer's socket hung up: serve what is left, then -EPIPE */
            s = ipc_spsc_settle(r, adv);
            return s <= 0 ? s : -EPIPE;
        }
    }
}

static inline int ipc_shm_send(ipc_shm *c, const void *buf, size_t n)
{
    ipc_spsc *r = &c->tx;
    if (n > r->cap / 2 - 8)
        return -EMSGSIZE; /* a record may use at most half the ring */
    if (__atomic_load_n(r->cclosed, __ATOMIC_ACQUIRE))
        return -ESHUTDOWN;
    /* A large reply goes through the shared region if this side can claim it (docs/spec/spsc-ring.md);
     * the ring then carries an 8-byte record.  A failed claim costs nothing: the ring as usual. */
    uint32_t free_ = 0;
    int shared = c->shared && c->replying && n >= IPC_SHARED_MIN && n <= c->shared_cap &&
                 __atomic_compare_exchange_n(c->owner, &free_, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
    c->replying = 0;
    uint64_t rec = shared ? 8u : ipc_rec8(n), p = r->pos & r->mask, pad = p + rec > r->cap ? r->cap - p : 0,
             adv = pad + rec;
    if (r->pos - r->seen + adv > r->cap) {
        for (;;) {
            uint64_t tail = ipc_load(r->tail);
            int s = r->pos - tail > r->cap || (tail & 7) ? -EPROTO : 0;
            if (s == 0) {
                r->seen = tail;
                if (r->pos - tail + adv <= r->cap)
                    break;
                s = ipc_spsc_wait(r, c->sock, adv);
            }
            if (s < 0) {
                if (shared) /* nothing sent: the region is free again */
                    __atomic_store_n(c->owner, 0, __ATOMIC_RELEASE);
                return s;
            }
        }
    }
    unsigned char *at = (unsigned char *)r->data + p;
    if (pad) { /* a wrap marker: the rest of the data area is padding */
        ipc_put_frame(at, 0, IPC_SPSC_WRAP, 0);
        at = (unsigned char *)r->data;
    }
    if (shared) { /* the header's copy and the payload in the region, an 8-byte record in the ring */
        ipc_put_frame((unsigned char *)c->shared - 8, IPC_SID_RAW, 0, (uint32_t)n);
        memcpy(c->shared, buf, n);
        ipc_put_frame(at, IPC_SID_RAW, IPC_SPSC_SHARED, (uint32_t)n);
    } else {
        ipc_put_frame(at, IPC_SID_RAW, 0, (uint32_t)n);
        memcpy(at + 8, buf, n);
    }
    r->pos += adv;
    __atomic_store_n(r->head, r->pos, __ATOMIC_RELEASE);
    ipc_spsc_wake(r, r->cwait);
    return 0;
}

static inline ssize_t ipc_shm_recv(ipc_shm *c, void *buf, size_t room, ipc_recv_info *info)
{
    ipc_spsc *r = &c->rx;
    if (r->pos == r->seen) {
        for (;;) {
            uint64_t head = ipc_load(r->head);
            if (head - r->pos > r->cap || (head & 7))
                return -EPROTO;
            r->seen = head;
            if (head != r->pos)
                break;
            int s = ipc_spsc_wait(r, c->sock, 0);
            if (s < 0)
                return s;
        }
    }
    uint64_t avail = r->seen - r->pos, p = r->pos & r->mask, skip = 0;
    unsigned char *at = (unsigned char *)r->data + p;
    uint16_t flags;
    uint32_t len;
    memcpy(&flags, at + 2, 2);
    if (at[0] == IPC_FRAME_MAGIC && flags == IPC_SPSC_WRAP) {
        skip = r->cap - p;
        at = (unsigned char *)r->data;
        p = 0;
        memcpy(&flags, at + 2, 2);
    }
    len = __atomic_load_n((uint32_t *)(at + 4), __ATOMIC_RELAXED);
    int shared = flags == IPC_SPSC_SHARED && c->shared; /* the payload is in the shared region */
    uint64_t size = shared ? 8u : ipc_rec8(len);
    if (at[0] != IPC_FRAME_MAGIC || (flags != 0 && !shared) || skip + size > avail || p + size > r->cap ||
        (shared && len > c->shared_cap))
        return -EPROTO;
    info->last_sid = at[1];
    const unsigned char *payload = shared ? (const unsigned char *)c->shared : at + 8;
    ssize_t result = (ssize_t)len;
    if (at[1] != IPC_SID_RAW) {
        result = -EBADMSG;
    } else if (len > room) {
        info->needed = len;
        return -ENOBUFS;
    } else {
        memcpy(buf, payload, len);
    }
    if (shared)
        __atomic_store_n(c->owner, 0, __ATOMIC_RELEASE); /* after the last read of the region */
    c->replying = 1;
    r->pos += skip + size;
    __atomic_store_n(r->tail, r->pos, __ATOMIC_RELEASE);
    ipc_spsc_wake(r, r->pwait);
    return result;
}

static inline int ipc_fd_wait(int fd, short events, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int rc = poll(&p, 1, timeout_ms);
    return rc < 0 ? -errno : rc == 0 ? -ETIMEDOUT : 0;
}

/* Read exactly n bytes (and any fds passed with them) within the handshake's 10 s. */
static inline int ipc_recv_exact(int sock, void *buf, size_t n, int *fds, int maxfds, int *nfds)
{
    size_t got = 0;
    if (nfds)
        *nfds = 0;
    while (got < n) {
        int rc = ipc_fd_wait(sock, POLLIN, 10000);
        if (rc < 0)
            return rc;
        union {
            struct cmsghdr h;
            char space[CMSG_SPACE(sizeof(int) * 8)];
        } ctl;
        struct iovec iov = {(char *)buf + got, n - got};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &ctl, .msg_controllen = sizeof ctl};
        ssize_t k = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
        if (k < 0)
            return errno == EINTR ? 0 : -errno;
        for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
            if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
                continue;
            int count = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int)), *in = (int *)CMSG_DATA(h);
            for (int i = 0; i < count; i++) {
                if (nfds && *nfds < maxfds)
                    fds[(*nfds)++] = in[i];
                else
                    close(in[i]);
            }
        }
        if (k == 0)
            return -EPIPE;
        got += (size_t)k;
    }
    return 0;
}

static inline int ipc_is_eventfd(int fd)
{
    char path[64], link[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0)
        return 1; /* no /proc: trust the credential-checked server */
    link[n] = 0;
    return strcmp(link, "anon_inode:[eventfd]") == 0 && (fcntl(fd, F_GETFL) & O_NONBLOCK);
}

/* Connect to the shm:// listener `name`: credentials, verdict, REQUEST, OFFER + fds, ACK. */
static inline int ipc_shm_connect(ipc_shm *c, const char *name, uint64_t capacity)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int fds[5], nfds = 0, rc;
    memset(c, 0, sizeof *c);
    c->sock = -1;
    for (int i = 0; i < 4; i++)
        c->efd[i] = -1;
    int len = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "ipcraft-shm.%s", name);
    if (len < 0 || (size_t)len >= sizeof a.sun_path - 1)
        return -ENAMETOOLONG;
    if ((c->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return -errno;
    if (connect(c->sock, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len)) < 0)
        goto fail_errno;
    struct ucred cred;
    socklen_t clen = sizeof cred;
    if (getsockopt(c->sock, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0)
        goto fail_errno;
    if (cred.uid != geteuid() && cred.uid != 0) {
        rc = -EACCES; /* the server is neither this uid nor root */
        goto fail;
    }
    unsigned char verdict;
    if ((rc = ipc_recv_exact(c->sock, &verdict, 1, NULL, 0, NULL)) < 0)
        goto fail;
    if (verdict != 0x01) {
        rc = -EACCES; /* 0x00 and a UTF-8 reason follow: this process was refused */
        goto fail;
    }
    unsigned char hello[20];
    uint32_t version = IPC_SHM_VERSION;
    memcpy(hello, "IPCSHM\0\1", 8);
    memcpy(hello + 8, &version, 4);
    memcpy(hello + 12, &capacity, 8);
    if (send(c->sock, hello, sizeof hello, MSG_NOSIGNAL) != (ssize_t)sizeof hello)
        goto fail_errno;
    if ((rc = ipc_recv_exact(c->sock, hello, sizeof hello, fds, 5, &nfds)) < 0)
        goto fail;
    uint64_t cap;
    memcpy(&version, hello + 8, 4);
    memcpy(&cap, hello + 12, 8);
    rc = -EPROTO;
    if (memcmp(hello, "IPCSHM\0\1", 8) || version != IPC_SHM_VERSION || nfds != 5 || cap < 64 ||
        (cap & (cap - 1)) || cap > (1ULL << 30))
        goto fail;
    c->map_size = 2 * (IPC_SPSC_HEADER + cap) + (version >= 2 ? IPC_SPSC_HEADER + cap / 2 : 0);
    struct stat st;
    int seals = fcntl(fds[0], F_GET_SEALS);
    if (fstat(fds[0], &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != c->map_size || seals < 0 ||
        (seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) != (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL))
        goto fail;
    for (int i = 1; i < 5; i++)
        if (!ipc_is_eventfd(fds[i]))
            goto fail;
    c->map = mmap(NULL, c->map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
    if (c->map == MAP_FAILED) {
        c->map = NULL;
        goto fail_errno;
    }
    char *c2s = c->map, *s2c = c->map + IPC_SPSC_HEADER + cap;
    if (ipc_spsc_check(c2s, cap) < 0 || ipc_spsc_check(s2c, cap) < 0)
        goto fail;
    if (version >= 2) { /* the shared region: its header page, then cap / 2 bytes */
        char *region = c->map + 2 * (IPC_SPSC_HEADER + cap);
        uint64_t magic, size;
        memcpy(&magic, region, 8);
        memcpy(&size, region + 8, 8);
        if (magic != IPC_SHARED_MAGIC || size != cap / 2)
            goto fail;
        c->shared = region + IPC_SPSC_HEADER;
        c->shared_cap = size;
        c->owner = (uint32_t *)(region + IPC_SHARED_OWNER);
    }
    close(fds[0]);
    fds[0] = -1;
    for (int i = 0; i < 4; i++)
        c->efd[i] = fds[i + 1];
    nfds = 0;
    ipc_spsc_init(&c->tx, c2s, cap, 1, c->efd[0], c->efd[1]); /* producer: signals c2s-data, waits c2s-room */
    ipc_spsc_init(&c->rx, s2c, cap, 0, c->efd[3], c->efd[2]); /* consumer: signals s2c-room, waits s2c-data */
    __atomic_add_fetch((uint64_t *)(c2s + IPC_SPSC_HANDLES), 1, __ATOMIC_SEQ_CST);
    unsigned char ack = 0x01;
    if (send(c->sock, &ack, 1, MSG_NOSIGNAL) != 1)
        goto fail_errno;
    return 0;
fail_errno:
    rc = -errno;
fail:
    for (int i = 0; i < nfds; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (c->map)
        munmap(c->map, c->map_size);
    for (int i = 0; i < 4; i++)
        if (c->efd[i] >= 0)
            close(c->efd[i]);
    close(c->sock);
    c->sock = -1;
    c->map = NULL;
    return rc;
}

/* Close: the last holder of this end sets the closed flags (the peer then gets ChannelClosed after
 * the messages still in the ring) and wakes the peer. */
static inline void ipc_shm_close(ipc_shm *c)
{
    if (c->sock < 0)
        return;
    if (__atomic_sub_fetch((uint64_t *)(c->tx.base + IPC_SPSC_HANDLES), 1, __ATOMIC_SEQ_CST) == 0) {
        __atomic_store_n(c->tx.pclosed, 1, __ATOMIC_SEQ_CST);
        ipc_efd_write(c->tx.signal_fd);
        __atomic_store_n(c->rx.cclosed, 1, __ATOMIC_SEQ_CST);
        ipc_efd_write(c->rx.signal_fd);
    }
    munmap(c->map, c->map_size);
    for (int i = 0; i < 4; i++)
        close(c->efd[i]);
    close(c->sock);
    c->sock = -1;
    c->map = NULL;
}

/* ---- one handle for either scheme, by URL ----------------------------------------------------- */

typedef struct {
    int scheme; /* 1 ring://, 2 shm:// */
    ipc_ring ring;
    ipc_shm shm;
    ipc_recv_info info;
} ipc_chan;

static inline int ipc_open(ipc_chan *ch, const char *url)
{
    memset(ch, 0, sizeof *ch);
    if (strncmp(url, "ring://", 7) == 0) {
        ch->scheme = 1;
        return ipc_ring_open(&ch->ring, url + 7);
    }
    if (strncmp(url, "shm://", 6) == 0) {
        ch->scheme = 2;
        return ipc_shm_connect(&ch->shm, url + 6, 0);
    }
    return -EINVAL;
}

static inline int ipc_send(ipc_chan *ch, const void *buf, size_t n)
{
    return ch->scheme == 1 ? ipc_ring_send(&ch->ring, buf, n) : ipc_shm_send(&ch->shm, buf, n);
}

static inline ssize_t ipc_recv(ipc_chan *ch, void *buf, size_t room)
{
    return ch->scheme == 1 ? ipc_ring_recv(&ch->ring, buf, room, &ch->info)
                           : ipc_shm_recv(&ch->shm, buf, room, &ch->info);
}

static inline void ipc_close(ipc_chan *ch)
{
    if (ch->scheme == 1)
        ipc_ring_close(&ch->ring);
    else if (ch->scheme == 2)
        ipc_shm_close(&ch->shm);
    ch->scheme = 0;
}

#endif /* IPCRAFT_H */
