/* The SPSC ring shared by spsc.c (the algorithms) and spsc_port.c (the SpscPort type): constants, the
 * per-side state, and the core operations.  The layout is documented in ipcraft/_rings/spsc.py. */
#ifndef IPCRAFT_SPSC_H
#define IPCRAFT_SPSC_H

#include "rings.h"
#include <errno.h>
#include <stdint.h>
#include <time.h>

#define SPSC_MAGIC 0x5254464152435049ULL /* b"IPCRAFTR" little-endian */
#define SPSC_VERSION 1u
#define SPSC_HEADER_SIZE 4096u
#define SPSC_MIN_CAPACITY 64u
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
#define REC_FLAG_SHARED 0x4000u  /* the payload is in the connection's shared region (see spsc_push) */
#define SHARED_OFF_MAGIC 0       /* the shared region's header page (docs/spec/shm.md) */
#define SHARED_OFF_SIZE 8
#define SHARED_OFF_OWNER 64      /* u32: 0 free, else the id of the producer whose message it holds */
#define SHARED_MAGIC 0x4C52464152435049ULL /* b"IPCRAFRL" little-endian */

#define CHECK_SIGNALS_NS 10000000LL /* while spinning, take the GIL this often to run signal handlers */
#define WATCH_NS 1000000LL          /* while spinning, poll the peer-liveness fds this often */
#define FAST_SPIN_MAX_NS 1000000LL  /* the fast path spins at most this long before the general path */

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
    int spun; /* try_recv just spun in vain: the next wait() sleeps at once */
    long long spin_cur;  /* the spin budget now: spin_ns, stretched while the peer answers promptly */
    long long wait_t0;   /* when try_recv's spin began (the wait it hands over started then) */
    uint64_t consumed;   /* consumer: records taken so far (a producer's partner reads it) */
    PyObject *partner;   /* producer: the consumer port of the same connection, or NULL (pair()) */
    uint64_t reply_mark; /* producer: the partner's `consumed` at the last placement */
    char *shared;        /* the shared region's data (its header page precedes it), or NULL */
    uint64_t shared_cap; /* its size, copied once (share()) */
    uint32_t *owner_p;   /* its owner word */
    uint32_t shared_id;  /* producer: the id it claims the region with */
    int shared_pending;  /* consumer: a record at shared_pos keeps the region until consumed */
    uint64_t shared_pos;
} SpscPort;

/* A record of at least this many payload bytes, sent in reply (see spsc_place), goes to the front of
 * an empty ring. */
#define SPSC_REPLY_FRONT_MIN 8192u
/* On a busy machine a record of at least this many payload bytes goes to the front of an empty ring,
 * reply or not, and its producer yields the CPU after publishing it (see spsc_place). */
#define SPSC_STREAM_FRONT_MIN GIL_FREE_COPY
/* A reply of at least this many payload bytes goes through the shared region when it is free. */
#define SPSC_SHARED_MIN 8192u
static inline uint64_t rec_size(uint64_t n) { return REC_HEADER + ((n + 7) & ~(uint64_t)7); }

static inline int spsc_empty(SpscPort *r) { return ring_load_acquire(r->head_p) == r->pos; }

void spsc_efd_signal(int fd);
void spsc_release_if_done(SpscPort *r);
int spsc_place(SpscPort *r, uint64_t n, uint64_t *pad, uint64_t *adv);
void spsc_put_header(char *rec, int sid, unsigned flags, uint32_t n);
void spsc_publish(SpscPort *r, uint64_t adv);
int spsc_producer_gate(SpscPort *r, uint64_t n);
int spsc_push(SpscPort *r, int sid, const char *src, uint64_t n);
long long spsc_push_many(SpscPort *r, int sid, const char *const *srcs, const uint64_t *lens, long long k);
int spsc_next_record(SpscPort *r, char **rec, uint64_t *n, uint64_t *total);
int spsc_consumer_gate(SpscPort *r);
void spsc_level_resync(SpscPort *r);
void spsc_level_sync(SpscPort *r);
void spsc_consume(SpscPort *r, uint64_t total);
int spsc_other_closed(SpscPort *r);
int spsc_wait_slice(SpscPort *r, uint64_t n, int has_deadline, long long deadline, long long spin_until);

/* spsc_port.c: the Python type, the fast path's receive (spinning while the ring is empty) and the
 * zero-copy verbs (a borrowed record until consume/give back, a loan until commit/give back), shared
 * with lend.c.  Each returns 0 or -errno as the SpscPort methods of the same name document. */
extern PyTypeObject SpscPort_Type;
int spsc_next_or_spin(SpscPort *self, char **rec, uint64_t *n, uint64_t *total);
Py_ssize_t spsc_borrow(SpscPort *self, char *rec, uint64_t total);
int spsc_consume_borrowed(SpscPort *self);
int spsc_loan(SpscPort *self, uint64_t n, Py_ssize_t *off);
int spsc_commit_loan(SpscPort *self, int sid);
int spsc_give_back(SpscPort *self, int *lent);

#endif
