"""Conformance checks of waiting and ending: timeouts, poll, select, close, iteration, Busy, death."""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import Busy, ChannelClosed, HandleClosed, PeerVanished, Timeout
from ._core import WAIT, Capabilities, MiB, Pair, check, expect, fork, limit, pair, payload


@check()
def _timeouts(make_pair: Pair, caps: Capabilities) -> None:
    """recv with a timeout raises Timeout (a TimeoutError) when nothing comes, and the channel stays usable."""
    with pair(make_pair) as (s, r):
        t0 = time.monotonic()
        exc = expect(Timeout, lambda: r.recv(timeout=0.05), "recv(timeout=0.05) on an empty channel")
        assert time.monotonic() - t0 >= 0.04, "recv(timeout=0.05) returned before its timeout"
        assert isinstance(exc, TimeoutError)
        expect(Timeout, lambda: r.recv(timeout=0), "recv(timeout=0) on an empty channel")
        expect(Timeout, lambda: r.recv_bytes(timeout=0.01), "recv_bytes(timeout=0.01)")
        expect(Timeout, lambda: r.recv_bytes_into(bytearray(8), timeout=0.01), "recv_bytes_into(timeout=0.01)")
        s.send("after the timeouts")
        assert r.recv(timeout=WAIT) == "after the timeouts", "the channel broke after a Timeout"


@check()
def _poll(make_pair: Pair, caps: Capabilities) -> None:
    """poll(0) checks, poll(timeout) waits for a message from another process; neither consumes it."""
    with pair(make_pair) as (s, r):
        assert r.poll() is False and r.poll(0) is False, "poll() is True on an empty channel"
        t0 = time.monotonic()
        assert r.poll(0.05) is False, "poll(0.05) is True on an empty channel"
        assert time.monotonic() - t0 >= 0.04, "poll(0.05) returned before its timeout"
        s.send_bytes(b"p")
        assert r.poll(WAIT) is True and r.poll(0) is True, "poll() misses a message"
        assert r.recv_bytes(timeout=WAIT) == b"p", "poll() consumed or altered the message"
        assert r.poll(0) is False, "poll() is still True after the only message was received"

        def later(s: Any) -> None:
            time.sleep(0.1)
            s.send_bytes(b"late")

        child = fork(later, s, r, caps)
        assert r.poll(WAIT) is True, "poll(timeout) did not see a message sent by another process"
        assert r.recv_bytes(timeout=WAIT) == b"late"
        child.result(WAIT)


@check(lambda caps: caps.selectable)
def _fileno_select(make_pair: Pair, caps: Capabilities) -> None:
    """fileno() gives an fd that select() reports readable when another process sends."""
    with pair(make_pair) as (s, r):
        fd = r.fileno()
        assert isinstance(fd, int) and fd >= 0, f"fileno() returned {fd!r}"

        def later(s: Any) -> None:
            time.sleep(0.1)
            s.send_bytes(b"sel")

        child = fork(later, s, r, caps)
        deadline = time.monotonic() + WAIT
        got = None
        while got is None and time.monotonic() < deadline:  # readiness may be spurious: then retry
            if select.select([r], [], [], WAIT)[0]:
                try:
                    got = r.recv_bytes(timeout=0)
                except Timeout:
                    continue
        assert got == b"sel", "select() on fileno() never reported the message"
        child.result(WAIT)


def _closed_ops(h: Any) -> list[tuple[str, Callable[[], Any]]]:
    """Every operation of a handle, as (name, call), for the closed-handle check."""
    return [
        ("send", lambda: h.send(1)), ("send_bytes", lambda: h.send_bytes(b"x")),
        ("recv", lambda: h.recv(timeout=0)), ("recv_bytes", lambda: h.recv_bytes(timeout=0)),
        ("recv_bytes_into", lambda: h.recv_bytes_into(bytearray(4), timeout=0)),
        ("poll", lambda: h.poll(0)), ("fileno", h.fileno), ("iter", lambda: next(iter(h))),
        ("peer", lambda: h.peer),
    ]


@check()
def _own_close(make_pair: Pair, caps: Capabilities) -> None:
    """After close() (idempotent) every operation raises HandleClosed; with-blocks close too."""
    with pair(make_pair) as (s, r):
        for h in (r, s):
            h.close()
            h.close()
            assert h.closed, "closed is False after close()"
            assert "closed" in repr(h), f"repr does not show the closed state: {h!r}"
            for name, op in _closed_ops(h):
                expect(HandleClosed, op, f"{name} after close()")
    a, b = make_pair()
    with a, b:
        pass
    assert a.closed and b.closed, "leaving a with-block did not close the handles"


