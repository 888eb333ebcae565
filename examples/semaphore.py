"""A POSIX named semaphore: a process sleeps in the kernel until another one posts."""
import contextlib
import os
import time

from ipcraft.primitives import PosixSemaphore

name = f"/example-sem-{os.getpid()}"
# contextlib.closing: `with` on a semaphore handle would acquire it.
with contextlib.closing(PosixSemaphore.create(name, initial=0)) as ready:   # sem_open(O_CREAT|O_EXCL)
    pid = os.fork()
    if pid == 0:
        with contextlib.closing(PosixSemaphore.open(name)) as sem:
            time.sleep(0.2)                               # some work...
            sem.release()                                 # sem_post: +1, wakes one sleeper
        os._exit(0)
    t = time.monotonic()
    ready.acquire(timeout=5)                              # sem_wait: the value is 0, so this process sleeps
    print("woke after the post, asleep for at least 0.1 s:", time.monotonic() - t >= 0.1)
    os.waitpid(pid, 0)
    print("value now", ready.value)
