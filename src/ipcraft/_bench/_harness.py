"""The process pair: fork A and B, pin them, run the workloads, collect the figures, always reap.

Decisions:

* **A fresh fork()ed pair per trial** (one subject, one repetition, every size), as in the reference
  method: no state leaks from one mechanism to the next, and a crash or hang costs one trial.
  Resources that must exist before both processes (anonymous pipes, multiprocessing queues, named
  peer objects) are made by the runner in ``Subject.prepare`` and inherited.
* **A control line beside the mechanism** (a SOCK_SEQPACKET socketpair, JSON messages) carries what the
  mechanism under test must not: URLs to open, "ready" barriers, B's timestamps and CPU times, and
  "skip this size" when a channel refuses a message with MessageTooLarge.  B waits for the first
  message of each size polling both, so a refusal cannot deadlock the pair.
* **Latency** is ping-pong timed per round trip with ``perf_counter_ns``; **throughput** is A sending
  back to back while B receives, timed from A's first send to B's last receive (CLOCK_MONOTONIC in
  both processes); **CPU time** is getrusage(RUSAGE_SELF) user+system of both processes around the
  run (it counts helper threads, e.g. multiprocessing's feeder and zmq's I/O thread).
* The children disable the garbage collector while measuring (the echo loops allocate no cycles) and
  die with the runner (PR_SET_PDEATHSIG), so an interrupted bench leaves no process behind.  Their
  stdout/stderr go to /dev/null unless IPCRAFT_BENCH_DEBUG is set: errors travel back as results.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import select
import signal
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

from ..errors import MessageTooLarge, Timeout
from ._plan import Plan

_MONO = time.CLOCK_MONOTONIC


class Unavailable(Exception):
    """The subject cannot run on this machine or build (a missing package, a scheme not built)."""


class PeerGone(Exception):
    """The other process of the pair closed the control line (it failed or was killed)."""


class Link:
    """One side's handle on the mechanism under test: send bytes, receive bytes, echo."""

    #: True when send may refuse a size with MessageTooLarge (ipcraft channels); then the first message
    #: of each size is a probe and ``recv_timeout`` must work.
    may_refuse = False

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def recv(self) -> Any:
        raise NotImplementedError

    def recv_timeout(self, timeout: float) -> Any:
        raise NotImplementedError

    def echo(self) -> None:
        """Receive one message and send it back (B's half of a round trip)."""
        self.send(self.recv())

    def close(self) -> None:
        """Release what open() made in this process."""


class Env:
    """Where a run puts what it names: a private temp dir, names carrying the run's tag, SysV keys."""

    def __init__(self, tmpdir: str, tag: str, max_size: int) -> None:
        self.tmpdir = tmpdir
        self.tag = tag
        #: The largest message size of the run (receive buffers are allocated once, this big).
        self.max_size = max_size
        self.keys: list[int] = []
        self._n = 0

    def name(self) -> str:
        """A name for /dev/shm, /dev/mqueue or an abstract socket; the sweep finds it by the tag."""
        from ..testing import unique_name

        return unique_name(self.tag)

    def path(self, suffix: str) -> str:
        self._n += 1
        return os.path.join(self.tmpdir, f"{self._n}{suffix}")

    def key(self) -> int:
        from ..testing import unique_key

        k = unique_key()
        self.keys.append(k)
        return k


class Subject:
    """A mechanism measured by the bench: an ipcraft scheme, a bare baseline loop, or a peer library."""

    name = ""
    group = "ipcraft"  # "ipcraft" | "baseline" | "peer"
    #: Busy-polls: meaningless with both processes on one CPU.
    spins = False
    #: Has a blocking receive whose idle CPU use is worth measuring (--idle).
    idle_ok = False
    #: Extra facts for the JSON (scheme, wait mode, API).
    facts: dict[str, Any] = {}

    def unavailable(self) -> str | None:
        """Why this subject cannot run here (checked in the runner before forking), or None."""
        return None

    def skip_reason(self, size: int) -> str | None:
        """Why ``size`` cannot be measured (a kernel limit known in advance), or None."""
        return None

    def prepare(self, env: Env) -> None:
        """In the runner, before the fork: create what both processes inherit."""

    def open(self, side: str, ctl: Ctl) -> Link:
        """In child ``side`` ("a" or "b"): connect to the mechanism and return the Link."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """In the runner, after both children are reaped: close and remove what prepare() made."""


class Ctl:
    """The control line between A and B: small JSON messages over a SOCK_SEQPACKET socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def put(self, obj: Any) -> None:
        self.sock.sendall(json.dumps(obj).encode())

    def poll(self) -> bool:
        return bool(select.select([self.sock], [], [], 0)[0])

    def get(self, timeout: float | None = None) -> Any:
        if timeout is not None and not select.select([self.sock], [], [], timeout)[0]:
            raise TimeoutError("the other process of the pair did not answer on the control line")
        data = self.sock.recv(65536)
        if not data:
            raise PeerGone("the other process of the pair ended")
        return json.loads(data)


