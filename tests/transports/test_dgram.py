"""unix+dgram:// and udp://: datagram queues with a receiving owner, size limits, sender facts."""

from __future__ import annotations

import io
import os
import stat
from typing import Any

import pytest

import ipcraft
from ipcraft._framing import HEADER_SIZE
from ipcraft.errors import AuthenticationError, InvalidEndpoint, MessageTooLarge, PeerVanished, Timeout
from ipcraft.testing import Child, unique_name


@pytest.fixture()
def unix_url(tmp_ipc_dir: str) -> str:
    return f"unix+dgram://{tmp_ipc_dir}/{unique_name('dg')}"


def _send_all(url: str, items: list[Any], **opts: Any) -> int:
    with ipcraft.queue(url, **opts) as q:
        for item in items:
            q.send(item)
    return os.getpid()


def test_unix_dgram_round_trip_from_a_child_reports_the_sender(unix_url: str) -> None:
    """A child's messages arrive whole and in order; last_meta names the sender's pid and uid."""
    with ipcraft.queue(unix_url, create=True) as q:
        assert q.owner and q.authenticated
        items = [{"i": i, "blob": b"b" * (i * 1000)} for i in range(20)]
        child = Child(_send_all, unix_url, items)
        got = [q.recv(timeout=10) for _ in items]
        pid = child.result(20)
        assert got == items
        assert q.last_meta["pid"] == pid and q.last_meta["uid"] == os.geteuid()


