/* What the two ring engines share: the single-producer single-consumer ring of shm:// (spsc.h, spsc.c,
 * spsc_port.c) and the multi-producer multi-consumer ring of ring:// and file:// (mpmc.h, mpmc.c,
 * mpmc_port.c).  Both wait the same way: spin without the GIL, then sleep without the GIL, in slices
 * that come back every few milliseconds so the caller can take the GIL and run signal handlers (a
 * Ctrl-C interrupts any wait).  This header holds that loop, the spin helper and the one sentinel a
 * slice returns to ask for the GIL; the layouts stay in each engine's own header.
 *
 * Spinning pays only while a CPU is free to spin on.  On a machine where every CPU is taken (more
 * runnable tasks than CPUs), the peer a spinner waits for is often the task that waits for a CPU: the
 * spin then burns the very time the peer needs, and a 1 MiB round trip stretched from 0.14 ms to 4 ms
 * beside a single CPU-bound neighbour on two cores.  So every spin here asks, at most every
 * RING_BUSY_CHECK_NS, whether the kernel counts more runnable tasks than online CPUs (the fourth field
 * of /proc/loadavg, an instantaneous count), and on a busy machine it spins at most RING_BUSY_SPIN_NS
 * (less than a cross-core wake-up costs), then sleeps: its CPU goes idle, the scheduler moves a
 * waiting task (often the peer) onto it, and the peer's next publication wakes the sleeper at once
 * (Dekker's flag, see spsc.c and mpmc.c).  A waiter that has just woken its peer with a system call
 * does not spin at all on a busy machine: the scheduler tends to queue the woken peer on the waker's
 * own CPU, behind the spin (a 64-byte round trip took 49 us instead of 5 that way).  A waiter that
 * must never sleep (wait="spin") yields its CPU at those points instead.  An idle machine keeps the
 * full spin.
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
/* On a busy machine a spin lasts at most this long: a prompt peer still answers within it, and it is
 * less than the 25-30 us that a sleep and a cross-core wake-up cost together. */
#define RING_BUSY_SPIN_NS 20000LL

/* 1 when more tasks are runnable than there are online CPUs (re-read at most every RING_BUSY_CHECK_NS
 * per thread; `now` is ring_now_ns()), else 0, and 0 when the count cannot be read (no /proc). */
int ipc_cpus_busy(long long now);

/* Set (per thread) when this thread woke a sleeping peer with a system call; the next spin reads and
 * clears it (ring_spin_futile). */
extern __thread int ipc_woke_peer;

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

/* Whether a spin that began at `start` should stop now (`now`: the clock just read): the machine is
 * busy, and the spin has lasted RING_BUSY_SPIN_NS or this thread has just woken its peer (`woke`, the
 * value of ipc_woke_peer taken when the spin began).  A spinner that must not sleep (`spinning`) calls
 * sched_yield() instead of stopping: its CPU goes to whoever waits for it, the woken peer included. */
static inline int ring_spin_futile(long long start, long long now, int woke, int spinning)
{
    if ((!woke && now - start < RING_BUSY_SPIN_NS) || !ipc_cpus_busy(now))
        return 0;
    if (!spinning)
        return 1;
    sched_yield();
    return 0;
}

/* ipc_woke_peer, cleared: a spin calls this once, as it begins. */
static inline int ring_take_woke(void)
{
    int woke = ipc_woke_peer;
    ipc_woke_peer = 0;
    return woke;
}

/* Spin (the caller has released the GIL) until check(ctx) is non-zero or `ns` pass, or sooner on a
 * busy machine (ring_spin_futile).  check returns > 0 when what the spinner waits for is there, < 0
 * when it should stop (closed), 0 to keep spinning; the clock is read every 64 rounds.  Returns 1 when
 * check said > 0, else 0. */
static inline int ring_spin(int (*check)(void *), void *ctx, long long ns)
{
    long long start = ring_now_ns(), until = start + ns;
    int woke = ring_take_woke();
    for (unsigned i = 0;; i++) {
        int got = check(ctx);
        if (got)
            return got > 0;
        if ((i & 63) == 0) {
            long long now = i ? ring_now_ns() : start;
            if (now >= until || ring_spin_futile(start, now, woke, 0))
                return 0;
        }
        ring_cpu_relax();
    }
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
