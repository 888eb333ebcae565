"""The conformance suite behind :func:`ipcraft.testing.check_channel`: one contract, every scheme.

``make_pair() -> (sender, receiver)`` makes a fresh pair of connected handles for each check; the suite
closes both afterwards.  Capabilities (keyword arguments, see :class:`Capabilities`) say what differs
between schemes; everything else must behave identically over a pipe, a socket, a message queue or
a shared-memory ring.

Decisions:

* **Each check gets its own pair**, so a failure in one never hides behind the state another left.
* **Two processes where it matters**: order, sizes, boundaries, end of stream, iteration, waiting
  (poll, select) and the peer's death run with one end in a forked child (ipcraft.testing.Child),
  because buffering, wake-ups and close semantics differ between threads and processes.  After the
  fork each process closes the copy of the end it does not use, as with a file descriptor (this is
  part of the contract: closing an inherited copy must not end the other process's use).  Queue
  handles are not closed in the process that does not use them: closing the owner would unlink the
  queue under the other process.
* **Small in-process bursts only**: without a concurrent reader the suite sends at most four small
  messages (under 2 KiB together), which every mechanism buffers (a System V queue holds 16 KiB, a
  POSIX queue 10 messages by default).  Anything larger has a reader in another process.
* **Lossy mechanisms** (``lossy=True``, udp://) drop datagrams when the receiver falls behind, so there
  the sending process waits for an acknowledgement on a side pipe after each message.
* **Limits are read, not guessed**: the largest size tried is the smaller of ``max_size`` and the
  channel's own limit (its max_message_size, or the transport's ``max_payload`` less the header).
"""

from __future__ import annotations

import os
import random
import select
import signal
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ._framing import HEADER_SIZE, SCRATCH_SIZE
from .errors import (
    BufferTooSmall,
    Busy,
    ChannelClosed,
    HandleClosed,
    MessageTooLarge,
    PeerVanished,
    Timeout,
)
from .testing import Child

MiB = 1024 * 1024
_WAIT = 10.0  # seconds any single expected event may take on a loaded machine
Pair = Callable[[], "tuple[Any, Any]"]


@dataclass(frozen=True)
class Capabilities:
    """What a scheme can do; check_channel's keyword arguments.

    Attributes:
        eof: closing the sender ends the stream: the receiver gets ChannelClosed after the last
            message (connection schemes and pipes).  Queues have no end of stream (False).
        duplex: the receiver can send back to the sender.
        max_size: the largest message tried (further capped by the channel's own limit).
        selectable: fileno() gives an fd that select() reports readable when a message arrives.
        lossy: the mechanism drops messages when the receiver falls behind (udp://).
    """

    eof: bool = True
    duplex: bool = False
    max_size: int = 16 * MiB
    selectable: bool = True
    lossy: bool = False


_Check = Callable[[Pair, Capabilities], None]
CHECKS: dict[str, tuple[_Check, Callable[[Capabilities], bool]]] = {}


def _check(applies: Callable[[Capabilities], bool] = lambda caps: True) -> Callable[[_Check], _Check]:
    def register(fn: _Check) -> _Check:
        CHECKS[fn.__name__.lstrip("_")] = (fn, applies)
        return fn
    return register


def run_conformance(make_pair: Pair, *, checks: Any = None, **capabilities: Any) -> None:
    """Run every check (or the names in ``checks``) that applies to ``capabilities``.

    Raises AssertionError naming the failed check; the original exception is its cause.
    """
    caps = Capabilities(**capabilities)
    for name in checks if checks is not None else list(CHECKS):
        fn, applies = CHECKS[name]
        if not applies(caps):
            continue
        try:
            fn(make_pair, caps)
        except Exception as exc:
            raise AssertionError(f"conformance check {name!r} failed: {type(exc).__name__}: {exc}") from exc


# -- helpers ---------------------------------------------------------------------------------------

_BASE = b""


def _payload(n: int, seed: int = 0) -> memoryview:
    """``n`` deterministic pseudo-random bytes; different seeds give different contents."""
    global _BASE
    if len(_BASE) < 16 * MiB + 4096:
        _BASE = random.Random(20240611).randbytes(16 * MiB + 4096)
    start = (seed * 613) % 4096
    if n > len(_BASE) - start:
        raise ValueError(f"the suite's payloads are at most {len(_BASE) - 4096} bytes")
    return memoryview(_BASE)[start:start + n]


