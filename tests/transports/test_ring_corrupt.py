"""ring:// against a hostile process of the same user that writes the queue's shared memory.

The attacker maps /dev/shm/<name> with plain mmap (no ipcraft) and writes cursors, lock words or
records.  Every handle then gets a typed error (ProtocolError, or Timeout for a lock it cannot get),
never a crash, a write outside the mapping or a hang.  Handles that could crash run in forked children,
whose death fails the test.
"""

from __future__ import annotations

import mmap
import os
import struct

import pytest

import ipcraft
from ipcraft._rings import mpmc as _mpmc
from ipcraft.errors import IPCError, ProtocolError
from ipcraft.testing import Child, run_in_child, unique_name

CAPACITY = 4096
_U64 = struct.Struct("<Q")


@pytest.fixture()
def ring():
    """A ring:// queue of 4096 bytes, its name and a raw writable mapping of its memory."""
    name = unique_name("hostile")
    with ipcraft.queue(f"ring://{name}", create=True, capacity=CAPACITY) as q:
        fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
        try:
            raw = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        try:
            yield name, q, raw
        finally:
            raw.close()


def _cursor(raw: mmap.mmap, off: int) -> int:
    return int(_U64.unpack_from(raw, off)[0])


def test_a_producer_never_writes_past_the_mapping_when_head_is_not_record_aligned(ring, peak_rss) -> None:  # type: ignore[no-untyped-def]
    """A producer attached while the ring was sound; then head is set to capacity - 4 (not a record
    boundary, the record header would straddle the end of the mapping).  Its next send is a
    ProtocolError, in the child that sends (which would die of SIGSEGV if the send wrote there)."""
    name, q, raw = ring

    def producer_after_corruption(r: int, w: int) -> str:
        with ipcraft.queue(f"ring://{name}") as p:  # attaches with head = tail = 16: sound
            os.write(w, b"attached")
            os.read(r, 1)  # the attacker writes head now
            try:
                with peak_rss(16 * 1024, "sending on a corrupt ring"):
                    p.send_bytes(b"12345678", timeout=1)
            except ProtocolError:
                return "ProtocolError"
            return "sent"

    q.send_bytes(b"x")
    assert q.recv_bytes(timeout=1) == b"x"
    tail = _cursor(raw, _mpmc.OFF_TAIL)
    assert tail % 8 == 0 and tail > 0
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    child = Child(producer_after_corruption, r2, w1)
    try:
        assert os.read(r1, 8) == b"attached"
        _U64.pack_into(raw, _mpmc.OFF_HEAD, CAPACITY - 4)
        os.write(w2, b"!")
        assert child.result(timeout=20) == "ProtocolError"
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)
    with pytest.raises(ProtocolError):
        q.recv_bytes(timeout=1)


@pytest.mark.parametrize("head, tail", [(CAPACITY - 4, 16), (12, 0), (CAPACITY + 8, 0), (0, 8), (2**63, 0)],
                         ids=["straddling-end", "misaligned", "past-capacity", "tail-ahead", "huge"])
def test_corrupt_cursors_are_protocol_errors_on_every_path(ring, head: int, tail: int, peak_rss) -> None:  # type: ignore[no-untyped-def]
    """With the cursors scribbled, send, receive (general and fast path), poll and a new attach all
    report ProtocolError or refuse cleanly; the process survives (children do the risky calls) and its
    peak RSS stays within 16 MiB."""
    name, _, raw = ring

    def every_path() -> list[str]:
        outcomes = []
        with peak_rss(16 * 1024, "using a corrupt ring"), ipcraft.queue(f"ring://{name}") as h:
            _U64.pack_into(raw, _mpmc.OFF_HEAD, head)
            _U64.pack_into(raw, _mpmc.OFF_TAIL, tail)
            # recv_bytes() without a timeout takes the C fast path; it goes first, while the cursors
            # are surely corrupt (once a receive has discarded the pending bytes, the ring is empty
            # and such a receive would rightly wait forever).
            for what, call in (("recv-fast", lambda: h.recv_bytes()),
                               ("send", lambda: h.send_bytes(b"abcdefgh", timeout=0.2)),
                               ("send-big", lambda: h.send_bytes(b"z" * 100_000, timeout=0.2)),
                               ("recv", lambda: h.recv_bytes(timeout=0.2)),
                               ("recv-obj", lambda: h.recv(timeout=0.2)),
                               ("poll", lambda: h.poll(0.2))):
                try:
                    call()
                    outcomes.append(f"{what}:ok")
                except IPCError as exc:
                    outcomes.append(f"{what}:{type(exc).__name__}")
        try:
            ipcraft.queue(f"ring://{name}").close()
            outcomes.append("attach:ok")
        except (IPCError, ValueError) as exc:
            outcomes.append(f"attach:{type(exc).__name__}")
        return outcomes

    outcomes = run_in_child(every_path, timeout=30)
    allowed = ("ProtocolError", "MessageTooLarge", "Timeout", "ValueError")
    # A producer reads only head (tail from its cache while that proves there is room): a send into a
    # ring whose tail alone was scribbled may succeed, within the mapping; integrity is not promised.
    assert all(o.split(":")[1] in allowed or o in ("poll:ok", "send:ok", "attach:ok") for o in outcomes), str(outcomes)
    assert outcomes[0] == "recv-fast:ProtocolError" and "recv:ProtocolError" in outcomes, outcomes