def short_reason(exc: MessageTooLarge) -> str:
    """A table-sized reason for a refused size: the /proc knob and its value when the message names
    one (``msgsize_max 8192``), else the limit in bytes."""
    import re

    m = re.search(r"/proc/sys/\S*?([A-Za-z_]+)\s*=\s*(\d+)", str(exc))
    if m:
        return f"{m.group(1)} {m.group(2)}"
    if exc.limit is not None:
        return f"limit {exc.limit} B"
    return str(exc).split(";")[0][:60]


def summarize(samples_ns: list[int]) -> dict[str, float]:
    """Nearest-rank percentiles of round-trip times, in microseconds."""
    s = sorted(samples_ns)
    n = len(s)

    def pct(q: float) -> float:
        return s[max(0, min(n - 1, int(q * n + 0.999999) - 1))] / 1000.0

    return {"n": n, "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "min": s[0] / 1000.0,
            "max": s[-1] / 1000.0, "mean": sum(s) / n / 1000.0}


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _payload(size: int) -> bytes:
    return b"\xa5" * size


# -- the two sides ------------------------------------------------------------------------------------

def _first_recv(link: Link, ctl: Ctl) -> tuple[Any, bool] | None:
    """B's receive of a size's first (probe) message: None if A reports the size refused, else
    ``(data, go_seen)``."""
    while True:
        try:
            return link.recv_timeout(0.05), False
        except Timeout:
            if ctl.poll():
                msg = ctl.get()
                if "skip" in msg:
                    return None
                return link.recv(), True


def _side_a(link: Link, ctl: Ctl, plan: Plan, size: int) -> dict[str, Any]:
    payload = _payload(size)
    send, recv = link.send, link.recv
    first = 0
    if link.may_refuse:
        try:
            send(payload)
        except MessageTooLarge as exc:
            ctl.put({"skip": short_reason(exc)})
            return {"status": "skipped", "reason": short_reason(exc)}
        ctl.put({"go": 1})
        recv()
        first = 1
    for _ in range(plan.warmup(size) - first):
        send(payload)
        recv()
    n = plan.round_trips(size)
    samples = [0] * n
    ns = time.perf_counter_ns
    c0 = _cpu()
    for i in range(n):
        t0 = ns()
        send(payload)
        recv()
        samples[i] = ns() - t0
    cpu_a = _cpu() - c0
    latency = summarize(samples)
    ready = ctl.get()
    latency["cpu_us_per_roundtrip"] = (cpu_a + ready["cpu"]) / n * 1e6

    for _ in range(plan.throughput_warmup):
        send(payload)
        recv()
    count = plan.messages(size)
    c0 = _cpu()
    t_first = time.clock_gettime_ns(_MONO)
    for _ in range(count):
        send(payload)
    cpu_a = _cpu() - c0
    done = ctl.get()
    seconds = max(1e-9, (done["t_last"] - t_first) / 1e9)
    throughput = {"count": count, "seconds": seconds, "msg_per_s": count / seconds,
                  "mb_per_s": count * size / seconds / 1e6,
                  "cpu_us_per_msg": (cpu_a + done["cpu"]) / count * 1e6}
    return {"status": "ok", "latency": latency, "throughput": throughput}


def _side_b(link: Link, ctl: Ctl, plan: Plan, size: int) -> None:
    echo, recv = link.echo, link.recv
    first = 0
    if link.may_refuse:
        got = _first_recv(link, ctl)
        if got is None:
            return
        data, go_seen = got
        if not go_seen:
            ctl.get()
        link.send(data)
        first = 1
    for _ in range(plan.warmup(size) - first):
        echo()
    n = plan.round_trips(size)
    c0 = _cpu()
    for _ in range(n):
        echo()
    ctl.put({"cpu": _cpu() - c0})
    for _ in range(plan.throughput_warmup):
        echo()
    count = plan.messages(size)
    c0 = _cpu()
    for _ in range(count):
        recv()
    t_last = time.clock_gettime_ns(_MONO)
    ctl.put({"t_last": t_last, "cpu": _cpu() - c0})


def _idle(side: str, link: Link, ctl: Ctl, seconds: float) -> dict[str, float] | None:
    """B blocks in recv while A sleeps ``seconds``; B's CPU use over that wait, as % of one core."""
    if side == "a":
        ctl.put({"idle": 1})
        time.sleep(seconds)
        link.send(_payload(64))
        got = ctl.get()
        return {"seconds": got["wall"], "cpu_percent": 100.0 * got["cpu"] / got["wall"]}
    ctl.get()
    c0, w0 = _cpu(), time.monotonic()
    link.recv()
    ctl.put({"cpu": _cpu() - c0, "wall": time.monotonic() - w0})
    return None


def _run_side(side: str, subject: Subject, plan: Plan, skips: dict[int, str], ctl: Ctl,
              out: dict[str, Any]) -> None:
    link = subject.open(side, ctl)
    try:
        gc.collect()
        gc.disable()
        sizes: dict[int, Any] = {}
        out["sizes"] = sizes
        for size in plan.sizes:
            if size in skips:
                continue
            if side == "a":
                sizes[size] = _side_a(link, ctl, plan, size)
            else:
                _side_b(link, ctl, plan, size)
        if plan.idle > 0 and subject.idle_ok:
            out["idle"] = _idle(side, link, ctl, plan.idle)
    finally:
        gc.enable()
        link.close()


