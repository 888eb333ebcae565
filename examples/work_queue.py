"""Work queue: one producer, several workers taking jobs from one ring:// queue, results on another."""
import os

import ipcraft

WORKERS, JOBS = 3, 12
tag = os.getpid()
jobs = ipcraft.queue(f"ring://example-jobs-{tag}", create=True)       # the creator removes them on close
results = ipcraft.queue(f"ring://example-results-{tag}", create=True)
pids = []
for _ in range(WORKERS):
    pid = os.fork()
    if pid == 0:                                       # a worker: take a job, answer, until told to stop
        with ipcraft.queue(f"ring://example-jobs-{tag}") as mine, \
                ipcraft.queue(f"ring://example-results-{tag}") as out:
            while (job := mine.recv(timeout=10)) is not None:
                out.send({"job": job, "square": job * job, "worker": os.getpid()})
        os._exit(0)
    pids.append(pid)
for n in range(JOBS):
    jobs.send(n)                                       # each job goes to exactly one worker
for _ in range(WORKERS):
    jobs.send(None)                                    # one stop marker per worker
done = [results.recv(timeout=10) for _ in range(JOBS)]
for pid in pids:
    os.waitpid(pid, 0)
print("squares", sorted(r["square"] for r in done))
print("every job once:", sorted(r["job"] for r in done) == list(range(JOBS)))
jobs.close()
results.close()
