"""A record lock: the kernel says who holds it, and frees it when the holder dies, even by SIGKILL."""
import contextlib
import os
import signal
import tempfile

from ipcraft.errors import Timeout
from ipcraft.primitives import RecordLock

with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "app.lock")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        lock = RecordLock.open_or_create(path)
        lock.acquire(timeout=5)                          # fcntl(F_SETLKW) on the whole file
        os.write(w, b"!")                                # tell the parent, then hang holding it
        signal.pause()
    os.read(r, 1)
    with contextlib.closing(RecordLock.open_or_create(path)) as lock:   # `with lock` would take it
        print("holder is the child:", lock.holder().pid == pid)        # F_GETLK
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print("refused while the child holds it")
        os.kill(pid, signal.SIGKILL)
        lock.acquire(timeout=5)                          # the kernel released the dead holder's lock
        print("acquired after the kill")
        lock.release()
    os.waitpid(pid, 0)
