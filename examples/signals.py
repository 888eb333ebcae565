"""A real-time signal carries an integer from one process to another; a signalfd reads it as data."""
import os
import signal

from ipcraft.primitives import SignalFD, sigqueue

with SignalFD([signal.SIGRTMIN]) as sfd:          # block SIGRTMIN, read it from a file descriptor
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        sigqueue(parent, signal.SIGRTMIN, 42)     # queued, not merged, with the sender's pid and uid
        os._exit(0)
    info = sfd.recv(timeout=5)
    os.waitpid(pid, 0)
    print("payload", info.value, "from the child:", info.pid == pid)