@contextmanager
def _pair(make_pair: Pair) -> Iterator[tuple[Any, Any]]:
    a, b = make_pair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _limit(sender: Any, receiver: Any, caps: Capabilities) -> tuple[int, int]:
    """(largest size the suite tries, the channel's own limit) for sender -> receiver."""
    own = min(getattr(sender, "_send_limit", 2**62), receiver.max_message_size)
    return min(own, caps.max_size), own


def _sizes(top: int) -> list[int]:
    ladder = {0, 1, 2, 7, 8, 9, 100, 4095, 4096, 4097, SCRATCH_SIZE - HEADER_SIZE,
              SCRATCH_SIZE - HEADER_SIZE + 1, SCRATCH_SIZE, SCRATCH_SIZE + 1, MiB - 1, MiB, 4 * MiB,
              16 * MiB, top}
    return sorted(n for n in ladder if n <= top)


class _Lockstep:
    """Acknowledgements on a side pipe, so a lossy mechanism never has two messages in flight."""

    def __init__(self, lossy: bool) -> None:
        self.lossy = lossy
        self._r, self._w = os.pipe() if lossy else (-1, -1)

    def sent(self) -> None:
        if self.lossy:
            if not select.select([self._r], [], [], _WAIT)[0]:
                raise AssertionError("the receiver did not acknowledge a message")
            os.read(self._r, 1)

    def received(self) -> None:
        if self.lossy:
            os.write(self._w, b"k")

    def close(self) -> None:
        for fd in (self._r, self._w):
            if fd >= 0:
                os.close(fd)


def _fork(func: Callable[[Any], Any], child_end: Any, parent_end: Any, caps: Capabilities) -> Child:
    """Run ``func(child_end)`` in a forked child; each process closes its copy of the other's end."""
    def body() -> Any:
        if caps.eof:
            parent_end.close()
        return func(child_end)

    child = Child(body)
    if caps.eof:
        child_end.close()
    return child


