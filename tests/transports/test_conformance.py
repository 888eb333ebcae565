"""The conformance suite (ipcraft.testing.check_channel) over every scheme, one test per check.

A scheme whose transport module is not in this build (module_for raises NotImplementedError) is
skipped; every other failure is a failure.  The factories: connection schemes pair a
connect() with an accept(); queue schemes pair the creating handle with an opener, and for fifo://,
unix+dgram:// and udp:// the creator is the receiving side.  For mq://, sysvmq://, ring:// and file://
the creator can send too, so those also run with the creator as the sender.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import ipcraft
from ipcraft._conformance import CHECKS, Capabilities
from ipcraft._transports import module_for
from ipcraft.testing import check_channel, unique_key, unique_name

AUTHKEY = b"conformance-suite-key"
MakePair = Callable[[], "tuple[Any, Any]"]


@dataclass(frozen=True)
class Case:
    id: str
    scheme: str | None  # None: ipcraft.pipe(), always available
    factory: Callable[[str], MakePair]  # tmp dir -> make_pair
    caps: dict[str, Any] = field(default_factory=dict)


def _pipe(duplex: bool) -> Callable[[str], MakePair]:
    def factory(tmp: str) -> MakePair:
        def make() -> tuple[Any, Any]:
            a, b = ipcraft.pipe(duplex=duplex)
            return (a, b) if duplex else (b, a)  # simplex pipe() returns (reader, writer)
        return make
    return factory


def _connection(url: Callable[[str], str], **opts: Any) -> Callable[[str], MakePair]:
    """connect() in this thread while another accepts (the handshakes need both sides at once)."""
    def factory(tmp: str) -> MakePair:
        def make() -> tuple[Any, Any]:
            listener = ipcraft.listen(url(tmp), **opts)
            box: list[Any] = []

            def accept() -> None:
                try:
                    box.append(listener.accept(timeout=10))
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    box.append(exc)

            t = threading.Thread(target=accept)
            t.start()
            try:
                client = ipcraft.connect(str(listener.endpoint), timeout=10, **opts)
            finally:
                t.join(15)
                listener.close()
            if not box or isinstance(box[0], BaseException):
                client.close()
                raise AssertionError(f"accept() failed: {box[0] if box else 'it did not return'}")
            return client, box[0]
        return make
    return factory


def _queue(url: Callable[[str], str], creator_sends: bool = False) -> Callable[[str], MakePair]:
    def factory(tmp: str) -> MakePair:
        def make() -> tuple[Any, Any]:
            creator = ipcraft.queue(url(tmp), create=True)
            try:
                opener = ipcraft.queue(str(creator.endpoint))  # udp://...:0 resolved to the bound port
            except BaseException:
                creator.close()
                raise
            return (creator, opener) if creator_sends else (opener, creator)
        return make
    return factory


CONN = {"eof": True, "duplex": True}
QUEUE = {"eof": False}
CASES = [
    Case("pipe-duplex", None, _pipe(True), CONN),
    Case("pipe-simplex", None, _pipe(False), {"eof": True}),
    Case("unix-path", "unix", _connection(lambda d: f"unix://{d}/{unique_name('u')}"), CONN),
    Case("unix-abstract", "unix", _connection(lambda d: f"unix:@{unique_name('a')}"), CONN),
    Case("unix+seqpacket", "unix+seqpacket",
         _connection(lambda d: f"unix+seqpacket://{d}/{unique_name('q')}"), CONN),
    Case("tcp", "tcp", _connection(lambda d: "tcp://127.0.0.1:0", authkey=AUTHKEY), CONN),
    Case("shm", "shm", _connection(lambda d: f"shm://{unique_name('shm')}"), CONN),
    Case("fifo", "fifo", _queue(lambda d: f"fifo://{d}/{unique_name('f')}"), QUEUE),
    Case("unix+dgram", "unix+dgram", _queue(lambda d: f"unix+dgram://{d}/{unique_name('d')}"), QUEUE),
    Case("udp", "udp", _queue(lambda d: "udp://127.0.0.1:0"), {"eof": False, "lossy": True}),
    Case("mq", "mq", _queue(lambda d: f"mq://{unique_name('mq')}"), QUEUE),
    Case("mq-creator-sends", "mq", _queue(lambda d: f"mq://{unique_name('mq')}", True), QUEUE),
    Case("sysvmq", "sysvmq", _queue(lambda d: f"sysvmq://{unique_key()}"), {"eof": False, "selectable": False}),
    Case("sysvmq-creator-sends", "sysvmq", _queue(lambda d: f"sysvmq://{unique_key()}", True),
         {"eof": False, "selectable": False}),
    Case("ring", "ring", _queue(lambda d: f"ring://{unique_name('r')}"), QUEUE),
    Case("ring-creator-sends", "ring", _queue(lambda d: f"ring://{unique_name('r')}", True), QUEUE),
    Case("file", "file", _queue(lambda d: f"file://{d}/{unique_name('fq')}"), QUEUE),
    Case("file-creator-sends", "file", _queue(lambda d: f"file://{d}/{unique_name('fq')}", True), QUEUE),
]


def _available(case: Case) -> None:
    if case.scheme is not None:
        try:
            module_for(case.scheme)
        except NotImplementedError as exc:
            pytest.skip(str(exc))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_conformance(case: Case, check: str, tmp_ipc_dir: str) -> None:
    """Each scheme passes each conformance check that applies to its capabilities."""
    _available(case)
    if not CHECKS[check][1](Capabilities(**case.caps)):
        pytest.skip(f"{check} does not apply to {case.id}")
    check_channel(case.factory(tmp_ipc_dir), checks=[check], **case.caps)


@pytest.mark.timeout(120)
def test_check_channel_runs_every_check_over_a_pipe() -> None:
    """check_channel() with no selection runs the whole suite (here over ipcraft.pipe())."""
    seen: list[str] = []
    original = dict(CHECKS)
    try:
        for name, (fn, applies) in original.items():
            CHECKS[name] = (lambda mp, caps, fn=fn, name=name: (seen.append(name), fn(mp, caps))[1], applies)
        check_channel(lambda: ipcraft.pipe(), eof=True, duplex=True)
    finally:
        CHECKS.clear()
        CHECKS.update(original)
    assert seen == [n for n, (_, applies) in original.items() if applies(Capabilities(eof=True, duplex=True))]


def test_check_channel_reports_a_broken_contract() -> None:
    """A channel that does not behave as its capabilities claim fails with the check's name."""
    with pytest.raises(AssertionError, match="queue_has_no_end"):
        check_channel(lambda: ipcraft.pipe(), checks=["queue_has_no_end"], eof=False)


def test_check_channel_refuses_unknown_capabilities() -> None:
    """A misspelt capability is a TypeError, not silently ignored."""
    with pytest.raises(TypeError):
        check_channel(lambda: ipcraft.pipe(), eof=True, duplx=True)
