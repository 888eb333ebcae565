"""POSIX shared memory: the same pages in two processes; a semaphore says when the data is ready."""
import os

import sysv_ipc

from ipcraft.primitives import PosixSharedMemory, SysVSemaphoreSet

name = f"/example-shm-{os.getpid()}"
with PosixSharedMemory.create(name, 4096) as mem, \
        SysVSemaphoreSet.create(sysv_ipc.IPC_PRIVATE, 1, initial=0) as ready:
    pid = os.fork()
    if pid == 0:
        with PosixSharedMemory.open(name) as mine:       # shm_open + mmap of the same object
            mine.buf[:5] = b"hello"                      # a plain store: no system call, no copy
        ready.release()                                  # ...then tell the reader it is there
        os._exit(0)
    ready.acquire(timeout=5)
    print("parent sees", bytes(mem.buf[:5]))
    print("and again", bytes(mem.buf[:5]))               # reading consumes nothing
    os.waitpid(pid, 0)
