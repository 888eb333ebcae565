"""A System V message queue: whole messages with a type, fetched by type or by the lowest type first."""
import os

import sysv_ipc

from ipcraft.primitives import SysVMessageQueue

with SysVMessageQueue.create(sysv_ipc.IPC_PRIVATE) as q:   # msgget(IPC_PRIVATE): a queue for our children
    pid = os.fork()
    if pid == 0:
        for data, kind in ((b"report", 3), (b"urgent", 1), (b"normal", 2)):
            q.send(data, type=kind)                         # msgsnd: each message keeps its type
        os._exit(0)
    os.waitpid(pid, 0)
    print(q.recv(type=2, timeout=5))    # the oldest message of type 2
    print(q.recv(type=-3, timeout=5))   # the oldest of the lowest type <= 3
    print(q.recv(timeout=5))            # type 0: the oldest of any type
    print("left in the queue:", q.current_messages)         # receiving removed them
