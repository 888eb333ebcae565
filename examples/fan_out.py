"""Fan-out: one publisher sends every message to every subscriber, each on its own channel."""
import os

import ipcraft

subscribers = []
for n in range(3):
    mine, theirs = ipcraft.pipe(duplex=False)          # (reader, writer)
    if os.fork() == 0:
        theirs.close()
        got = []
        while (msg := mine.recv(timeout=10)) is not None:
            got.append(msg)
        print(f"subscriber {n} got {got}", flush=True)
        os._exit(0)
    mine.close()
    subscribers.append(theirs)
for event in ("start", "tick", "stop"):
    for ch in subscribers:                              # every subscriber gets a copy
        ch.send(event)
for ch in subscribers:
    ch.send(None)
    ch.close()
for _ in subscribers:
    os.wait()