# -- the runner ---------------------------------------------------------------------------------------

def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort: the runner still kills its children itself
        pass


def _child(side: str, subject: Subject, plan: Plan, skips: dict[int, str], ctl_sock: socket.socket,
           out_fd: int, cpu: int | None, ppid: int) -> None:
    """Runs in the forked child; never returns."""
    out: dict[str, Any] = {}
    try:
        _die_with_parent()
        if os.getppid() != ppid:
            os._exit(1)
        if not os.environ.get("IPCRAFT_BENCH_DEBUG"):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.close(devnull)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the child at once; the runner cleans
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        _run_side(side, subject, plan, skips, Ctl(ctl_sock), out)
    except Unavailable as exc:
        out["unavailable"] = str(exc)
    except NotImplementedError as exc:
        out["unavailable"] = str(exc) or "not implemented"
    except PeerGone as exc:
        out["peer_gone"] = str(exc)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the runner
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc()
    try:
        data = memoryview(pickle.dumps(out))
        while data:
            data = data[os.write(out_fd, data):]
    finally:
        os._exit(0)


def run_trial(subject: Subject, plan: Plan, env: Env, skips: dict[int, str],
              tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run ``subject`` once over every size in a fresh pinned process pair; return A's results.

    Always reaps both children (killing them on timeout, error or KeyboardInterrupt) and always calls
    ``subject.cleanup()``.
    """
    pids: dict[str, int] = {}
    fds: dict[str, int] = {}
    grace = 0.0  # seconds the children get to exit by themselves: none unless they finished
    socks = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        subject.prepare(env)
        for side, cpu, mine, other in (("a", plan.cpus[0], socks[0], socks[1]),
                                       ("b", plan.cpus[1], socks[1], socks[0])):
            r, w = os.pipe()
            ppid = os.getpid()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                other.close()
                for fd in fds.values():
                    os.close(fd)
                _child(side, subject, plan, skips, mine, w, cpu, ppid)
            os.close(w)
            pids[side], fds[side] = pid, r
        for s in socks:
            s.close()
        outs = _collect(fds, plan.timeout(), tick)
        if "timeout" not in outs:
            grace = 2.0
    finally:
        for s in socks:
            s.close()
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        _reap(pids, grace)
        subject.cleanup()
    return _combine(outs)


def _collect(fds: dict[str, int], timeout: float, tick: Callable[[], None] | None) -> dict[str, Any]:
    """Read both children's pickled results.

    Once one child has reported, the other gets a short grace (1 s if the first one failed: it may be
    blocked on a mechanism that never tells it its peer is gone); past that, or past ``timeout``, the
    missing result is an error and the caller kills the pair.
    """
    chunks: dict[str, list[bytes]] = {side: [] for side in fds}
    outs: dict[str, Any] = {}
    open_fds = {fd: side for side, fd in fds.items()}
    deadline = time.monotonic() + timeout
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            if not outs:
                return {"timeout": f"the process pair overran its {timeout:.0f} s budget and was killed"}
            for side in open_fds.values():
                outs[side] = {"error": "did not finish after the other process ended; killed"}
            break
        ready, _, _ = select.select(list(open_fds), [], [], min(left, 0.1))
        if tick is not None:
            tick()
        for fd in ready:
            data = os.read(fd, 1 << 20)
            if data:
                chunks[open_fds[fd]].append(data)
                continue
            side = open_fds.pop(fd)
            parts = chunks[side]
            outs[side] = pickle.loads(b"".join(parts)) if parts else {"error": "the process died (killed?)"}
            failed = any(k in outs[side] for k in ("error", "unavailable", "peer_gone"))
            deadline = min(deadline, time.monotonic() + (1.0 if failed else 10.0))
    return outs


def _reap(pids: dict[str, int], grace: float) -> None:
    """Reap every child: those still running after ``grace`` seconds are killed."""
    deadline = time.monotonic() + grace
    for pid in pids.values():
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.005)


def _combine(outs: dict[str, Any]) -> dict[str, Any]:
    """One trial's outcome from both sides' reports: A's figures, or the reason it has none."""
    if "timeout" in outs:
        return {"status": "error", "reason": outs["timeout"], "sizes": {}}
    a, b = outs.get("a", {}), outs.get("b", {})
    for side in (a, b):
        if "unavailable" in side:
            return {"status": "unavailable", "reason": side["unavailable"], "sizes": {}}
    errors = [s for s in (b, a) if "error" in s]
    if errors:
        return {"status": "error", "reason": errors[0]["error"], "traceback": errors[0].get("traceback"),
                "sizes": a.get("sizes", {})}
    if "peer_gone" in a or "peer_gone" in b:
        return {"status": "error", "reason": "a process of the pair ended early", "sizes": a.get("sizes", {})}
    return {"status": "ok", "reason": "", "sizes": a.get("sizes", {}), "idle": a.get("idle")}
