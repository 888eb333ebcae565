/* What the two ring engines share: the single-producer single-consumer ring of shm:// (spsc.h, spsc.c,
 * spsc_port.c) and the multi-producer multi-consumer ring of ring:// and file:// (mpmc.h, mpmc.c,
 * mpmc_port.c).  Both wait the same way: spin without the GIL, then sleep without the GIL, in slices
 * that come back every few milliseconds so the caller can take the GIL and run signal handlers (a
 * Ctrl-C interrupts any wait).  This header holds that loop, the spin helper and the one sentinel a
 * slice returns to ask for the GIL; the layouts stay in each engine's own header.
 */
#ifndef IPCRAFT_RINGS_H
#define IPCRAFT_RINGS_H

#include "native.h"
#include <stdint.h>
#include <time.h>

/* A wait slice returns this to say "take the GIL, run the signal handlers, call me again".  Negative
 * and far from any errno, so it never collides with a count (>= 0) or an -errno result. */
#define RING_WAIT_SIGNALS (-200000LL)
/* A ring operation returns this when a Python exception is set (a signal handler raised). */
#define RING_PY_ERROR (-100000LL)

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

/* Spin (the caller has released the GIL) until check(ctx) is non-zero or `ns` pass.  check returns > 0
 * when what the spinner waits for is there, < 0 when it should stop (closed), 0 to keep spinning; the
 * clock is read every 64 rounds.  Returns 1 when check said > 0, else 0. */
static inline int ring_spin(int (*check)(void *), void *ctx, long long ns)
{
    long long until = ring_now_ns() + ns;
    for (unsigned i = 1;; i++) {
        int got = check(ctx);
        if (got)
            return got > 0;
        if ((i & 63) == 0 && ring_now_ns() >= until)
            return 0;
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
