"""A FIFO: a pipe with a name, so processes that share no ancestor can find it."""
import errno
import os
import tempfile

from ipcraft.errors import ChannelClosed
from ipcraft.primitives import Fifo

with tempfile.TemporaryDirectory() as d, Fifo.create(os.path.join(d, "jobs")) as fifo:   # mkfifo
    try:
        Fifo.open(fifo.path).open_write(nonblocking=True)   # O_NONBLOCK and no reader yet
    except OSError as exc:
        print("non-blocking write-open fails at once:", errno.errorcode[exc.errno])
    pid = os.fork()
    if pid == 0:                                    # the writer: its open sleeps until a reader opens
        with Fifo.open(fifo.path).open_write(timeout=5) as w:
            w.write(b"job 1\njob 2\n")
        os._exit(0)
    data = b""
    with Fifo.open(fifo.path).open_read(timeout=5) as r:
        try:
            while True:
                data += r.read(timeout=5)
        except ChannelClosed:                       # end of file: the writer closed
            pass
    os.waitpid(pid, 0)
    print("reader got", data.decode().split("\n")[:2])
