"""Fuzz target: handshakes against a hostile peer over real sockets (``-m fuzz``; also in the default run).

Both directions, on every connection scheme (unix://, unix+seqpacket://, tcp://, shm://):

* **hostile clients** connect to a live ipcraft listener and send random, truncated, corrupted or
  oversized handshake bytes in random pieces, then close, reset or go silent.  The listener keeps
  serving (a good client gets through afterwards), its accept() raises nothing but Timeout, every
  channel it handed out yields a message or a typed error, and its peak RSS grows by less than 64 MiB.
* **hostile servers** (a bare listening socket) answer an ipcraft client with such bytes (for shm://
  also with descriptors of the wrong kind or size).  connect() returns a channel or raises a typed
  error (ipcraft.errors, or an OSError with its errno), within its timeout.

Inputs come from hypothesis, seeded with the corpus in ``corpus/handshakes/`` (one file per input,
named after the scheme).  Each target runs for ``IPCRAFT_FUZZ_SECONDS`` (default 2) seconds; the
number of inputs tried goes to the run's figures.  Longer on demand::

    IPCRAFT_FUZZ_SECONDS=300 python -m pytest -m fuzz tests/transports/test_fuzz_handshakes.py
"""

from __future__ import annotations

import fcntl
import os
import queue
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import ipcraft
from ipcraft.errors import IPCError, Timeout
from ipcraft.testing import unique_name

from ._peers import SCHEMES, client_url, listen, raw_connect

pytestmark = pytest.mark.fuzz

SECONDS = float(os.environ.get("IPCRAFT_FUZZ_SECONDS", "2"))
CORPUS = Path(__file__).parent / "corpus" / "handshakes"
RSS_BOUND = 64 * 1024  # KiB of peak RSS growth allowed over a whole target
_SHM_HELLO = struct.Struct("<8sIQ")

#: The first bytes each side of a correct handshake sends (what the fuzzer mutates).
VALID = {
    "unix": b"\x01",
    "unix+seqpacket": b"\x01",
    "tcp": b"IPCRAFT\x01\x00" + bytes(32),
    "shm": b"\x01" + _SHM_HELLO.pack(b"IPCSHM\x00\x01", 1, 0),
}


def corpus(scheme: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(CORPUS.glob(f"{scheme.replace('+', '_')}-*"))]


def hostile_bytes(scheme: str) -> st.SearchStrategy[bytes]:
    valid = VALID[scheme]
    mutated = st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255), st.binary(max_size=64)).map(
        lambda t: valid[:t[0]] + bytes([valid[t[0]] ^ t[1]]) + valid[t[0] + 1:] + t[2])
    return st.one_of(
        st.binary(max_size=256),                                       # random
        st.integers(0, len(valid)).map(lambda n: valid[:n]),          # truncated
        mutated,                                                      # one byte flipped, junk after
        st.integers(1, 1 << 16).map(lambda n: valid + b"\xff" * n),  # oversized
        st.integers(0, (1 << 64) - 1).map(                           # shm: any capacity
            lambda c: _SHM_HELLO.pack(b"IPCSHM\x00\x01", 1, c)),
    )


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        if p > last:
            out.append(data[last:p])
            last = p
    return out


_SETTINGS: dict[str, Any] = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}


def _fuzz(body: Any, strategies: dict[str, Any], seeds: list[dict[str, Any]]) -> int:
    """Run ``body`` on the seed corpus, then on hypothesis's inputs until the time budget is spent
    (in runs of 5 inputs, so the budget is checked often); return the number of runs."""
    seeded = given(**strategies)(body)
    for seed in seeds:
        seeded = example(**seed)(seeded)
    settings(phases=[Phase.explicit], **_SETTINGS)(seeded)()
    fuzz = settings(max_examples=5, **_SETTINGS)(given(**strategies)(body))
    end = time.monotonic() + SECONDS
    rounds = 0
    while True:
        fuzz()
        rounds += 1
        if time.monotonic() >= end:
            return rounds


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset this process's peak RSS (VmHWM) to its current RSS; return that RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def _peak_rss_since(base: int) -> int:
    """KiB the peak RSS rose above ``base`` since _reset_peak_rss()."""
    return max(0, _status_kib("VmHWM") - base)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_fuzz_hostile_clients_against_a_listener(scheme: str, figures: Any) -> None:
    rss_before = _reset_peak_rss()
    with listen(scheme, handshake_timeout=0.5) as listener:
        stop = threading.Event()
        incoming: queue.SimpleQueue[Any] = queue.SimpleQueue()
        escaped: list[BaseException] = []

        def serve() -> None:
            while not stop.is_set():
                try:
                    incoming.put(listener.accept(timeout=0.05))
                except Timeout:
                    pass
                except BaseException as exc:  # noqa: BLE001 - anything else fails the target
                    escaped.append(exc)
                    return

        server = threading.Thread(target=serve)
        server.start()
        tried = accepted = 0
        live: list[Any] = []  # accepted channels whose outcome is not known yet
        outcomes: dict[str, int] = {}

        def judge() -> None:
            """Read what each accepted channel yields; close it once known (as a real server would)."""
            nonlocal accepted
            while not incoming.empty():
                live.append(incoming.get())
                accepted += 1
            for ch in list(live):
                name = _outcome(ch)
                if name != "pending":
                    outcomes[name] = outcomes.get(name, 0) + 1
                    live.remove(ch)
                    ch.close()

        def one(payload: bytes, cuts: list[int], end: str) -> None:
            nonlocal tried
            tried += 1
            s = raw_connect(listener)
            try:
                if end == "reset" and scheme == "tcp":
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                for piece in _pieces(payload, cuts):
                    s.sendall(piece)
                if end == "silent":
                    s.settimeout(0.01)
                    try:
                        s.recv(1 << 16)
                    except OSError:
                        pass
            except OSError:
                pass  # the listener dropped us already: that is allowed
            finally:
                s.close()
            judge()

        try:
            rounds = _fuzz(one, {"payload": hostile_bytes(scheme),
                                 "cuts": st.lists(st.integers(0, 1 << 16), max_size=3),
                                 "end": st.sampled_from(["close", "reset", "silent"])},
                           [{"payload": seed, "cuts": [], "end": "close"} for seed in corpus(scheme)])
            url, opts = client_url(listener)
            with ipcraft.connect(url, timeout=10, **opts) as good:  # still serving
                good.send("after the fuzz")
                until = time.monotonic() + 10
                while "greeting" not in outcomes and time.monotonic() < until:
                    judge()
                    time.sleep(0.01)
        finally:
            stop.set()
            server.join(10)
            judge()
            outcomes["pending"] = len(live)
            for ch in live:
                ch.close()
        refused = listener._impl.refused
    grew = _peak_rss_since(rss_before)
    figures(f"{scheme}: {tried} hostile clients ({rounds} hypothesis runs) in {SECONDS:g} s; listener refused "
            f"{refused}, accepted {accepted} ({outcomes}); peak RSS +{grew} KiB")
    assert not escaped, f"accept() raised {escaped[0]!r}"
    assert outcomes.get("greeting", 0) == 1, "the good client was not served after the fuzz"
    assert grew < RSS_BOUND


