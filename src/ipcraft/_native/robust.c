/* The one door to every robust mutex that lives in shared memory (SharedMutex, the ring:// and
 * file:// queue locks).
 *
 * Shared memory can be written by any process that maps it: a buggy or hostile process of the same
 * user can scribble the words of a pthread_mutex_t.  glibc trusts those words: a corrupt kind sends
 * it down the priority-inheritance or priority-protect paths (assertions that abort, or a bare
 * EINVAL), a corrupt lock word makes it wait on or hand the lock to a thread id that cannot exist,
 * and a held mutex's corrupt robust-list links make unlock write through them (DEQUEUE_MUTEX), a
 * crash or silent corruption of this process.  So every word glibc reads is checked here before
 * glibc is called, and a mutex that fails the check is reported as EPROTO (ProtocolError in Python);
 * glibc is not called on it.
 *
 * The checks, for the glibc x86_64/aarch64 layout of struct __pthread_mutex_s:
 *   __kind   exactly what pthread_mutex_init gives a process-shared robust mutex of a normal or
 *            error-checking type (learnt at import from mutexes initialised here: ipc_robust_setup);
 *   __lock   its thread-id bits (FUTEX_TID_MASK) at most PID_MAX_LIMIT; the FUTEX_WAITERS and
 *            FUTEX_OWNER_DIED bits are legitimate;
 *   __owner  0, a possible thread id, or glibc's PTHREAD_MUTEX_INCONSISTENT / NOTRECOVERABLE;
 *   __count  0 or 1 (these mutexes are never recursive);
 *   __list   glibc's unlock unlinks the mutex from the thread's robust list by writing through
 *            these two links, which another process can rewrite at any moment.  So this file keeps
 *            its own record of the thread's list (the mutexes it locked, in order, and the head from
 *            get_robust_list) and unlocks from that record, never reading the links
 *            (unlock_from_records).  Only when the record is not the whole list (other code of this
 *            thread holds robust mutexes too, or more than HELD_MAX are held) does glibc unlock, after
 *            a check that each link points at the head or at a mutex this thread holds (EPROTO if not).
 *
 * What remains: a check and glibc's own read of the same word are not one atomic step, so a process
 * that rewrites a mutex's kind or lock word in the few nanoseconds between them can still steer
 * glibc's *lock* path (to an error, or to an assertion on the priority-inheritance path).  The unlock
 * of a mutex this thread holds reads nothing that another process can write.
 *
 * And one glibc bug is worked around: pthread_mutex_trylock on a robust mutex that is not
 * recoverable (an owner died and the next holder released it without pthread_mutex_consistent)
 * returns ENOTRECOVERABLE but leaves the lock word holding the caller's thread id (glibc 2.36,
 * nptl/pthread_mutex_trylock.c unlocks only `if (oldval == id)`, and oldval is 0 there).  The next
 * lock in that thread then fails with EDEADLK and every other thread blocks forever.  After such a
 * result the word is released here, as pthread_mutex_clocklock already does.
 */
#define _GNU_SOURCE
#include "robust.h"
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PID_MAX_LIMIT (4 * 1024 * 1024) /* the kernel's ceiling for /proc/sys/kernel/pid_max */
#define OWNER_INCONSISTENT INT_MAX      /* glibc's PTHREAD_MUTEX_INCONSISTENT */
#define OWNER_NOTRECOVERABLE (INT_MAX - 1)
#define HELD_MAX 32

static int kind_normal = -1, kind_errorcheck = -1;

/* This thread's robust-list head (what each list link points at, or another entry) and the mutexes
 * it holds through this file. */
static __thread struct {
    void *head;
    pthread_mutex_t *held[HELD_MAX];
    int nheld, overflow;
    unsigned tid;
} me; /* one thread-local object: its address costs one __tls_get_addr per function, not one per word */

static unsigned current_tid(void)
{
    if (me.tid == 0)
        me.tid = (unsigned)syscall(SYS_gettid);
    return me.tid;
}

/* A forked child runs as a new thread id with an empty robust list (glibc resets it). */
static void forget_all_in_child(void)
{
    me.tid = 0;
    me.head = NULL;
    me.nheld = me.overflow = 0;
}

int ipc_robust_init_attrs(pthread_mutex_t *m, int type)
{
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc != 0)
        return rc;
    if ((rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)) == 0 &&
        (rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)) == 0 &&
        (rc = pthread_mutexattr_settype(&attr, type)) == 0)
        rc = pthread_mutex_init(m, &attr);
    pthread_mutexattr_destroy(&attr);
    return rc;
}

