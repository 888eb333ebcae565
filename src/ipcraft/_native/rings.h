/* What the two ring engines share: the single-producer single-consumer ring of shm:// (spsc.h, spsc.c,
 * spsc_port.c) and the multi-producer multi-consumer ring of ring:// and file:// (mpmc.h, mpmc.c,
 * mpmc_port.c).  Both wait the same way: spin without the GIL, then sleep without the GIL, in slices
 * that come back every few milliseconds so the caller can take the GIL and run signal handlers (a
 * Ctrl-C interrupts any wait).  This header holds that loop, the spin helper and the one sentinel a
 * slice returns to ask for the GIL; the layouts stay in each engine's own header.
 *
 * Spinning pays only while a CPU is free to spin on.  On a machine where every CPU is taken (more
 * runnable tasks than CPUs), the peer a spinner waits for is often a task that waits for a CPU: the
 * spin then burns the very time the peer needs, and a 1 MiB round trip stretched from 0.14 ms to 4-9 ms
 * beside a single CPU-bound neighbour on two cores.  So every spin here asks, at most every
 * RING_BUSY_CHECK_NS, whether the kernel counts more runnable tasks than online CPUs (the fourth field
 * of /proc/loadavg, an instantaneous count).  On a busy machine the spinner checks every 8 rounds
 * instead of 64 and calls sched_yield() at every check: a peer queued on the spinner's own CPU (where the scheduler tends to
 * put a task the spinner has just woken) runs at once, and a running peer still finds its reply
 * picked up within microseconds.  After RING_BUSY_SPIN_NS of that the waiter sleeps: its CPU goes
 * idle, the scheduler moves a waiting task (often the peer) onto it, and the peer's next publication
 * wakes the sleeper at once (Dekker's flag, see spsc.c and mpmc.c).  A waiter that must never sleep
 * (wait="spin") keeps spinning and yielding.  An idle machine keeps the full spin.  (Yielding once,
 * only after waking the peer, then spinning plainly, measured 27 us per 64-byte round trip beside a
 * neighbour, against 2.5 us yielding at every check: two waiters queued on one CPU hand it to each
 * other only if both yield.)
 */
#ifndef IPCRAFT_RINGS_H
#define IPCRAFT_RINGS_H

#include "native.h"
#include <sched.h>
#include <stdint.h>
#include <time.h>

/* A wait slice returns this to say "take the GIL, run the signal handlers, call me again".  Negative
 * and far from any errno, so it never collides with a count (>= 0) or an -errno result. */
#define RING_WAIT_SIGNALS (-200000LL)
/* A ring operation returns this when a Python exception is set (a signal handler raised). */
#define RING_PY_ERROR (-100000LL)
/* How often (per thread) a spinner reads the kernel's count of runnable tasks: a read costs ~3 us. */
#define RING_BUSY_CHECK_NS 500000LL
/* On a busy machine a spin (yielding) lasts at most this long: a prompt peer still answers within it,
 * and it is less than the 25-30 us that a sleep and a cross-core wake-up cost together. */
#define RING_BUSY_SPIN_NS 20000LL

/* 1 when more tasks are runnable than there are online CPUs (re-read at most every RING_BUSY_CHECK_NS
 * per thread; `now` is ring_now_ns()), else 0, and 0 when the count cannot be read (no /proc). */
int ipc_cpus_busy(long long now);

