"""A POSIX message queue: a named queue of whole messages, the highest priority first."""
import os

from ipcraft.primitives import PosixMessageQueue

name = f"/example-mq-{os.getpid()}"
with PosixMessageQueue.create(name, maxmsg=8, msgsize=128) as q:   # mq_open(O_CREAT|O_EXCL), 0600
    pid = os.fork()
    if pid == 0:                                                   # another process opens it by name
        with PosixMessageQueue.open(name) as mine:
            for data, prio in ((b"low", 1), (b"high", 9), (b"middle", 5)):
                mine.send(data, priority=prio, timeout=5)
        os._exit(0)
    os.waitpid(pid, 0)
    print([q.recv(timeout=5) for _ in range(3)])
# the creator's handle unlinked the name on close: nothing is left in /dev/mqueue
