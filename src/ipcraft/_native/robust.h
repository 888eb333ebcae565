/* robust.c: every lock operation on a robust mutex in shared memory goes through these, which check
 * the mutex's words before glibc reads them.  Each returns 0 or a positive errno as pthread does
 * (EBUSY, ETIMEDOUT, EOWNERDEAD, ENOTRECOVERABLE, EDEADLK, EPERM), plus EPROTO for a corrupt mutex,
 * on which glibc was not called. */
#ifndef IPCRAFT_ROBUST_H
#define IPCRAFT_ROBUST_H

#include <pthread.h>
#include <time.h>

int ipc_robust_setup(void); /* once, at module import: learn glibc's kinds, register the fork hook */
int ipc_robust_init_attrs(pthread_mutex_t *m, int type); /* process-shared, robust, of `type` */
int ipc_robust_trylock(pthread_mutex_t *m);
int ipc_robust_clocklock(pthread_mutex_t *m, const struct timespec *abstime); /* CLOCK_MONOTONIC */
int ipc_robust_lock(pthread_mutex_t *m);
int ipc_robust_unlock(pthread_mutex_t *m);
int ipc_robust_consistent(pthread_mutex_t *m);

#endif
