"""Graceful shutdown: SIGTERM asks a worker to finish the job in hand, say so, and exit cleanly."""
import os
import signal
import time

import ipcraft
from ipcraft.errors import Timeout
from ipcraft.primitives import SignalReceiver

jobs, feed = ipcraft.pipe(duplex=False)
ready, told = ipcraft.pipe(duplex=False)
pid = os.fork()
if pid == 0:
    with SignalReceiver([signal.SIGTERM]) as stop:   # SIGTERM is queued, not fatal, inside this block
        told.send("ready")
        done = 0
        while True:
            try:
                stop.recv(timeout=0)                 # asked to stop: leave between two jobs
                break
            except Timeout:
                pass
            try:
                jobs.recv(timeout=0.05)
                done += 1                            # ...the job, finished whole
            except Timeout:
                continue
        told.send(f"stopped cleanly after {done} jobs")
    os._exit(0)
print(ready.recv(timeout=10))
for n in range(5):
    feed.send(n)
time.sleep(0.5)
os.kill(pid, signal.SIGTERM)
print(ready.recv(timeout=10))
_, status = os.waitpid(pid, 0)
print("exit status", os.waitstatus_to_exitcode(status))
for ch in (jobs, feed, ready, told):
    ch.close()