static inline uint64_t ring_load_acquire(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

static inline void ring_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline long long ring_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Adaptive spin (both engines' receivers): a wait that ended within SPIN_ADAPT_RESET_NS of its start,
 * sleep included, stretches the next spin to twice its length (at most SPIN_ADAPT_MAX_NS); a longer
 * one (an idle peer) resets it to spin_ns.  Two processes in a steady exchange then stay on their CPUs
 * instead of sleeping every time: on this kind of VM a halted vCPU comes back slowly (a cross-core
 * wake costs 25-30 us) and cold (page faults of fresh memory then cost ~8 us each), which made a 1 MiB
 * ping-pong 20 times slower than with spinning on shm://, and 2.5 times on ring://.  The price: a peer
 * that answers every few milliseconds keeps the waiter spinning up to 2 ms per message; an idle peer
 * costs one such spin, then sleep. */
#define SPIN_ADAPT_MAX_NS 2000000LL
#define SPIN_ADAPT_RESET_NS 5000000LL

/* The spin budget after a wait of `waited` ns that ended with what it waited for (spin_ns >= 0). */
static inline long long ring_adapt_spin(long long spin_ns, long long waited)
{
    if (waited > SPIN_ADAPT_RESET_NS)
        return spin_ns;
    long long next = 2 * waited;
    return next < spin_ns ? spin_ns : next > SPIN_ADAPT_MAX_NS ? SPIN_ADAPT_MAX_NS : next;
}

#define GIL_FREE_COPY 262144u /* the rings' copies this large release the GIL */

/* A producer waiting for room for a record at least this large, on a busy machine, sleeps without
 * spinning: the consumer frees that room only by copying out a message of similar size (tens of
 * microseconds or more), so a spin would only take the CPU that copy needs. */
#define RING_BIG_RECORD 65536u

/* Whether a wait for room for an `n`-byte record should skip its spin (see RING_BIG_RECORD). */
static inline int ring_skip_spin(uint64_t n, long long now)
{
    return n >= RING_BIG_RECORD && ipc_cpus_busy(now);
}

/* Spin rounds between two periodic checks of a spinner (the clock, the busy test): RING_IDLE_ROUNDS
 * on an idle machine, RING_BUSY_ROUNDS on a busy one, where each check yields the CPU, so that a peer
 * queued behind the spinner runs after ~8 rounds in which it made no progress, not after 64. */
#define RING_IDLE_ROUNDS 64u
#define RING_BUSY_ROUNDS 8u

/* Called by a spinner at each periodic check (`now`: the clock just read; the spin began at `start`):
 * 1 when it should stop and sleep, else 0.  On a busy machine it yields the CPU first, and stops once
 * the spin has lasted RING_BUSY_SPIN_NS, unless it must never sleep (`spinning`).  `*mask` becomes the
 * round mask to the next check (RING_IDLE_ROUNDS or RING_BUSY_ROUNDS, minus one). */
static inline int ring_spin_futile(long long start, long long now, int spinning, unsigned *mask)
{
    if (!ipc_cpus_busy(now)) {
        *mask = RING_IDLE_ROUNDS - 1;
        return 0;
    }
    *mask = RING_BUSY_ROUNDS - 1;
    if (spinning || now - start < RING_BUSY_SPIN_NS) {
        sched_yield();
        return 0;
    }
    return 1;
}

/* Spin (the caller has released the GIL) until check(ctx) is non-zero or `ns` pass, or sooner on a
 * busy machine (ring_spin_futile), unless `spinning` (a wait="spin" handle, which must never sleep:
 * on a busy machine it then yields at each check for the whole `ns`, instead of leaving the fast path
 * after 20 us for a general path that spins all the same).  check returns > 0 when what the spinner
 * waits for is there, < 0 when it should stop (closed), 0 to keep spinning; the clock is read every
 * 64 rounds (8 on a busy machine), and once after the first round.  Returns 1 when check said > 0,
 * else 0. */
static inline int ring_spin(int (*check)(void *), void *ctx, long long ns, int spinning)
{
    long long start = ring_now_ns(), until = start + ns;
    unsigned mask = RING_IDLE_ROUNDS - 1;
    /* The first check comes after the first look (i = 0), not after RING_IDLE_ROUNDS of them: on a
     * busy machine the peer often waits behind this very spinner on its CPU, and 64 rounds before the
     * first yield cost a 64 B round trip beside a CPU-bound neighbour 2.5 us of its 5.8 (3.3 now). */
    for (unsigned i = 0;; i++) {
        int got = check(ctx);
        if (got)
            return got > 0;
        if ((i & mask) == 0) {
            long long now = ring_now_ns();
            if (now >= until || ring_spin_futile(start, now, spinning, &mask))
                return 0;
        }
        ring_cpu_relax();
    }
}

/* The optional sid argument of the rings' fast-path sends (try_send, try_send_many): 0-255, else -1 with an exception set. */
static inline int ring_sid_arg(PyObject *const *args, Py_ssize_t nargs, const char *usage, long *sid)
{
    *sid = 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "%s takes 1 or 2 arguments", usage);
        return -1;
    }
    if (nargs == 2 && ((*sid = PyLong_AsLong(args[1])) == -1 && PyErr_Occurred()))
        return -1;
    if (*sid < 0 || *sid > 255) {
        PyErr_SetString(PyExc_ValueError, "sid is a serializer id 0-255");
        return -1;
    }
    return 0;
}