def _outcome(ch: Any) -> str:
    """What an accepted channel yields now: the good client's greeting, a message, a typed error, or
    "pending" (nothing yet)."""
    try:
        got = ch.recv(timeout=0)
    except Timeout:
        return "pending"
    except IPCError as exc:
        return type(exc).__name__
    return "greeting" if got == "after the fuzz" else "message"


def _hostile_server(sock: socket.socket, payload: bytes, fds_kind: str | None, stop: threading.Event) -> None:
    """Answer one client on ``sock`` with ``payload`` (and descriptors), then stall until told to stop."""
    sock.settimeout(5)
    try:
        conn, _ = sock.accept()
    except OSError:
        return
    try:
        fds = _bad_fds(fds_kind)
        try:
            if fds:
                socket.send_fds(conn, [payload or b"\x00"], fds)
            elif payload:
                conn.sendall(payload)
        except OSError:
            pass
        finally:
            for fd in fds:
                os.close(fd)
        stop.wait(5)
    finally:
        conn.close()


def _bad_fds(kind: str | None) -> list[int]:
    """Descriptors an shm:// server must not be trusted with: wrong kinds, sizes or seals."""
    if kind is None:
        return []
    if kind == "pipes":
        r, w = os.pipe()
        return [r, w, *os.pipe(), os.open("/dev/null", os.O_RDONLY)]
    memfd = os.memfd_create("fuzz", os.MFD_ALLOW_SEALING)
    os.ftruncate(memfd, 2 * (4096 + 4096) if kind == "unsealed" else 12345)
    if kind == "sealed-wrong-size":
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    return [memfd, *(os.eventfd(0) for _ in range(4))]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_fuzz_hostile_servers_against_a_client(scheme: str, figures: Any) -> None:
    outcomes: dict[str, int] = {}
    tried = 0
    rss_before = _reset_peak_rss()

    def one(payload: bytes, fds_kind: str | None) -> None:
        nonlocal tried
        tried += 1
        name = unique_name("fz")
        if scheme == "tcp":
            srv = socket.create_server(("127.0.0.1", 0))
            url, opts = f"tcp://127.0.0.1:{srv.getsockname()[1]}", {"insecure": True}
        else:
            kind = socket.SOCK_SEQPACKET if scheme == "unix+seqpacket" else socket.SOCK_STREAM
            srv = socket.socket(socket.AF_UNIX, kind)
            srv.bind(b"\0" + (f"ipcraft-shm.{name}" if scheme == "shm" else name).encode())
            srv.listen(1)
            url, opts = (f"shm://{name}" if scheme == "shm" else f"{scheme}:@{name}"), {}
        stop = threading.Event()
        t = threading.Thread(target=_hostile_server, args=(srv, payload, fds_kind, stop))
        t.start()
        start = time.monotonic()
        try:
            with ipcraft.connect(url, timeout=0.1, **opts):
                result = "connected"
        except (IPCError, OSError) as exc:  # typed: ipcraft's errors, or an OSError with its errno
            result = type(exc).__name__
        finally:
            stop.set()
            t.join(10)
            srv.close()
        assert time.monotonic() - start < 2, f"connect() overran its 0.1 s timeout ({result})"
        outcomes[result] = outcomes.get(result, 0) + 1

    kinds = [None, "pipes", "unsealed", "sealed-wrong-size"] if scheme == "shm" else [None]
    rounds = _fuzz(one, {"payload": hostile_bytes(scheme), "fds_kind": st.sampled_from(kinds)},
                   [{"payload": seed, "fds_kind": None} for seed in corpus(scheme)])
    grew = _peak_rss_since(rss_before)
    figures(f"{scheme}: {tried} hostile servers ({rounds} hypothesis runs) in {SECONDS:g} s; client outcomes "
            f"{outcomes}; peak RSS +{grew} KiB")
    assert grew < RSS_BOUND