int ipc_robust_setup(void)
{
    pthread_mutex_t probe;
    int rc = ipc_robust_init_attrs(&probe, PTHREAD_MUTEX_NORMAL);
    if (rc == 0)
        kind_normal = probe.__data.__kind;
    if (rc == 0 && (rc = ipc_robust_init_attrs(&probe, PTHREAD_MUTEX_ERRORCHECK)) == 0)
        kind_errorcheck = probe.__data.__kind;
    return rc ? rc : pthread_atfork(NULL, NULL, forget_all_in_child);
}

static int load_int(const int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

/* 0, or EPROTO when a word glibc trusts holds a value glibc itself never writes. */
static int check_words(pthread_mutex_t *m)
{
    int kind = load_int(&m->__data.__kind);
    if (kind != kind_normal && kind != kind_errorcheck)
        return EPROTO;
    unsigned lock = (unsigned)load_int(&m->__data.__lock);
    if ((lock & FUTEX_TID_MASK) > PID_MAX_LIMIT)
        return EPROTO;
    int owner = load_int(&m->__data.__owner);
    if ((owner < 0 || owner > PID_MAX_LIMIT) && owner != OWNER_INCONSISTENT && owner != OWNER_NOTRECOVERABLE)
        return EPROTO;
    if ((unsigned)load_int((const int *)&m->__data.__count) > 1)
        return EPROTO;
    return 0;
}

static void *list_entry(pthread_mutex_t *m) { return (void *)&m->__data.__list.__next; }

static void *unflagged(void *link) { return (void *)((uintptr_t)link & ~(uintptr_t)1); }

/* The links glibc gave `held[k]` when it was locked (ENQUEUE_MUTEX): newer entries are pushed at the
 * head, so its __next is the entry locked just before it (or the head) and its __prev the entry
 * locked just after it (or the head).  Valid only while this thread's robust list is exactly
 * held[] (see records_match). */
static void expected_links(int k, void **next, void **prev)
{
    *next = k == 0 ? me.head : list_entry(me.held[k - 1]);
    *prev = k == me.nheld - 1 ? me.head : list_entry(me.held[k + 1]);
}

/* Whether this thread's robust list is exactly the mutexes in held[], newest first: its head points
 * at the newest, and nothing overflowed.  (Not so when other code of this thread holds robust
 * mutexes of its own.) */
static int records_match(void)
{
    if (me.head == NULL || me.overflow || me.nheld == 0)
        return 0;
    void *first = __atomic_load_n((void **)me.head, __ATOMIC_RELAXED);
    return unflagged(first) == list_entry(me.held[me.nheld - 1]);
}

static int link_ok(void *link)
{
    void *p = unflagged(link);
    if (p == me.head)
        return 1;
    for (int i = 0; i < me.nheld; i++)
        if (p == list_entry(me.held[i]))
            return 1;
    return 0;
}

/* Before glibc unlinks `m` (held by this thread, not known to held[] as the whole list) from the
 * robust list through m's own links: each link must at least point at the head or at an entry this
 * thread holds.  0, or EPROTO. */
static int check_links(pthread_mutex_t *m)
{
    void *next = __atomic_load_n((void **)&m->__data.__list.__next, __ATOMIC_RELAXED);
    void *prev = __atomic_load_n((void **)&m->__data.__list.__prev, __ATOMIC_RELAXED);
    return me.overflow || (link_ok(next) && link_ok(prev)) ? 0 : EPROTO;
}

/* Unlock held[k], which this thread holds, when held[] is its whole robust list: what glibc's
 * __pthread_mutex_unlock_full does for a robust, non-PI mutex (2.36, the ROBUST_* cases), except that
 * the neighbours in the list are taken from held[], never from m's links.  Those links lie in shared
 * memory, where any process that maps it may rewrite them at any moment, even between a check and
 * glibc's use: glibc would then write through a wild pointer.  The order of the steps is glibc's, so
 * the kernel's robust-list walk at thread death sees the same states (list_op_pending first). */
static void unlock_from_records(pthread_mutex_t *m, int k)
{
    struct robust_list_head *head = me.head;
    void *older, *newer;
    expected_links(k, &older, &newer);
    __atomic_store_n(&head->list_op_pending, (struct robust_list *)list_entry(m), __ATOMIC_RELAXED);
    __asm__ __volatile__("" ::: "memory");
    /* DEQUEUE_MUTEX: the older neighbour's __prev (glibc's robust_prev slot for the head) and the
     * newer neighbour's __next (the head's list pointer) skip m. */
    *(void **)((char *)older - sizeof(void *)) = newer;
    *(void **)newer = older;
    __atomic_store_n((void **)&m->__data.__list.__prev, NULL, __ATOMIC_RELAXED);
    __atomic_store_n((void **)&m->__data.__list.__next, NULL, __ATOMIC_RELAXED);
    int owner = __atomic_load_n(&m->__data.__owner, __ATOMIC_RELAXED);
    __atomic_store_n(&m->__data.__owner, owner == OWNER_INCONSISTENT ? OWNER_NOTRECOVERABLE : 0, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&m->__data.__nusers, 1, __ATOMIC_RELAXED);
    if ((unsigned)__atomic_exchange_n(&m->__data.__lock, 0, __ATOMIC_RELEASE) & FUTEX_WAITERS)
        syscall(SYS_futex, &m->__data.__lock, FUTEX_WAKE, 1, NULL, NULL, 0);
    __asm__ __volatile__("" ::: "memory");
    __atomic_store_n(&head->list_op_pending, NULL, __ATOMIC_RELAXED);
}

static void remember(pthread_mutex_t *m)
{
    if (me.head == NULL) {
        struct robust_list_head *head;
        size_t len;
        if (syscall(SYS_get_robust_list, 0, &head, &len) == 0)
            me.head = head;
    }
    if (me.nheld < HELD_MAX)
        me.held[me.nheld++] = m; /* in locking order, as glibc's list (newest at its head) */
    else
        me.overflow++;
}

static void forget(pthread_mutex_t *m)
{
    if (me.nheld > 0 && me.held[me.nheld - 1] == m) { /* the usual case: the most recent lock */
        me.nheld--;
        return;
    }
    for (int i = me.nheld - 1; i >= 0; i--)
        if (me.held[i] == m) {
            memmove(&me.held[i], &me.held[i + 1], (size_t)(me.nheld - 1 - i) * sizeof me.held[0]);
            me.nheld--;
            return;
        }
    if (me.overflow > 0)
        me.overflow--;
}

/* After glibc reported ENOTRECOVERABLE: if the lock word names this thread (the trylock bug above),
 * release it and wake whoever queued behind it. */
static void drop_notrecoverable(pthread_mutex_t *m)
{
    int *word = &m->__data.__lock;
    unsigned v = (unsigned)__atomic_load_n(word, __ATOMIC_ACQUIRE);
    if ((v & FUTEX_TID_MASK) != current_tid())
        return;
    v = (unsigned)__atomic_exchange_n(word, 0, __ATOMIC_RELEASE);
    if (v & FUTEX_WAITERS)
        syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static int after_lock(pthread_mutex_t *m, int rc)
{
    if (rc == 0 || rc == EOWNERDEAD)
        remember(m);
    else if (rc == ENOTRECOVERABLE)
        drop_notrecoverable(m);
    return rc;
}

int ipc_robust_trylock(pthread_mutex_t *m)
{
    int rc = check_words(m);
    return rc ? rc : after_lock(m, pthread_mutex_trylock(m));
}

int ipc_robust_clocklock(pthread_mutex_t *m, const struct timespec *abstime)
{
    int rc = check_words(m);
    return rc ? rc : after_lock(m, pthread_mutex_clocklock(m, CLOCK_MONOTONIC, abstime));
}

int ipc_robust_lock(pthread_mutex_t *m)
{
    int rc = check_words(m);
    return rc ? rc : after_lock(m, pthread_mutex_lock(m));
}

int ipc_robust_unlock(pthread_mutex_t *m)
{
    unsigned lock = (unsigned)load_int(&m->__data.__lock);
    int mine = (lock & FUTEX_TID_MASK) == current_tid();
    if (mine) {
        int k = me.nheld - 1;
        while (k >= 0 && me.held[k] != m)
            k--;
        if (k >= 0 && records_match()) { /* whatever the other words say now: it is this thread's */
            unlock_from_records(m, k);
            forget(m);
            return 0;
        }
    }
    int rc = check_words(m);
    if (rc)
        return rc;
    if (!mine)
        return EPERM; /* as glibc would say, without asking it (see unlock_from_records) */
    if ((rc = check_links(m)) != 0)
        return rc; /* glibc will unlink it from the robust list through its links */
    rc = pthread_mutex_unlock(m);
    if (rc == 0)
        forget(m);
    return rc;
}

int ipc_robust_consistent(pthread_mutex_t *m)
{
    int rc = check_words(m);
    return rc ? rc : pthread_mutex_consistent(m);
}
