/* The busy-machine test of the ring wait loops (see rings.h): is every CPU taken? */
#include "rings.h"
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

/* Per thread: when the run queue was last read and what it said. */
static __thread long long busy_checked_at = -RING_BUSY_CHECK_NS - 1;
static __thread int busy_last;

/* The kernel's count of runnable tasks, system-wide, at this instant: the numerator of the fourth
 * field of /proc/loadavg ("0.50 0.40 0.30 3/250 12345").  -1 when it cannot be read. */
static long runnable_now(void)
{
    char buf[128];
    int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t k = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (k <= 0)
        return -1;
    buf[k] = '\0';
    char *p = buf;
    for (int field = 0; field < 3; field++) {
        while (*p && *p != ' ')
            p++;
        while (*p == ' ')
            p++;
    }
    char *end;
    long running = strtol(p, &end, 10);
    return end != p && *end == '/' ? running : -1;
}

int ipc_cpus_busy(long long now)
{
    static long ncpus;
    if (now - busy_checked_at < RING_BUSY_CHECK_NS)
        return busy_last;
    busy_checked_at = now;
    if (ncpus == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        ncpus = n > 0 ? n : 1;
    }
    long running = runnable_now(); /* the caller, spinning, is one of them */
    busy_last = running > ncpus;
    return busy_last;
}

static PyObject *ring_cpus_busy(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyBool_FromLong(ipc_cpus_busy(ring_now_ns()));
}

PyMethodDef ipc_rings_methods[] = {
    {"ring_cpus_busy", ring_cpus_busy, METH_NOARGS,
     "ring_cpus_busy() -> bool: what the ring waits of this thread believe now: more tasks are runnable "
     "than there are online CPUs, so a spin stops after 20 us (re-read at most every 0.5 ms)."},
    {NULL, NULL, 0, NULL},
};
