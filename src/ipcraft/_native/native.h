/* ipcraft._native: the only C in ipcraft.
 *
 * A dumb, complete ABI over memory that Python owns: Python maps the shared memory and
 * passes a buffer plus an offset; C performs the operation Python cannot do well (an atomic access, a
 * futex wait or wake, a ring copy loop) and returns 0, a count, or -errno.  C raises only for bad
 * arguments (TypeError, BufferError, ValueError for an offset outside the buffer or misaligned), and
 * for a signal that interrupted a wait (whatever the Python handler raised, e.g. KeyboardInterrupt).
 * It knows nothing of channels, names or serializers.  Each concern lives in its own .c file and
 * exports a NULL-terminated PyMethodDef table that module.c adds to the module.
 */
#ifndef IPCRAFT_NATIVE_H
#define IPCRAFT_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

extern PyMethodDef ipc_atomics_methods[];
extern PyMethodDef ipc_futex_methods[];
extern PyMethodDef ipc_mman_methods[];
int ipc_mman_register(PyObject *m); /* mman.c: the MirrorMap type */
/* Whether obj is a MirrorMap mapped at base with this header and data-area size (mman.c): then the
 * data area is mapped again right after itself, and a record may be lent across its end. */
int ipc_mirror_of(PyObject *obj, const char *base, uint64_t header, uint64_t cap);
extern PyMethodDef ipc_rings_methods[]; /* rings.c: ring_cpus_busy() */
int ipc_pmutex_register(PyObject *m); /* pmutex.c: functions, the PMutex type, PMUTEX_SIZE */
int ipc_spsc_register(PyObject *m); /* spsc_port.c: the SpscPort type and spsc_layout() */
int ipc_lend_register(PyObject *m); /* lend.c: BusyLock, Lender and Lend (zero copy) */
int ipc_mpmc_register(PyObject *m); /* mpmc_port.c: the MpmcPort type and mpmc_layout() */
int ipc_bcast_register(PyObject *m); /* bcast.c: the BcastPort type and bcast_layout() */
int ipc_zmqfast_register(PyObject *m); /* zmqfast.c: the ZmqFast type (zmq+tcp://, zmq+ipc://) */
int ipc_fastmethod_register(PyObject *m); /* fastmethod.c: FastMethod, a method whose common case is C */

/* Zero copy over a ring port (lend.c's Lend), implemented by spsc_port.c and mpmc_port.c: each verb
 * returns 0 or -errno (-EAGAIN, -EXDEV...: the general path in Python must do it), a loaned or
 * borrowed payload as a pointer into the port's buffer.  `borrow` may spin briefly (GIL released) on
 * an empty ring, as the copying fast path does; `pin` takes an export of the mapping (the port's
 * buffer) so that it outlives an escaped view. */
typedef struct {
    PyTypeObject *type;
    int (*producer)(PyObject *port);
    int (*loan)(PyObject *port, uint64_t n, char **payload);
    int (*commit)(PyObject *port, int sid);
    int (*give_back_loan)(PyObject *port);
    int (*borrow)(PyObject *port, char **payload, uint64_t *n);
    int (*consume)(PyObject *port);
    int (*give_back_borrowed)(PyObject *port);
    int (*pin)(PyObject *port, Py_buffer *pin);
} LendOps;
extern const LendOps ipc_spsc_lend_ops, ipc_mpmc_lend_ops;

/* Resolve `offset` in a writable buffer to an aligned pointer to `size` bytes.  Sets ValueError and
 * returns NULL when the range leaves the buffer or the address is not `size`-aligned. */
void *ipc_buffer_at(Py_buffer *view, Py_ssize_t offset, Py_ssize_t size);

/* Convert a timeout in float seconds (or None) into an absolute-free relative timespec.
 * Returns 0 and sets *has_timeout; -1 with ValueError for a negative or non-finite value. */
int ipc_timeout_arg(PyObject *obj, struct timespec *ts, int *has_timeout);

/* The n of a reserve(n) method: 1 (and *n) for n >= 0, 0 for a negative n (the method answers -EINVAL),
 * -1 with an exception set for a non-integer. */
int ipc_size_arg(PyObject *arg, uint64_t *n);

/* Ready `type` and add it to module `m` as `name`.  0, or -1 with an exception set. */
int ipc_add_type(PyObject *m, PyTypeObject *type, const char *name);

#endif
