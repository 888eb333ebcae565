"""A parent hands jobs to forked workers over ipcraft.pipe() and collects the results."""
import os

import ipcraft

workers = []
for n in range(2):
    parent_end, child_end = ipcraft.pipe()
    if os.fork() == 0:
        parent_end.close()
        for job in child_end:                            # until the parent closes its end
            child_end.send({"worker": n, "square": job * job})
        os._exit(0)
    child_end.close()
    workers.append(parent_end)

for i, ch in enumerate(workers):
    ch.send(i + 3)
results = sorted((ch.recv(timeout=5)["square"] for ch in workers))
print("results", results)
for ch in workers:
    ch.close()
for _ in workers:
    os.wait()