def _expect(exc_type: type[BaseException], fn: Callable[[], Any], what: str) -> BaseException:
    try:
        fn()
    except exc_type as exc:
        return exc
    except Exception as exc:
        raise AssertionError(f"{what}: expected {exc_type.__name__}, got {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"{what}: expected {exc_type.__name__}, nothing was raised")


def _msgpack_form(obj: Any) -> Any:
    """What ``obj`` becomes after a msgpack round trip: tuples arrive as lists."""
    if isinstance(obj, (list, tuple)):
        return [_msgpack_form(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _msgpack_form(v) for k, v in obj.items()}
    return obj


# -- checks ----------------------------------------------------------------------------------------

@_check()
def _order(make_pair: Pair, caps: Capabilities) -> None:
    """1000 messages from another process arrive in the order sent, objects and bytes interleaved."""
    with _pair(make_pair) as (s, r):
        flow = _Lockstep(caps.lossy)

        def send(s: Any) -> int:
            for i in range(1000):
                if i % 2:
                    s.send(i)
                else:
                    s.send_bytes(b"%d" % i)
                flow.sent()
            return 1000

        child = _fork(send, s, r, caps)
        got = []
        for i in range(1000):
            got.append(r.recv(timeout=_WAIT))
            flow.received()
        child.result(_WAIT * 3)
        flow.close()
        assert got == [i if i % 2 else b"%d" % i for i in range(1000)], "messages were reordered or altered"


@_check()
def _recv_in_child(make_pair: Pair, caps: Capabilities) -> None:
    """Messages sent by this process are received intact by another (the reverse of 'order')."""
    with _pair(make_pair) as (s, r):
        flow = _Lockstep(caps.lossy)
        objs = [None, True, -1, 2**40, 1.5, "é", b"\x00", [1, [2]], {"k": {"n": None}}] * 20

        def recv(r: Any) -> list[Any]:
            out = []
            for _ in objs:
                out.append(r.recv(timeout=_WAIT))
                flow.received()
            return out

        child = _fork(recv, r, s, caps)
        for obj in objs:
            s.send(obj)
            flow.sent()
        got = child.result(_WAIT * 3)
        flow.close()
        assert got == objs, "the child received different objects"


@_check()
def _sizes_and_limit(make_pair: Pair, caps: Capabilities) -> None:
    """Every size from 0 B to the limit arrives whole; one byte over the limit is refused before sending."""
    with _pair(make_pair) as (s, r):
        top, own = _limit(s, r, caps)
        if own <= caps.max_size:
            exc = _expect(MessageTooLarge, lambda: s.send_bytes(bytes(own + 1)),
                          f"sending {own + 1} bytes over a {own}-byte limit")
            assert str(own) in str(exc), f"the MessageTooLarge text does not name the limit {own}: {exc}"
            s.send_bytes(b"still usable")
            assert r.recv_bytes(timeout=_WAIT) == b"still usable", "the channel broke after MessageTooLarge"
        sizes = _sizes(top)
        flow = _Lockstep(caps.lossy)

        def send(s: Any) -> None:
            for i, n in enumerate(sizes):
                s.send_bytes(_payload(n, i))
                flow.sent()

        child = _fork(send, s, r, caps)
        for i, n in enumerate(sizes):
            how = i % 3
            if how == 0:
                data: Any = r.recv_bytes(timeout=_WAIT)
            elif how == 1:
                buf = bytearray(n + 3)
                got = r.recv_bytes_into(buf, 3, timeout=_WAIT)
                assert got == n, f"recv_bytes_into returned {got} for a {n}-byte message"
                data = memoryview(buf)[3:]
            else:
                data = r.recv(timeout=_WAIT)
                assert isinstance(data, bytes), f"recv() of a send_bytes message gave {type(data).__name__}"
            flow.received()
            assert len(data) == n, f"a {n}-byte message arrived as {len(data)} bytes"
            assert data == _payload(n, i), f"the {n}-byte message arrived corrupted"
        child.result(_WAIT * 3)
        flow.close()


@_check()
def _boundaries(make_pair: Pair, caps: Capabilities) -> None:
    """A burst of mixed sizes keeps every boundary: no two messages merged, none split."""
    with _pair(make_pair) as (s, r):
        top, _ = _limit(s, r, caps)
        sizes = [n for n in (0, 1, 2, 3, 0, 0, 7, 8, 9, 15, 16, 17, 100, 1000, 4095, 4096, 4097, 5,
                             SCRATCH_SIZE - HEADER_SIZE, SCRATCH_SIZE - HEADER_SIZE + 1, 3, 65537, 1,
                             200_000, 0, 2)
                 if n <= top]
        flow = _Lockstep(caps.lossy)

        def send(s: Any) -> None:
            for i, n in enumerate(sizes):
                s.send_bytes(_payload(n, i + 7))
                flow.sent()

        child = _fork(send, s, r, caps)
        if not caps.lossy:
            time.sleep(0.1)  # let the burst pile up in the kernel's buffers
        for i, n in enumerate(sizes):
            data = r.recv_bytes(timeout=_WAIT)
            flow.received()
            assert len(data) == n, f"message {i} of {n} bytes arrived as {len(data)} bytes"
            assert data == _payload(n, i + 7), f"message {i} ({n} bytes) arrived corrupted"
        child.result(_WAIT * 3)
        flow.close()


@_check()
def _objects(make_pair: Pair, caps: Capabilities) -> None:
    """The default serializer (msgpack) carries Python's plain data and numpy arrays faithfully."""
    with _pair(make_pair) as (s, r):
        if s.serializer.name != "msgpack":
            return
        objs: list[Any] = [
            None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 0.0, -0.0, 1.5, float("inf"),
            "", "text", "ünïcødé ✓", b"", b"\x00\xff" * 10, [], [1, "a", None], (1, 2), {},
            {"a": 1, "b": [1, 2, {"c": b"x"}]}, {1: "int key"}, [[[]]], {"t": (1, (2, 3))},
            bytes(range(256)),
        ]
        for obj in objs:
            s.send(obj)
            got = r.recv(timeout=_WAIT)
            assert got == _msgpack_form(obj), f"{obj!r} arrived as {got!r}"
            assert type(got) is type(_msgpack_form(obj)), f"{obj!r} arrived as a {type(got).__name__}"
        assert isinstance(r.last_meta, dict), "last_meta is not a dict"
        s.send({"x": 1})
        raw = r.recv_bytes(timeout=_WAIT)
        assert s.serializer.loads(raw) == {"x": 1}, "recv_bytes of an object is not its serialized form"
        try:
            import numpy as np
        except ImportError:
            return
        arrays = [np.arange(10, dtype=np.float64), np.arange(12, dtype=np.int32).reshape(3, 4),
                  np.zeros((2, 0, 3), dtype=np.uint8), np.array(7, dtype=np.int16),
                  np.array([True, False]), np.arange(6, dtype=">i4").reshape(2, 3),
                  np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.arange(20)[::3],
                  np.array([1 + 2j, 3 - 4j])]
        for arr in arrays:
            s.send(arr)
            got = r.recv(timeout=_WAIT)
            assert isinstance(got, np.ndarray), f"a numpy array arrived as {type(got).__name__}"
            assert got.dtype == arr.dtype and got.shape == arr.shape, \
                f"{arr.dtype}{arr.shape} arrived as {got.dtype}{got.shape}"
            assert np.array_equal(got, arr), f"the values of a {arr.dtype} array changed"
        s.send({"nested": [np.ones(3, dtype=np.float32)]})
        got = r.recv(timeout=_WAIT)
        assert np.array_equal(got["nested"][0], np.ones(3, dtype=np.float32))


@_check()
def _bytes_api(make_pair: Pair, caps: Capabilities) -> None:
    """send_bytes slices, recv_bytes maxlength, recv_bytes_into offsets and BufferTooSmall keeping .data."""
    with _pair(make_pair) as (s, r):
        s.send_bytes(b"0123456789", 2, 5)
        assert r.recv_bytes(timeout=_WAIT) == b"23456", "send_bytes(data, offset, size) sent the wrong slice"
        s.send_bytes(b"0123", 4)
        assert r.recv_bytes(timeout=_WAIT) == b"", "send_bytes(data, len(data)) should send an empty message"
        s.send_bytes(array("i", [1, 2]))
        assert r.recv_bytes(timeout=_WAIT) == array("i", [1, 2]).tobytes(), "an int array was not sent as its bytes"
        _expect(ValueError, lambda: s.send_bytes(b"abc", 4), "send_bytes with offset past the end")
        _expect(ValueError, lambda: s.send_bytes(b"abc", 1, 5), "send_bytes with size past the end")
        assert not r.poll(0.05), "a refused send_bytes sent something"

        s.send_bytes(b"hello world")
        small = bytearray(5)
        exc = _expect(BufferTooSmall, lambda: r.recv_bytes_into(small, timeout=_WAIT), "recv_bytes_into a 5-byte buffer")
        assert isinstance(exc, BufferTooSmall) and exc.data == b"hello world", "BufferTooSmall lost the message"
        assert small == bytearray(5), "recv_bytes_into wrote into a buffer too small for the message"
        s.send_bytes(b"abc")
        buf = array("B", bytes(10))
        assert r.recv_bytes_into(buf, 2, timeout=_WAIT) == 3 and buf[2:5].tobytes() == b"abc"
        s.send_bytes(b"ro")
        _expect(TypeError, lambda: r.recv_bytes_into(b"readonly"), "recv_bytes_into a read-only buffer")
        assert r.recv_bytes(timeout=_WAIT) == b"ro", "a refused recv_bytes_into consumed the message"
        s.send_bytes(b"x" * 10)
        _expect(MessageTooLarge, lambda: r.recv_bytes(4, timeout=_WAIT), "recv_bytes(maxlength=4) of 10 bytes")
        s.send_bytes(b"next")
        assert r.recv_bytes(timeout=_WAIT) == b"next", "the channel broke after maxlength refused a message"


@_check()
def _timeouts(make_pair: Pair, caps: Capabilities) -> None:
    """recv with a timeout raises Timeout (a TimeoutError) when nothing comes, and the channel stays usable."""
    with _pair(make_pair) as (s, r):
        t0 = time.monotonic()
        exc = _expect(Timeout, lambda: r.recv(timeout=0.05), "recv(timeout=0.05) on an empty channel")
        assert time.monotonic() - t0 >= 0.04, "recv(timeout=0.05) returned before its timeout"
        assert isinstance(exc, TimeoutError)
        _expect(Timeout, lambda: r.recv(timeout=0), "recv(timeout=0) on an empty channel")
        _expect(Timeout, lambda: r.recv_bytes(timeout=0.01), "recv_bytes(timeout=0.01)")
        _expect(Timeout, lambda: r.recv_bytes_into(bytearray(8), timeout=0.01), "recv_bytes_into(timeout=0.01)")
        s.send("after the timeouts")
        assert r.recv(timeout=_WAIT) == "after the timeouts", "the channel broke after a Timeout"


@_check()
def _poll(make_pair: Pair, caps: Capabilities) -> None:
    """poll(0) checks, poll(timeout) waits for a message from another process; neither consumes it."""
    with _pair(make_pair) as (s, r):
        assert r.poll() is False and r.poll(0) is False, "poll() is True on an empty channel"
        t0 = time.monotonic()
        assert r.poll(0.05) is False, "poll(0.05) is True on an empty channel"
        assert time.monotonic() - t0 >= 0.04, "poll(0.05) returned before its timeout"
        s.send_bytes(b"p")
        assert r.poll(_WAIT) is True and r.poll(0) is True, "poll() misses a message"
        assert r.recv_bytes(timeout=_WAIT) == b"p", "poll() consumed or altered the message"
        assert r.poll(0) is False, "poll() is still True after the only message was received"

        def later(s: Any) -> None:
            time.sleep(0.1)
            s.send_bytes(b"late")

        child = _fork(later, s, r, caps)
        assert r.poll(_WAIT) is True, "poll(timeout) did not see a message sent by another process"
        assert r.recv_bytes(timeout=_WAIT) == b"late"
        child.result(_WAIT)


@_check(lambda caps: caps.selectable)
def _fileno_select(make_pair: Pair, caps: Capabilities) -> None:
    """fileno() gives an fd that select() reports readable when another process sends."""
    with _pair(make_pair) as (s, r):
        fd = r.fileno()
        assert isinstance(fd, int) and fd >= 0, f"fileno() returned {fd!r}"

        def later(s: Any) -> None:
            time.sleep(0.1)
            s.send_bytes(b"sel")

        child = _fork(later, s, r, caps)
        deadline = time.monotonic() + _WAIT
        got = None
        while got is None and time.monotonic() < deadline:  # readiness may be spurious: then retry
            if select.select([r], [], [], _WAIT)[0]:
                try:
                    got = r.recv_bytes(timeout=0)
                except Timeout:
                    continue
        assert got == b"sel", "select() on fileno() never reported the message"
        child.result(_WAIT)


@_check()
def _own_close(make_pair: Pair, caps: Capabilities) -> None:
    """After close() (idempotent) every operation raises HandleClosed; with-blocks close too."""
    with _pair(make_pair) as (s, r):
        for h in (r, s):
            h.close()
            h.close()
            assert h.closed, "closed is False after close()"
            assert "closed" in repr(h), f"repr does not show the closed state: {h!r}"
            ops: list[tuple[str, Callable[[], Any]]] = [
                ("send", lambda: h.send(1)), ("send_bytes", lambda: h.send_bytes(b"x")),
                ("recv", lambda: h.recv(timeout=0)), ("recv_bytes", lambda: h.recv_bytes(timeout=0)),
                ("recv_bytes_into", lambda: h.recv_bytes_into(bytearray(4), timeout=0)),
                ("poll", lambda: h.poll(0)), ("fileno", h.fileno), ("iter", lambda: next(iter(h))),
                ("peer", lambda: h.peer),
            ]
            for name, op in ops:
                _expect(HandleClosed, op, f"{name} after close()")
    a, b = make_pair()
    with a, b:
        pass
    assert a.closed and b.closed, "leaving a with-block did not close the handles"


@_check(lambda caps: caps.eof)
def _peer_close(make_pair: Pair, caps: Capabilities) -> None:
    """When the peer closes, recv gets every message, then ChannelClosed (not PeerVanished), again and again."""
    with _pair(make_pair) as (s, r):
        s.send_bytes(b"a")
        s.send_bytes(b"")
        s.send("c")
        s.close()
        assert r.recv_bytes(timeout=_WAIT) == b"a" and r.recv_bytes(timeout=_WAIT) == b""
        assert r.recv(timeout=_WAIT) == "c", "a message sent before close() was lost"
        for _ in range(2):
            exc = _expect(ChannelClosed, lambda: r.recv(timeout=_WAIT), "recv after the peer closed")
            assert not isinstance(exc, PeerVanished), f"a clean close was reported as PeerVanished: {exc}"
        assert r.poll(0) is True, "poll() is False at the end of the stream"
        _expect(ChannelClosed, lambda: r.recv_bytes(timeout=0), "recv_bytes(timeout=0) after the peer closed")
        assert list(r) == [], "iterating a finished channel yielded messages"

    with _pair(make_pair) as (s, r):
        r.close()
        for _ in range(200):  # a socket may accept a send or two before it learns the peer is gone
            try:
                s.send_bytes(b"x" * 1024, timeout=_WAIT)
            except ChannelClosed:
                break
            time.sleep(0.005)
        else:
            raise AssertionError("sending to a closed peer never raised ChannelClosed")


@_check(lambda caps: caps.eof)
def _iterate_until_closed(make_pair: Pair, caps: Capabilities) -> None:
    """Iterating yields every message another process sent, and ends when it closes."""
    with _pair(make_pair) as (s, r):
        msgs = [{"i": i, "blob": bytes(i)} for i in range(50)] + [b"x" * 100_000]

        def send(s: Any) -> None:
            for m in msgs:
                s.send(m)
            s.close()

        child = _fork(send, s, r, caps)
        got, it = [], iter(r)
        while True:
            assert r.poll(_WAIT), "neither a message nor the end of the stream arrived"
            try:
                got.append(next(it))
            except StopIteration:
                break
        child.result(_WAIT)
        assert got == msgs, f"iteration yielded {len(got)} messages, {len(msgs)} were sent"


@_check(lambda caps: not caps.eof)
def _queue_has_no_end(make_pair: Pair, caps: Capabilities) -> None:
    """A queue has no end of stream: after a sender closes, recv waits and times out."""
    with _pair(make_pair) as (s, r):
        s.send_bytes(b"last")
        if not getattr(s, "owner", False):  # closing the owner may remove the queue (System V does)
            s.close()
        assert r.recv_bytes(timeout=_WAIT) == b"last", "a message sent before close() was lost"
        _expect(Timeout, lambda: r.recv(timeout=0.05), "recv on a queue after its sender closed")


@_check(lambda caps: caps.duplex)
def _duplex(make_pair: Pair, caps: Capabilities) -> None:
    """Both ends send: another process echoes messages up to 1 MiB back."""
    with _pair(make_pair) as (s, r):
        r.send("ping")
        assert s.recv(timeout=_WAIT) == "ping", "the receiver cannot send back"

        def echo(s: Any) -> int:
            n = 0
            for m in s:
                if m == "stop":
                    break
                s.send_bytes(m)
                n += 1
            return n

        child = _fork(echo, s, r, caps)
        top, _ = _limit(r, s, caps)
        sizes = [n for n in (0, 1, 4096, 70_000, MiB) if n <= top]
        for i, n in enumerate(sizes):
            r.send_bytes(_payload(n, i))
            assert r.recv_bytes(timeout=_WAIT) == _payload(n, i), f"a {n}-byte echo came back altered"
        r.send("stop")
        assert child.result(_WAIT) == len(sizes)


@_check()
def _busy(make_pair: Pair, caps: Capabilities) -> None:
    """A second thread receiving while another waits gets Busy; the waiting one still gets the message."""
    with _pair(make_pair) as (s, r):
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(r.recv(timeout=_WAIT)))
        t.start()
        try:
            deadline = time.monotonic() + _WAIT
            while not r._receiving._lock.locked():  # wait until the thread is inside recv
                assert time.monotonic() < deadline, "the receiving thread never started"
                time.sleep(0.002)
            _expect(Busy, lambda: r.recv(timeout=0), "recv while another thread receives")
        finally:
            s.send("for the first thread")
            t.join(_WAIT)
        assert box == ["for the first thread"], "the waiting thread did not get the message"


@_check(lambda caps: caps.eof)
def _peer_killed(make_pair: Pair, caps: Capabilities) -> None:
    """A peer killed with SIGKILL in the middle of a send makes recv raise ChannelClosed, never hang."""
    with _pair(make_pair) as (s, r):
        top, _ = _limit(s, r, caps)
        go_r, go_w = os.pipe()

        def send(s: Any) -> None:
            os.write(go_w, b"g")
            s.send_bytes(_payload(top))  # blocks: nobody reads yet
            time.sleep(60)

        child = _fork(send, s, r, caps)
        os.close(go_w)
        try:
            select.select([go_r], [], [], _WAIT)
            time.sleep(0.2)
        finally:
            os.close(go_r)
            child.kill(signal.SIGKILL)
            child.wait(_WAIT)
        try:
            got = 0
            while True:
                data = r.recv_bytes(timeout=_WAIT)
                got += 1
                assert len(data) == top and got == 1, "more or other data than the one message sent"
        except ChannelClosed as exc:
            if got == 0 and getattr(r, "_stream", False) and top > 4 * MiB:
                assert isinstance(exc, PeerVanished), f"a frame cut by the peer's death was reported as {exc!r}"
        except Timeout:
            raise AssertionError("recv hangs after the peer was killed") from None
