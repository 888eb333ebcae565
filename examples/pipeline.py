"""Pipeline: each stage reads from the one before and writes to the one after, all at once."""
import os

import ipcraft


def stage(source, sink, work):
    """Forked: apply work to every message until the stop marker, pass the marker on."""
    if os.fork() == 0:
        while (item := source.recv(timeout=10)) is not None:
            sink.send(work(item))
        sink.send(None)
        os._exit(0)


head, a_in = ipcraft.pipe(duplex=False)     # (reader, writer): the parent writes into a_in
a_out, b_in = ipcraft.pipe(duplex=False)
tail, b_out = ipcraft.pipe(duplex=False)
stage(head, b_in, lambda words: words.split())           # stage 1: split
stage(a_out, b_out, lambda words: [w.upper() for w in words])   # stage 2: shout
for ch in (head, b_in, a_out, b_out):
    ch.close()                              # the parent keeps only both ends of the line
for line in ("pipes carry bytes", "queues carry messages"):
    a_in.send(line)
a_in.send(None)
while (out := tail.recv(timeout=10)) is not None:
    print(out)
for _ in range(2):
    os.wait()
a_in.close()
tail.close()