@check(lambda caps: caps.eof)
def _peer_close(make_pair: Pair, caps: Capabilities) -> None:
    """When the peer closes, recv gets every message, then ChannelClosed (not PeerVanished), again and again."""
    with pair(make_pair) as (s, r):
        s.send_bytes(b"a")
        s.send_bytes(b"")
        s.send("c")
        s.close()
        assert r.recv_bytes(timeout=WAIT) == b"a" and r.recv_bytes(timeout=WAIT) == b""
        assert r.recv(timeout=WAIT) == "c", "a message sent before close() was lost"
        for _ in range(2):
            exc = expect(ChannelClosed, lambda: r.recv(timeout=WAIT), "recv after the peer closed")
            assert not isinstance(exc, PeerVanished), f"a clean close was reported as PeerVanished: {exc}"
        assert r.poll(0) is True, "poll() is False at the end of the stream"
        expect(ChannelClosed, lambda: r.recv_bytes(timeout=0), "recv_bytes(timeout=0) after the peer closed")
        assert list(r) == [], "iterating a finished channel yielded messages"

    with pair(make_pair) as (s, r):
        r.close()
        for _ in range(200):  # a socket may accept a send or two before it learns the peer is gone
            try:
                s.send_bytes(b"x" * 1024, timeout=WAIT)
            except ChannelClosed:
                break
            time.sleep(0.005)
        else:
            raise AssertionError("sending to a closed peer never raised ChannelClosed")


@check(lambda caps: caps.eof)
def _iterate_until_closed(make_pair: Pair, caps: Capabilities) -> None:
    """Iterating yields every message another process sent, and ends when it closes."""
    with pair(make_pair) as (s, r):
        msgs = [{"i": i, "blob": bytes(i)} for i in range(50)] + [b"x" * 100_000]

        def send(s: Any) -> None:
            for m in msgs:
                s.send(m)
            s.close()

        child = fork(send, s, r, caps)
        got, it = [], iter(r)
        while True:
            assert r.poll(WAIT), "neither a message nor the end of the stream arrived"
            try:
                got.append(next(it))
            except StopIteration:
                break
        child.result(WAIT)
        assert got == msgs, f"iteration yielded {len(got)} messages, {len(msgs)} were sent"


@check(lambda caps: not caps.eof)
def _queue_has_no_end(make_pair: Pair, caps: Capabilities) -> None:
    """A queue has no end of stream: after a sender closes, recv waits and times out."""
    with pair(make_pair) as (s, r):
        s.send_bytes(b"last")
        if not getattr(s, "owner", False):  # closing the owner may remove the queue (System V does)
            s.close()
        assert r.recv_bytes(timeout=WAIT) == b"last", "a message sent before close() was lost"
        expect(Timeout, lambda: r.recv(timeout=0.05), "recv on a queue after its sender closed")


@check(lambda caps: caps.duplex)
def _duplex(make_pair: Pair, caps: Capabilities) -> None:
    """Both ends send: another process echoes messages up to 1 MiB back."""
    with pair(make_pair) as (s, r):
        r.send("ping")
        assert s.recv(timeout=WAIT) == "ping", "the receiver cannot send back"

        def echo(s: Any) -> int:
            n = 0
            for m in s:
                if m == "stop":
                    break
                s.send_bytes(m)
                n += 1
            return n

        child = fork(echo, s, r, caps)
        top, _ = limit(r, s, caps)
        sizes = [n for n in (0, 1, 4096, 70_000, MiB) if n <= top]
        for i, n in enumerate(sizes):
            r.send_bytes(payload(n, i))
            assert r.recv_bytes(timeout=WAIT) == payload(n, i), f"a {n}-byte echo came back altered"
        r.send("stop")
        assert child.result(WAIT) == len(sizes)


@check()
def _busy(make_pair: Pair, caps: Capabilities) -> None:
    """A second thread receiving while another waits gets Busy; the waiting one still gets the message."""
    with pair(make_pair) as (s, r):
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(r.recv(timeout=WAIT)))
        t.start()
        try:
            deadline = time.monotonic() + WAIT
            while not r._receiving.held:  # wait until the thread is inside recv
                assert time.monotonic() < deadline, "the receiving thread never started"
                time.sleep(0.002)
            expect(Busy, lambda: r.recv(timeout=0), "recv while another thread receives")
        finally:
            s.send("for the first thread")
            t.join(WAIT)
        assert box == ["for the first thread"], "the waiting thread did not get the message"


@check(lambda caps: caps.eof)
def _peer_killed(make_pair: Pair, caps: Capabilities) -> None:
    """A peer killed with SIGKILL in the middle of a send makes recv raise ChannelClosed, never hang."""
    with pair(make_pair) as (s, r):
        top, _ = limit(s, r, caps)
        go_r, go_w = os.pipe()

        def send(s: Any) -> None:
            os.write(go_w, b"g")
            s.send_bytes(payload(top))  # blocks: nobody reads yet
            time.sleep(60)

        child = fork(send, s, r, caps)
        os.close(go_w)
        try:
            select.select([go_r], [], [], WAIT)
            time.sleep(0.2)
        finally:
            os.close(go_r)
            child.kill(signal.SIGKILL)
            child.wait(WAIT)
        try:
            got = 0
            while True:
                data = r.recv_bytes(timeout=WAIT)
                got += 1
                assert len(data) == top and got == 1, "more or other data than the one message sent"
        except ChannelClosed as exc:
            if got == 0 and getattr(r, "_stream", False) and top > 4 * MiB:
                assert isinstance(exc, PeerVanished), f"a frame cut by the peer's death was reported as {exc!r}"
        except Timeout:
            raise AssertionError("recv hangs after the peer was killed") from None
