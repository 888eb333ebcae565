/* The MPMC ring of ring:// and file:// shared by mpmc.c (the algorithms) and mpmc_port.c (the MpmcPort
 * type and the channel's fast path): constants, the per-handle state, the core operations.  The layout
 * and the reasons are in ipcraft/_rings/mpmc.py, which checks these constants at import (mpmc_layout()). */
#ifndef IPCRAFT_MPMC_H
#define IPCRAFT_MPMC_H

#include "rings.h"
#include <pthread.h>
#include <stdint.h>
#include <time.h>

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
#define FD_NAME_FORMAT "ipcraft-mpmc-%016llx" /* abstract socket of an fd user (FdWake in _rings/mpmc.py) */

#define SLEEP_SLICE_NS 100000000LL  /* a sleeper re-checks this often (a wake lost with a killed process) */
#define SIGNAL_SLICE_NS 10000000LL  /* a spinner takes the GIL this often to run signal handlers */
#define LOCK_SPIN_NS 50000LL        /* spin for a busy lock this long before sleeping on it */
#define GIL_FREE_BYTES 65536u       /* copies this large run without the GIL */
#define FAST_SEND_MAX 262144u       /* try_send/try_send_many take payloads below this (as shm://) */
#define FAST_SPIN_MAX_NS 1000000LL  /* bcast.c's try_recv spins at most this long on an empty ring */
#define MAX_PARTS 8

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
    uint64_t *fdarm_p; /* how many fd users are armed (_rings/mpmc.py keeps it) */
    long long spin_ns; /* < 0: never sleep (wait="spin") */
    long long spin_cur; /* a receiver's spin budget now: spin_ns, stretched while the peer answers promptly */
    long long wait_t0;  /* when try_recv's spin began (the wait it hands over to started then) */
    long pagesize;
    int sender, has_sender; /* an unbound datagram socket for wake_fd_slots, made on first use */
    int spun;               /* try_recv spun in vain just now: the general receive sleeps at once */
    int fd_user;            /* this handle gave out a fileno(): receive by the general path (it rearms) */
    uint64_t limit; /* the fast path's largest payload (the channel's max_message_size) */
    uint64_t seen_head, seen_tail; /* caches: head and tail only grow, so an old value is a safe bound */
    unsigned long long needed, recovered;
    int loaned, borrowed;      /* zero copy: this handle holds the producer (consumer) lock meanwhile */
    int mirrored;              /* the buffer is a MirrorMap: the data area repeats right after itself */
    uint64_t lend_pos, lend_n; /* the record's position, and its payload (loan) or record (borrow) size */
} MpmcPort;

static inline uint64_t rec_size(uint64_t n) { return REC_HEADER + ((n + 7) & ~(uint64_t)7); }

/* The one check of cursors read from shared memory before they address the ring: each is a record
 * boundary (a multiple of 8, so a record header never straddles the end of the data area) and head
 * is at most the capacity ahead of tail.  Anything else was written by a corrupt or hostile process
 * (a same-user process can write the header): the caller reports -EPROTO and touches nothing. */
static inline int mpmc_cursors_ok(uint64_t cap, uint64_t head, uint64_t tail)
{
    return head - tail <= cap && ((head | tail) & 7) == 0;
}

typedef struct {
    const char *src[MAX_PARTS];
    uint64_t len[MAX_PARTS];
    int nparts;
    uint64_t total;
} Parts;


void mpmc_wake_sleepers(uint32_t *flag, uint64_t *cursor);
int mpmc_lock_try(MpmcPort *p, pthread_mutex_t *m);
int mpmc_unlock(pthread_mutex_t *m);
void mpmc_release_if_done(MpmcPort *p, int force);
void mpmc_copy_out(MpmcPort *p, uint64_t pos, char *dst, uint64_t n);
long long mpmc_peek_locked(MpmcPort *p, uint64_t *tail_out, uint64_t *head_out);
long long mpmc_peek_at(MpmcPort *p, uint64_t tail, uint64_t *head_out);
int mpmc_write_locked(MpmcPort *p, uint64_t *head, const Parts *parts);
void mpmc_wake_consumers(MpmcPort *p);
long long mpmc_attempt(MpmcPort *p, int producer, const Parts *parts, char *out, uint64_t room);
int mpmc_ready(MpmcPort *p, uint64_t need);
long long mpmc_operate(MpmcPort *p, int op, const Parts *parts, char *out, uint64_t room, PyObject *timeout_obj);

/* mpmc_port.c: the Python type and zero copy (recv_view/send_view on ring:// and file://, shared with
 * lend.c).  A loan (a borrowed record) holds the producer (consumer) lock from mpmc_loan (mpmc_borrow)
 * to its commit or give-back (consume or give-back): other producers (consumers) wait meanwhile.  Each
 * returns 0 or -errno; -EAGAIN and -EXDEV (sync=true, an fd user, a record that would wrap around the
 * end of the ring or that the copying path must judge) leave the message to the copying path.  With
 * `mirror_ok` (lend.c's verbs) a record that wraps is lent all the same when the port's buffer is a
 * MirrorMap: its payload's pointer may then run past the end of the exported buffer, into the mirror. */
extern PyTypeObject MpmcPort_Type;
int mpmc_lend_ready(MpmcPort *self);
int mpmc_loan(MpmcPort *p, uint64_t n, Py_ssize_t *off, int mirror_ok);
int mpmc_commit_loan(MpmcPort *p, int sid);
int mpmc_give_back_loan(MpmcPort *p);
int mpmc_borrow(MpmcPort *p, Py_ssize_t *off, uint64_t *n, int *sid, int mirror_ok);
int mpmc_consume_borrowed(MpmcPort *p);
int mpmc_give_back_borrowed(MpmcPort *p);

#endif
