"""A pipe between a parent and the child it forks: one way only, and end of file once the writer is gone."""
import os

from ipcraft.errors import ChannelClosed
from ipcraft.primitives import Pipe

with Pipe() as p:                          # pipe2(): a read end and a write end, made before the fork
    pid = os.fork()
    if pid == 0:                           # the child inherited both ends; it only writes
        p.close_read()
        p.write(b"hello ")
        p.write(b"from the child")
        os._exit(0)                        # exiting closes the child's write end
    p.close_write()                        # the parent's too, or it would never see end of file
    data = b""
    try:
        while True:
            data += p.read(timeout=5)      # whatever is in the pipe: the two writes may come as one
    except ChannelClosed:                  # end of file: no write end is open anywhere
        pass
    os.waitpid(pid, 0)
    print("parent read", data)
    print("the pipe holds", p.capacity, "bytes")   # F_GETPIPE_SZ: 65536 by default on Linux