def test_unix_dgram_socket_file_is_owner_only_and_removed_on_close(unix_url: str) -> None:
    """The receiver binds its socket file with mode 0600 and removes it on close; senders then see
    PeerVanished."""
    path = unix_url.removeprefix("unix+dgram://")
    q = ipcraft.queue(unix_url, create=True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    sender = ipcraft.queue(unix_url)
    assert not sender.owner and sender.authenticated
    sender.send(1)
    assert q.recv(timeout=5) == 1
    q.close()
    assert not os.path.exists(path)
    with pytest.raises(PeerVanished, match="nothing receives there"):
        sender.send(2)
    sender.close()


def test_create_is_exclusive_and_if_missing_falls_back_to_sending(unix_url: str) -> None:
    """create=True on a live receiver is FileExistsError; "if_missing" then opens a sender; a missing
    queue opened to send is FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        ipcraft.queue(unix_url)
    with ipcraft.queue(unix_url, create="if_missing") as q:
        assert q.owner
        with pytest.raises(FileExistsError):
            ipcraft.queue(unix_url, create=True)
        with ipcraft.queue(unix_url, create="if_missing") as s:
            assert not s.owner
            s.send("x")
        assert q.recv(timeout=5) == "x"


def test_roles_are_one_way(unix_url: str) -> None:
    """The receiver cannot send and a sender cannot receive: io.UnsupportedOperation naming the role."""
    with ipcraft.queue(unix_url, create=True) as q, ipcraft.queue(unix_url) as s:
        with pytest.raises(io.UnsupportedOperation, match="only receives"):
            q.send(1)
        with pytest.raises(io.UnsupportedOperation, match="only sends"):
            s.recv(timeout=0)


def _sizes_up_to_the_limit(receiver: Any, sender: Any) -> None:
    limit = sender._transport.max_payload - HEADER_SIZE
    for n in (0, 1, 4096, 65536 - HEADER_SIZE - 100, limit):
        if n > limit:
            continue
        data = os.urandom(n)
        sender.send_bytes(data)
        assert receiver.recv_bytes(timeout=5) == data
    with pytest.raises(MessageTooLarge) as info:
        sender.send_bytes(b"\0" * (limit + 1))
    assert info.value.limit == limit and info.value.size == limit + 1
    sender.send_bytes(b"still usable")
    assert receiver.recv_bytes(timeout=5) == b"still usable"
    with pytest.raises(Timeout):
        receiver.recv_bytes(timeout=0.05)  # nothing of the refused message arrived


def test_unix_dgram_carries_messages_up_to_the_send_buffer_limit_and_refuses_larger(unix_url: str) -> None:
    """Messages up to max_payload (SO_SNDBUF raised toward wmem_max) pass whole; one byte more is
    MessageTooLarge naming the limit, and the queue stays usable."""
    with ipcraft.queue(unix_url, create=True) as q, ipcraft.queue(unix_url) as s:
        assert s._transport.max_payload > 1_000_000
        assert "wmem_max" in s._transport.limit_source
        _sizes_up_to_the_limit(q, s)


def test_udp_carries_65499_byte_payloads_and_refuses_larger() -> None:
    """udp:// carries up to 65507 bytes per datagram (65499 after the frame header); more is
    MessageTooLarge."""
    with ipcraft.queue("udp://127.0.0.1:0", create=True) as q:
        url = str(q.extra("endpoint"))
        assert not url.endswith(":0")
        with ipcraft.queue(url) as s:
            assert s._transport.max_payload == 65507
            _sizes_up_to_the_limit(q, s)


def test_udp_round_trip_from_a_child_with_port_zero_and_sender_address() -> None:
    """A receiver bound to port 0 reports its endpoint; a child's datagrams arrive with its address."""
    with ipcraft.queue("udp://127.0.0.1:0", create=True) as q:
        assert q.owner and not q.authenticated
        ep = q.extra("endpoint")
        child = Child(_send_all, str(ep), ["a", "b", "c"])
        got = [q.recv(timeout=10) for _ in range(3)]
        child.result(20)
        assert got == ["a", "b", "c"]
        assert q.last_meta["address"][0] == "127.0.0.1"


def test_udp_refuses_pickle_and_insecure_false() -> None:
    """udp:// is never authenticated: serializer=pickle is AuthenticationError, insecure=False is
    InvalidEndpoint."""
    with pytest.raises(AuthenticationError, match="pickle"):
        ipcraft.queue("udp://127.0.0.1:0", create=True, serializer="pickle")
    with pytest.raises(InvalidEndpoint, match="cannot authenticate"):
        ipcraft.queue("udp://127.0.0.1:0", create=True, insecure=False)


def test_udp_send_to_nobody_eventually_raises_peer_vanished_and_stays_usable() -> None:
    """Datagrams to a port nobody binds are lost; once ICMP says so, send raises PeerVanished and the
    sender keeps working."""
    with ipcraft.queue("udp://127.0.0.1:0", create=True) as q:
        url = str(q.extra("endpoint"))
    with ipcraft.queue(url) as s:
        errors = 0
        for i in range(4):
            try:
                s.send(i)
            except PeerVanished:
                errors += 1
        assert errors >= 1


def _send_as_nobody(url: str) -> str:
    os.setgid(65534)
    os.setuid(65534)
    with ipcraft.queue(url) as s:
        s.send("from nobody")
    return "sent"


def test_unix_dgram_refuses_messages_from_another_uid(tmp_ipc_dir: str) -> None:
    """With the socket opened to everyone (mode=666), a message from uid nobody is refused with
    AuthenticationError unread; the queue then still receives this uid's messages, and allowed_uids
    admits nobody."""
    os.chmod(tmp_ipc_dir, 0o755)
    url = f"unix+dgram://{tmp_ipc_dir}/{unique_name('dg')}"
    with ipcraft.queue(url, create=True, mode=0o666) as q:
        assert Child(_send_as_nobody, url).result(20) == "sent"
        with pytest.raises(AuthenticationError, match="uid 65534"):
            q.recv(timeout=5)
        assert q.last_meta["uid"] == 65534
        with ipcraft.queue(url) as s:
            s.send("mine")
        assert q.recv(timeout=5) == "mine"
    with ipcraft.queue(url, create=True, mode=0o666, allowed_uids="65534") as q:
        assert Child(_send_as_nobody, url).result(20) == "sent"
        assert q.recv(timeout=5) == "from nobody"


def test_abstract_unix_dgram_queue_round_trip() -> None:
    """An abstract name (unix+dgram:@name) works without a file; its senders are not authenticated."""
    url = f"unix+dgram:@{unique_name('dg')}"
    with ipcraft.queue(url, create=True) as q, ipcraft.queue(url) as s:
        assert not s.authenticated
        s.send([1, 2])
        assert q.recv(timeout=5) == [1, 2]


def test_unix_dgram_sender_follows_a_restarted_receiver(unix_url: str) -> None:
    """A sender opened before the receiver was replaced reconnects to the new one at the same path."""
    q = ipcraft.queue(unix_url, create=True)
    with ipcraft.queue(unix_url) as s:
        q.close()
        with ipcraft.queue(unix_url, create=True) as q2:
            s.send("after restart")
            assert q2.recv(timeout=5) == "after restart"


def test_a_forked_copy_of_the_receiver_closing_leaves_the_socket_file(unix_url: str) -> None:
    """A child that inherited the receiving handle and closes it does not remove the parent's socket file."""
    path = unix_url.removeprefix("unix+dgram://")
    with ipcraft.queue(unix_url, create=True) as q:
        Child(q.close).result(20)
        assert os.path.exists(path)
        with ipcraft.queue(unix_url) as s:
            s.send("still here")
        assert q.recv(timeout=5) == "still here"
    assert not os.path.exists(path)
