"""A numpy array in shared memory, updated by several processes under a robust mutex."""
import os

import numpy as np

from ipcraft.primitives import PosixSharedMemory, SharedMutex

name = f"/example-array-{os.getpid()}"
with PosixSharedMemory.create(name, 4096) as mem:
    mutex = SharedMutex.create(mem.buf, 0)           # the mutex lives in the first 64 bytes
    counts = np.frombuffer(mem.buf, dtype=np.int64, count=4, offset=64)   # the array after it: no copy
    pids = []
    for w in range(3):
        pid = os.fork()
        if pid == 0:
            with PosixSharedMemory.open(name) as m:
                mine = SharedMutex.open(m.buf, 0)
                view = np.frombuffer(m.buf, dtype=np.int64, count=4, offset=64)
                for _ in range(1000):
                    with mine:                        # read-modify-write of several cells: one at a time
                        view += 1
                del view
                mine.close()
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    print("every cell counted every increment:", counts.tolist())
    del counts                                        # release the views before the mapping closes
    mutex.close()
