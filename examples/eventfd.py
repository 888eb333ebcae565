"""An eventfd: a counter in the kernel that wakes a reader; many posts coalesce into one read."""
import os

from ipcraft.primitives import EventFD

with EventFD() as efd:                     # inherited across fork, like a pipe
    pid = os.fork()
    if pid == 0:
        for _ in range(3):
            efd.send(1)                    # write(): add 1, wake the reader
        os._exit(0)
    os.waitpid(pid, 0)
    print("one read takes them all:", efd.recv(timeout=5))    # read(): the counter, reset to 0
with EventFD(semaphore=True) as sem:       # EFD_SEMAPHORE: each read takes 1
    sem.send(2)
    print("semaphore mode:", sem.recv(timeout=5), sem.recv(timeout=5))
