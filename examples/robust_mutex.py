"""A robust process-shared mutex: its owner dies holding it, and the next locker is told, not deadlocked."""
import mmap
import os
import signal

from ipcraft.errors import OwnerDied
from ipcraft.primitives import SharedMutex

with mmap.mmap(-1, 4096) as buf:                  # MAP_SHARED|MAP_ANONYMOUS: shared with forked children
    mutex = SharedMutex.create(buf)               # pthread mutex: PTHREAD_PROCESS_SHARED, ROBUST
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        mutex.acquire(timeout=5)
        buf[64:69] = b"half-"                     # starts an update...
        os.write(w, b"!")
        signal.pause()                            # ...and never finishes it
    os.read(r, 1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    try:
        mutex.acquire(timeout=5)
    except OwnerDied:                             # EOWNERDEAD: we hold it now, the data may be half done
        print("owner died mid-update:", bytes(buf[64:69]))
        buf[64:69] = b"fixed"
        mutex.make_consistent()                   # else the mutex becomes unusable on release
    mutex.release()
    with mutex:
        print("works on:", bytes(buf[64:69]))
    mutex.close()