/* The arguments of the rings' try_send_many(items, sid=0): the items as a PySequence_Fast (a new
 * reference), or NULL with an exception set. */
static inline PyObject *ring_send_many_args(PyObject *const *args, Py_ssize_t nargs, long *sid)
{
    if (ring_sid_arg(args, nargs, "try_send_many(items, sid=0)", sid) < 0)
        return NULL;
    return PySequence_Fast(args[0], "try_send_many() takes a sequence of bytes-like objects");
}

/* The arguments of both ports' try_recv_many(max_messages, sid=-1).  0, or -1 with TypeError set. */
static inline int ring_recv_many_args(PyObject *const *args, Py_ssize_t nargs, long long *most, long long *sid)
{
    *sid = -1;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "try_recv_many(max_messages, sid=-1) takes 1 or 2 arguments");
        return -1;
    }
    if ((*most = PyLong_AsLongLong(args[0])) == -1 && PyErr_Occurred())
        return -1;
    return nargs == 2 && (*sid = PyLong_AsLongLong(args[1])) == -1 && PyErr_Occurred() ? -1 : 0;
}

/* The arguments of both ports' try_recv_into(buffer, offset=0): the writable, contiguous buffer
 * exported into *out, with *room bytes from *dst.  1 when the call leaves everything to the general
 * path (a wrong argument count, an unwritable or non-contiguous buffer, an offset that is not an int
 * inside it: recv_bytes_into raises the right error there), with nothing exported and no exception;
 * 0 when exported (the caller releases *out). */
static inline int ring_recv_into_args(PyObject *const *args, Py_ssize_t nargs, Py_buffer *out, char **dst,
                                      Py_ssize_t *room)
{
    Py_ssize_t offset = 0;
    if (nargs < 1 || nargs > 2)
        return 1;
    if (nargs == 2) {
        if (!PyLong_CheckExact(args[1]))
            return 1;
        offset = PyLong_AsSsize_t(args[1]);
        if (offset == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 1;
        }
    }
    if (PyObject_GetBuffer(args[0], out, PyBUF_WRITABLE) < 0) {
        PyErr_Clear();
        return 1;
    }
    if (offset < 0 || offset > out->len) {
        PyBuffer_Release(out);
        return 1;
    }
    *dst = (char *)out->buf + offset;
    *room = out->len - offset;
    return 0;
}

/* Run slice(ctx) without the GIL until it returns anything but RING_WAIT_SIGNALS, taking the GIL
 * between slices to run signal handlers.  Called with the GIL; returns with it.  Returns the slice's
 * result, or RING_PY_ERROR when a signal handler raised (the exception is set). */
static inline long long ring_wait_loop(long long (*slice)(void *), void *ctx)
{
    long long rc;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        rc = slice(ctx);
        Py_END_ALLOW_THREADS
        if (rc != RING_WAIT_SIGNALS)
            return rc;
        if (PyErr_CheckSignals() < 0)
            return RING_PY_ERROR;
    }
}

#endif
