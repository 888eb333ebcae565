"""The steps of ``ipcraft tour``: each mechanism live between real processes, with what the kernel did.

Each step forks the processes it needs, lets them use one kernel facility through ipcraft's
primitives (or the bare file descriptors they hold), and collects what each process saw, stamped
with CLOCK_MONOTONIC (one clock for every process on the machine), so that the narration can say
"the writer was asleep for 301 ms" from measurements rather than from expectations.  The returned
:class:`Step` also carries the facts a test checks (``facts``): the tour's every step is a test.

No click or rich here (the command renders a Step); every child dies with its parent
(PR_SET_PDEATHSIG), is killed at a deadline and reaped, and every named object is removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import select
import signal
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import Timeout

#: How long the tour keeps a process waiting so that the waiting shows (seconds).
HOLD = 0.3
#: The longest one child may run before it is killed.
_CHILD_DEADLINE = 20.0


@dataclass
class Event:
    """One thing a process did or saw, ``t`` seconds after the step started."""

    t: float
    who: str
    text: str


@dataclass
class Step:
    """One mechanism's demonstration: what the kernel does, what happened, what was measured."""

    name: str
    title: str
    kernel: str
    events: list[Event] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


class _Recorder:
    """Events of one step, from this process and its children (JSON lines over a pipe)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self._r, self._w = os.pipe()
        self._events: list[Event] = []
        self._facts: dict[str, Any] = {}
        self._pids: set[int] = set()

    def say(self, who: str, text: str, **facts: Any) -> float:
        """Record an event (and facts) now; return its time since the step began."""
        t = time.monotonic() - self.t0
        line = json.dumps({"t": t, "who": who, "text": text, "facts": facts}).encode() + b"\n"
        if os.getpid() == self._parent:
            self._take(line)
        else:
            os.write(self._w, line)  # one write below PIPE_BUF: never interleaved with another child's
        return t

    def _take(self, line: bytes) -> None:
        d = json.loads(line)
        self._events.append(Event(d["t"], d["who"], d["text"]))
        self._facts.update(d["facts"])

    def start(self) -> _Recorder:
        self._parent = os.getpid()
        _LIVE.append(self)
        return self

    def close(self) -> None:
        """Kill and reap the children not reaped yet, and close the pipe (idempotent)."""
        for pid in self._pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self._pids.clear()
        if self._r >= 0:
            os.close(self._r)
            os.close(self._w)
            self._r = self._w = -1
        if self in _LIVE:
            _LIVE.remove(self)

    def fork(self, who: str, body: Callable[[], None]) -> int:
        """Run ``body`` in a child process; an exception there becomes an event and exit status 1."""
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the tour
                body()
                status = 0
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit 1
                self.say(who, f"failed: {type(exc).__name__}: {exc}", error=f"{who}: {exc}")
            finally:
                os._exit(status)
        self._pids.add(pid)
        return pid

    def fork_holder(self, who: str, take: Callable[[], Any]) -> int:
        """Fork a child that runs ``take`` (it takes a lock), then hangs until killed; return its pid
        once ``take`` has returned.  What ``take`` returns stays referenced while the child hangs."""
        ready_r, ready_w = os.pipe()

        def body() -> None:
            held = take()
            os.write(ready_w, b"!")
            time.sleep(_CHILD_DEADLINE)
            del held

        try:
            pid = self.fork(who, body)
            if not select.select([ready_r], [], [], 10)[0]:
                os.kill(pid, signal.SIGKILL)
                self.reap(pid)
                raise TimeoutError(f"the {who} did not take its lock within 10 s")
        finally:
            os.close(ready_r)
            os.close(ready_w)
        return pid

    def reap(self, pid: int, timeout: float = _CHILD_DEADLINE) -> int:
        """Wait for child ``pid`` (killed at ``timeout``); collect its events; return its wait status."""
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self._pids.discard(pid)
                self.collect()
                return status
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                self._pids.discard(pid)
                self.collect()
                raise TimeoutError(f"a tour process did not finish within {timeout:g} s")
            self.collect(0.01)

    def collect(self, wait: float = 0.0) -> None:
        buf = b""
        while select.select([self._r], [], [], wait)[0]:
            buf += os.read(self._r, 65536)
            wait = 0.0
        for line in buf.splitlines():
            self._take(line)

    def finish(self, step: Step) -> Step:
        self.collect()
        self.close()
        step.events = sorted(self._events, key=lambda e: e.t)
        step.facts.update(self._facts)
        if "error" in step.facts:
            raise RuntimeError(f"tour step {step.name}: {step.facts['error']}")
        return step


#: Recorders started and not finished: run() closes them (kills their children) when a step fails.
_LIVE: list[_Recorder] = []


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} µs"


# -- the steps ----------------------------------------------------------------------------------------

def pipe() -> Step:
    """A writer fills the pipe, blocks on the next byte, and wakes when the reader drains it."""
    from .primitives import Pipe

    step = Step("pipe", "Pipe: a full pipe puts its writer to sleep",
                "A pipe is a kernel buffer with a read end and a write end, one way only, shared by "
                "processes that inherit it from a common ancestor.  write() copies into the buffer; "
                "when the buffer is full the kernel puts the writer to sleep until a reader makes room.")
    rec = _Recorder().start()
    with Pipe() as p:
        capacity = p.capacity
        rec.say("reader", f"made a pipe; its capacity is {capacity} bytes (fcntl F_GETPIPE_SZ)", capacity=capacity)

        def writer() -> None:
            os.close(p.read_fd)
            t = time.monotonic()
            written = os.write(p.write_fd, b"w" * capacity)
            rec.say("writer", f"wrote {written} bytes in {_ms(time.monotonic() - t)}: the pipe is full",
                    filled=written)
            t = time.monotonic()
            rec.say("writer", "writes 1 more byte...")
            os.write(p.write_fd, b"!")
            slept = time.monotonic() - t
            rec.say("writer", f"...the write returned after {_ms(slept)} asleep, once the reader made room",
                    writer_slept=slept)

        pid = rec.fork("writer", writer)
        p.close_write()
        time.sleep(HOLD)
        rec.collect()
        rec.say("reader", f"waited {_ms(HOLD)}, now reads")
        got = 0
        while chunk := os.read(p.read_fd, 65536):
            got += len(chunk)
        rec.say("reader", f"read {got} bytes, then end of file: the writer exited and the last write end "
                "closed", received=got)
        rec.reap(pid)
    return rec.finish(step)


def fifo() -> Step:
    """A non-blocking write-open of a FIFO fails with ENXIO; a blocking one sleeps until a reader comes."""
    from .primitives import Fifo

    step = Step("fifo", "FIFO: opening waits for the other side",
                "A FIFO is a pipe with a name in the file system, so unrelated processes can find it.  "
                "Opening it for writing waits until a process opens it for reading (and the other way "
                "round); with O_NONBLOCK a write-open fails at once with ENXIO while nobody reads.")
    rec = _Recorder().start()
    with tempfile.TemporaryDirectory(prefix="ipcraft-tour-") as d:
        path = os.path.join(d, "fifo")
        with Fifo.create(path):
            rec.say("writer", f"made the FIFO {path} (mkfifo)")
            with Fifo.open(path) as probe:
                try:
                    probe.open_write(nonblocking=True)
                    rec.say("writer", "a non-blocking write-open succeeded (unexpected)", nonblocking_errno=0)
                except OSError as exc:
                    rec.say("writer", f"a non-blocking write-open failed at once: "
                            f"{errno.errorcode.get(exc.errno or 0)} (no reader yet)", nonblocking_errno=exc.errno)

            def writer() -> None:
                t = time.monotonic()
                rec.say("writer", "opens it for writing, blocking...")
                w = Fifo.open(path).open_write()
                slept = time.monotonic() - t
                rec.say("writer", f"...the open returned after {_ms(slept)}: a reader has it open", open_slept=slept)
                with w:
                    os.write(w.fileno(), b"hello through a name")

            pid = rec.fork("writer", writer)
            time.sleep(HOLD)
            rec.collect()
            rec.say("reader", "opens it for reading")
            with Fifo.open(path).open_read() as r:
                data = b""
                while chunk := os.read(r.fileno(), 4096):
                    data += chunk
            rec.say("reader", f"read {data!r}, then end of file", fifo_data=data.decode())
            rec.reap(pid)
    return rec.finish(step)


def sysvmq() -> Step:
    """System V messages fetched out of order: by type, and by the lowest type up to a bound."""
    import sysv_ipc

    from .primitives import SysVMessageQueue

    step = Step("sysvmq", "System V message queue: fetch by type",
                "A System V message queue keeps whole messages, each with a positive type.  msgrcv() "
                "with type 0 takes the oldest; with type n the oldest of type n; with -n the oldest of "
                "the lowest type up to n.  Receiving removes the message.")
    rec = _Recorder().start()
    with SysVMessageQueue.create(sysv_ipc.IPC_PRIVATE) as q:
        rec.say("receiver", f"made a queue (msgget IPC_PRIVATE, id {q.id})")

        def sender() -> None:
            for data, kind in ((b"report", 3), (b"urgent", 1), (b"normal", 2)):
                q.send(data, type=kind)
                rec.say("sender", f"sent {data.decode()!r} with type {kind}")

        pid = rec.fork("sender", sender)
        rec.reap(pid)
        order = []
        for ask, meaning in ((2, "type 2"), (-3, "the lowest type <= 3"), (0, "the oldest")):
            t = time.monotonic()
            data, kind = q.recv(type=ask, timeout=5)
            order.append([data.decode(), kind])
            rec.say("receiver", f"msgrcv(type={ask}) -> {data.decode()!r} (type {kind}), {meaning}, in "
                    f"{_ms(time.monotonic() - t)}")
        rec.say("receiver", f"{q.current_messages} messages left: receiving removed them", order=order)
    return rec.finish(step)


def semaphore() -> Step:
    """A process waits on a zero semaphore, asleep in the kernel, until another posts it."""
    from .primitives import SysVSemaphoreSet

    step = Step("semaphore", "Semaphore: sleeping until a post",
                "A semaphore is a counter in the kernel.  Waiting on it decrements it, or, at zero, "
                "puts the process to sleep (it uses no CPU) until another process increments it.")
    rec = _Recorder().start()
    with SysVSemaphoreSet.create(None, 1, initial=0) as sem:
        rec.say("poster", "made a semaphore with value 0 (semget IPC_PRIVATE)")

        def waiter() -> None:
            t = time.monotonic()
            rec.say("waiter", "waits on it (semop -1)...")
            sem.acquire(timeout=_CHILD_DEADLINE)
            now = time.monotonic()
            rec.say("waiter", f"...woke after {_ms(now - t)}", waiter_slept=now - t, woke_at=now)

        pid = rec.fork("waiter", waiter)
        time.sleep(HOLD)
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        sleeping = sem.waiters(0)[0]
        rec.say("poster", f"the kernel counts {sleeping} process asleep on it (semncnt); the waiter's state is "
                f"{state!r} ({'sleeping' if state == 'S' else 'running'})", sleepers=sleeping, waiter_state=state)
        posted = time.monotonic()
        sem.release()
        rec.say("poster", "posts it (semop +1)", posted_at=posted)
        rec.reap(pid)
    out = rec.finish(step)
    wake = out.facts["woke_at"] - out.facts["posted_at"]
    out.facts["wake_latency"] = wake
    out.events.append(Event(out.events[-1].t, "kernel", f"from the post to the waiter running: {_ms(wake)}"))
    return out


def shm(readers: int = 3, size: int = 8 << 20) -> Step:
    """Several processes read one shared memory object at once; reading consumes nothing."""
    from .primitives import PosixSharedMemory

    step = Step("shm", "Shared memory: many readers, no copies",
                "Shared memory maps the same physical pages into several processes: what one writes, "
                "the others see at once, with no system call and no copy.  Nothing is removed by "
                "reading, so any number of processes can read it; they must agree by other means "
                "(a semaphore, a mutex, a counter) on when the data is ready.")
    rec = _Recorder().start()
    name = f"/ipcraft-tour-{os.getpid()}-{os.urandom(3).hex()}"
    with PosixSharedMemory.create(name, size) as mem:
        pattern = bytes(range(256)) * (size // 256)
        mem.buf[:size] = pattern
        expected = zlib.crc32(pattern)
        rec.say("writer", f"made {name} ({size >> 20} MiB, shm_open + mmap) and wrote it", shm_name=name,
                expected_crc=expected)

        def reader(i: int) -> Callable[[], None]:
            def body() -> None:
                with PosixSharedMemory.open(name, readonly=True) as m:
                    t = time.monotonic()
                    crc = zlib.crc32(m.buf[:size])
                    done = time.monotonic()
                    rec.say(f"reader {i}", f"read all {size >> 20} MiB in place in {_ms(done - t)}: crc32 {crc:#010x}",
                            **{f"crc_{i}": crc, f"span_{i}": [t - rec.t0, done - rec.t0]})
            return body

        pids = [rec.fork(f"reader {i}", reader(i)) for i in range(readers)]
        for pid in pids:
            rec.reap(pid)
        intact = zlib.crc32(mem.buf[:size]) == expected
        rec.say("writer", f"after {readers} readers the data is {'intact' if intact else 'CHANGED'}: reading "
                "consumed nothing", intact=intact)
    out = rec.finish(step)
    spans = [out.facts[f"span_{i}"] for i in range(readers)]
    overlap = max(0.0, min(s[1] for s in spans) - max(s[0] for s in spans))
    out.facts["all_at_once"] = overlap
    out.events.append(Event(out.events[-1].t, "kernel",
                            f"all {readers} readers were reading at the same time for {_ms(overlap)}" if overlap
                            else f"the {readers} readers ran one after another this time (few CPUs): each still "
                            "read the same pages"))
    return out


def lock() -> Step:
    """A process holds a record lock and is killed; the kernel releases the lock for the next one."""
    from .primitives import RecordLock

    step = Step("lock", "File lock: the kernel frees a dead holder's lock",
                "A record lock (fcntl F_SETLK) belongs to a process.  Another process that asks for it "
                "is refused or waits; when the holder exits, even killed with SIGKILL, the kernel "
                "releases its locks: a crashed process never leaves a lock held.")
    rec = _Recorder().start()
    with tempfile.TemporaryDirectory(prefix="ipcraft-tour-") as d:
        path = os.path.join(d, "lockfile")
        # contextlib.closing: ``with`` on a lock handle would take the lock.
        with contextlib.closing(RecordLock.open_or_create(path)) as lk:
            def holder() -> RecordLock:
                mine = RecordLock.open(path)  # kept open: closing any fd of the file drops a classic lock
                mine.acquire(timeout=5)
                rec.say("holder", "holds the lock (fcntl F_SETLK, whole file) and hangs")
                return mine

            pid = rec.fork_holder("holder", holder)
            who = lk.holder()
            holder_pid = who.pid if who else None
            rec.say("other", f"F_GETLK says process {holder_pid} holds it", holder_pid=holder_pid, holder_child=pid)
            try:
                lk.acquire(timeout=0)
                refused = False
            except Timeout:
                refused = True
            rec.say("other", f"asking without waiting: {'refused (EAGAIN)' if refused else 'granted (unexpected)'}",
                    refused=refused)
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            rec.say("other", "kills the holder with SIGKILL and asks again, waiting")
            lk.acquire()  # F_SETLKW: the kernel wakes this process when the lock is free
            got = time.monotonic() - killed
            rec.say("other", f"got the lock {_ms(got)} after the kill: the kernel released it", freed_after=got)
            lk.release()
            rec.reap(pid)
    return rec.finish(step)


def signals() -> Step:
    """A real-time signal carries an integer payload from one process to another (sigqueue)."""
    from .primitives import SignalFD, sigqueue

    step = Step("signal", "Signal: a real-time signal with a payload",
                "A signal interrupts a process, or waits for it while blocked.  sigqueue() sends a "
                "real-time signal with an integer payload; the kernel queues each one (they are not "
                "merged) and tells the receiver who sent it.  signalfd() reads them as data.")
    rec = _Recorder().start()
    sig = signal.SIGRTMIN
    payload = 424242
    with SignalFD([sig]) as sfd:
        rec.say("receiver", f"blocks SIGRTMIN ({int(sig)}) and reads it through a signalfd")
        parent = os.getpid()

        def sender() -> None:
            now = time.monotonic()
            sigqueue(parent, sig, payload)
            rec.say("sender", f"sigqueue(receiver, SIGRTMIN, {payload})", sent_at=now)

        pid = rec.fork("sender", sender)
        info = sfd.recv(timeout=10)
        got = time.monotonic()
        rec.reap(pid)
        rec.say("receiver", f"received signal {info.signo} from pid {info.pid} (uid {info.uid}) with payload "
                f"{info.value}, si_code {info.code} (SI_QUEUE)", signo=info.signo, sender_pid=info.pid,
                sender_child=pid, value=info.value, code=info.code, received_at=got)
    out = rec.finish(step)
    out.facts["latency"] = out.facts["received_at"] - out.facts["sent_at"]
    out.events.append(Event(out.events[-1].t, "kernel",
                            f"from sigqueue() to the receiver reading it: {_ms(out.facts['latency'])}"))
    return out


def mq() -> Step:
    """POSIX messages come out by priority, highest first, whatever the order they were sent in."""
    from .primitives import PosixMessageQueue

    step = Step("mq", "POSIX message queue: the highest priority first",
                "A POSIX message queue has a name (it shows in /dev/mqueue) and keeps whole messages, "
                "each with a priority: mq_receive() always takes the oldest message of the highest "
                "priority.  The queue holds a fixed number of messages; a sender blocks when it is full.")
    rec = _Recorder().start()
    name = f"/ipcraft-tour-{os.getpid()}-{os.urandom(3).hex()}"
    with PosixMessageQueue.create(name) as q:
        rec.say("receiver", f"made the queue {name} (mq_open O_CREAT|O_EXCL)", mq_name=name)

        def sender() -> None:
            with PosixMessageQueue.open(name) as mine:
                for data, prio in ((b"low", 1), (b"high", 9), (b"middle", 5)):
                    mine.send(data, priority=prio)
                    rec.say("sender", f"sent {data.decode()!r} with priority {prio}")

        rec.reap(rec.fork("sender", sender))
        order = []
        for _ in range(3):
            data, prio = q.recv(timeout=5)
            order.append([data.decode(), prio])
            rec.say("receiver", f"mq_receive -> {data.decode()!r} (priority {prio})")
        rec.say("receiver", "highest priority first, whatever the order of sending", order=order)
    return rec.finish(step)


def unix() -> Step:
    """A stream socket merges writes, a seqpacket socket keeps them; SO_PEERCRED names the peer."""
    import socket

    step = Step("unix", "Unix sockets: bytes or messages, and who is on the other end",
                "A Unix socket connects two processes both ways.  SOCK_STREAM carries bytes: two "
                "writes may arrive as one read, so a program must frame its messages.  SOCK_SEQPACKET "
                "keeps each write a message.  The kernel tells each side the other's pid, uid and gid "
                "(SO_PEERCRED), which no peer can forge.")
    rec = _Recorder().start()
    reads: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="ipcraft-tour-") as d:
        for kind, name in ((socket.SOCK_STREAM, "stream"), (socket.SOCK_SEQPACKET, "seqpacket")):
            path = os.path.join(d, f"{name}.sock")
            with socket.socket(socket.AF_UNIX, kind) as listener:
                listener.bind(path)
                listener.listen(1)

                def writer(label: str = name, kind: int = kind, path: str = path) -> None:
                    with socket.socket(socket.AF_UNIX, kind) as sock:
                        sock.connect(path)
                        for part in (b"first", b"second"):
                            sock.sendall(part)
                    rec.say("writer", f"{label}: connected, wrote 'first' and 'second' (two writes), closed")

                pid = rec.fork("writer", writer)
                listener.settimeout(10)
                conn, _ = listener.accept()
            with conn:
                rec.reap(pid)  # both writes are in the socket before the first read
                got = []
                while data := conn.recv(4096):
                    got.append(data.decode())
                reads[name] = got
                rec.say("reader", f"{name}: {len(got)} read(s): {got}")
                if name == "stream":
                    cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                    peer_pid, uid, gid = struct.unpack("3i", cred)
                    rec.say("reader", f"SO_PEERCRED: the peer is pid {peer_pid} (uid {uid}, gid {gid}), the writer",
                            peer_pid=peer_pid, writer_pid=pid)
    rec.say("reader", "stream: bytes, boundaries lost; seqpacket: one read per write", reads=reads)
    return rec.finish(step)


def eventfd() -> Step:
    """An eventfd counter: several posts wake one read that takes them all, or one each in semaphore mode."""
    from .primitives import EventFD

    step = Step("eventfd", "eventfd: a counter that wakes",
                "An eventfd is a 64-bit counter in the kernel behind a file descriptor.  write() adds to "
                "it and wakes readers; read() waits while it is 0, then returns it and resets it to 0, so "
                "many posts coalesce into one wake-up.  In semaphore mode each read takes just 1.")
    rec = _Recorder().start()
    taken: dict[str, list[int]] = {}
    for semaphore_mode in (False, True):
        label = "semaphore mode" if semaphore_mode else "counter mode"
        with EventFD(semaphore=semaphore_mode) as efd:
            def poster(e: EventFD = efd, what: str = label) -> None:
                for _ in range(3):
                    e.send(1)
                rec.say("poster", f"{what}: posted 1, three times")

            rec.reap(rec.fork("poster", poster))
            got = []
            while select.select([efd.fileno()], [], [], 0)[0]:  # readable while the counter is above 0
                got.append(efd.recv(timeout=0))
            taken[label] = got
            rec.say("reader", f"{label}: the reads returned {got}")
    rec.say("reader", "counter mode: one wake-up for three posts; semaphore mode: one per post", taken=taken)
    return rec.finish(step)


def mutex() -> Step:
    """A process dies holding a robust mutex in shared memory; the next locker is told, not deadlocked."""
    import mmap

    from .errors import OwnerDied
    from .primitives import SharedMutex

    step = Step("mutex", "Process-shared mutex: a dead owner is reported, never a deadlock",
                "A pthread mutex placed in shared memory can be locked by any process that maps it.  "
                "A robust one is tracked by the kernel: if its owner dies holding it, the kernel "
                "unlocks it and the next locker gets EOWNERDEAD (ipcraft's OwnerDied), holding the "
                "lock, so that it can repair the data the dead owner was changing.")
    rec = _Recorder().start()
    with mmap.mmap(-1, 4096) as buf:  # MAP_SHARED|MAP_ANONYMOUS: shared with the children we fork
        mtx = SharedMutex.create(buf)
        try:
            def owner() -> None:
                mtx.acquire(timeout=5)
                rec.say("owner", "locked the mutex and hangs")

            pid = rec.fork_holder("owner", owner)
            try:
                mtx.acquire(timeout=HOLD)
                waited = False
            except Timeout:
                waited = True
            rec.say("other", f"tried for {_ms(HOLD)}: {'still held' if waited else 'got it (unexpected)'}",
                    held_by_owner=waited)
            os.kill(pid, signal.SIGKILL)
            rec.say("other", "killed the owner with SIGKILL; locks again")
            rec.reap(pid)
            try:
                mtx.acquire(timeout=5)
                died = False
            except OwnerDied:
                died = True
            rec.say("other", f"{'OwnerDied: the lock is mine, the data may be half-updated' if died else 'no report'}",
                    owner_died=died)
            mtx.make_consistent()
            mtx.release()
            rec.say("other", "repaired, marked consistent, released: the mutex works on")
        finally:
            mtx.close()
    return rec.finish(step)


#: The tour in teaching order: name -> step.
STEPS: dict[str, Callable[[], Step]] = {
    "pipe": pipe, "fifo": fifo, "sysvmq": sysvmq, "mq": mq, "semaphore": semaphore, "shm": shm,
    "unix": unix, "signal": signals, "lock": lock, "eventfd": eventfd, "mutex": mutex,
}


def run(name: str) -> Step:
    """Run the step ``name`` (a key of STEPS) and return what happened.

    However the step ends, its children are killed and reaped (a failed step leaves none behind).

    Raises:
        KeyError: no such step.
        RuntimeError, TimeoutError, IPCError: the step could not run on this machine.
    """
    try:
        return STEPS[name]()
    finally:
        while _LIVE:
            _LIVE[-1].close()


__all__ = ("HOLD", "STEPS", "Event", "Step", "run")
