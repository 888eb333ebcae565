"""tcp://: the authkey handshake, pickle refusal on unauthenticated peers, TLS, peers that die."""

from __future__ import annotations

import os
import pickle
import select
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from typing import Any

import pytest

import ipcraft
from ipcraft._auth import Handshake
from ipcraft._framing import header
from ipcraft.errors import AuthenticationError, InvalidEndpoint, PeerVanished, Timeout
from ipcraft.testing import Child

KEY = b"test-secret"
LOCAL = "tcp://127.0.0.1:0"


def _client_roundtrip(url: str, **opts: Any) -> Any:
    with ipcraft.connect(url, timeout=10, **opts) as ch:
        ch.send({"n": 1, "blob": b"x" * 100_000})
        return ch.recv(timeout=10), ch.authenticated, ch.peer.address


def _accept_in_thread(listener: Any, timeout: float = 10) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(listener.accept(timeout=timeout))
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            box.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, box


def test_port_zero_listener_endpoint_is_the_bound_url_and_round_trips_across_processes() -> None:
    """listen(port 0) reports the real port; a child connects with the authkey and both are authenticated."""
    with ipcraft.listen(LOCAL, authkey=KEY) as listener:
        host, port = listener.endpoint.host_port
        assert port != 0 and host == "127.0.0.1"
        assert str(listener.endpoint) == f"tcp://127.0.0.1:{port}"  # no secret in the URL
        child = Child(_client_roundtrip, str(listener.endpoint), authkey=KEY)
        with listener.accept(timeout=10) as ch:
            assert ch.authenticated
            assert ch.peer.address[0] == "127.0.0.1"
            msg = ch.recv(timeout=10)
            ch.send(msg["n"] + 1)
        echoed, authenticated, addr = child.result(20)
        assert echoed == 2 and authenticated and addr == ("127.0.0.1", port)


@pytest.mark.parametrize("verb", ["listen", "connect"])
def test_neither_authkey_nor_insecure_is_refused_with_an_explanation(verb: str) -> None:
    """tcp:// without authkey= or insecure=True raises InvalidEndpoint explaining the choice."""
    with pytest.raises(InvalidEndpoint, match="authkey=.*insecure=True"):
        getattr(ipcraft, verb)("tcp://127.0.0.1:1")
    with pytest.raises(InvalidEndpoint, match="not both"):
        getattr(ipcraft, verb)("tcp://127.0.0.1:1", authkey=KEY, insecure=True)
    with pytest.raises(InvalidEndpoint, match="non-empty bytes"):
        getattr(ipcraft, verb)("tcp://127.0.0.1:1", authkey="text")


def test_insecure_channel_works_but_is_not_authenticated() -> None:
    """insecure=True on both sides carries msgpack; the channel reports authenticated=False."""
    with ipcraft.listen(LOCAL, insecure=True) as listener:
        child = Child(_client_roundtrip, str(listener.endpoint), insecure=True)
        with listener.accept(timeout=10) as ch:
            assert not ch.authenticated
            ch.send(ch.recv(timeout=10)["n"])
        assert child.result(20)[:2] == (1, False)


@pytest.mark.parametrize("verb", ["listen", "connect"])
def test_pickle_is_refused_on_an_insecure_endpoint(verb: str) -> None:
    """serializer=pickle with insecure=True raises AuthenticationError before any connection."""
    with pytest.raises(AuthenticationError, match="pickle"):
        getattr(ipcraft, verb)("tcp://127.0.0.1:1", insecure=True, serializer="pickle")


def test_pickle_frame_from_an_unauthenticated_peer_is_never_unpickled(tmp_ipc_dir: str) -> None:
    """A raw peer's pickle frame whose loading would create a file is refused and the file never appears."""
    marker = os.path.join(tmp_ipc_dir, "pwned")

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (marker, "w"))

    payload = pickle.dumps(Exploit())
    with ipcraft.listen(LOCAL, insecure=True) as listener:
        raw = socket.create_connection(listener.endpoint.host_port, timeout=10)
        hs = Handshake(None, "client")
        raw.sendall(hs.hello())
        with listener.accept(timeout=10) as ch:
            hs.receive_hello(_recv_exact(raw, 41))
            raw.sendall(header(1, len(payload)) + payload)  # serializer id 1 = pickle
            raw.sendall(header(0, 2) + b"ok")
            with pytest.raises(AuthenticationError, match="unauthenticated"):
                ch.recv(timeout=10)
            assert ch.recv(timeout=10) == b"ok"  # the channel is still usable
        raw.close()
    assert not os.path.exists(marker)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "the server closed during the handshake"
        data += chunk
    return data


def _connect_expecting_failure(url: str, **opts: Any) -> str:
    try:
        ipcraft.connect(url, timeout=10, **opts).close()
    except Exception as exc:  # noqa: BLE001 - the type travels back to the parent
        return type(exc).__name__
    return "connected"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("client_opts", [{"insecure": True}, {"authkey": b"wrong key"}],
                         ids=["mismatch", "wrong-key"])
def test_bad_client_fails_on_both_sides_at_once_and_the_listener_keeps_serving(client_opts: dict) -> None:
    """A client without the key, or with a wrong one, gets AuthenticationError; the listener counts the
    refusal (AuthenticationError too) and accepts the next, good client.  Neither waits for the 30 s
    handshake_timeout (the test's own timeout is 20 s)."""
    with ipcraft.listen(LOCAL, authkey=KEY, handshake_timeout=30) as listener:
        url = str(listener.endpoint)
        bad = Child(_connect_expecting_failure, url, handshake_timeout=30, **client_opts)
        with pytest.raises(Timeout):
            listener.accept(timeout=1.5)  # serves (and refuses) the bad client meanwhile
        assert bad.result(15) == "AuthenticationError"
        good = Child(_client_roundtrip, url, authkey=KEY)
        with listener.accept(timeout=15) as ch:
            ch.send(ch.recv(timeout=10)["n"])
        assert good.result(15)[0] == 1
        impl = listener._impl
        assert impl.refused == 1 and impl.last_refusal.startswith("AuthenticationError")


@pytest.mark.timeout(20)
def test_server_without_key_and_client_with_one_fails_on_the_client_too() -> None:
    """The mismatch the other way round (insecure server, keyed client) is an AuthenticationError."""
    with ipcraft.listen(LOCAL, insecure=True, handshake_timeout=30) as listener:
        host, port = listener.endpoint.host_port  # str(endpoint) would carry insecure=true along
        bad = Child(_connect_expecting_failure, f"tcp://{host}:{port}", authkey=KEY)
        with pytest.raises(Timeout):
            listener.accept(timeout=1)
        assert bad.result(15) == "AuthenticationError"
        assert listener._impl.refused == 1


def test_silent_client_is_dropped_after_handshake_timeout_and_does_not_delay_the_next() -> None:
    """A client that never sends its hello does not hold up the next one (served at once), and is
    dropped once its handshake_timeout passes, counted in refused."""
    with ipcraft.listen(LOCAL, authkey=KEY, handshake_timeout=0.3) as listener:
        silent = socket.create_connection(listener.endpoint.host_port, timeout=10)
        good = Child(_client_roundtrip, str(listener.endpoint), authkey=KEY, handshake_timeout=10)
        with listener.accept(timeout=15) as ch:
            ch.send(ch.recv(timeout=10)["n"])
        assert good.result(15)[0] == 1
        with pytest.raises(Timeout):
            listener.accept(timeout=1)  # the silent client's 0.3 s run out meanwhile
        assert listener._impl.refused == 1 and "Timeout" in listener._impl.last_refusal
        silent.settimeout(5)
        got = b""
        while chunk := silent.recv(64):  # the server's hello, then the end of the dropped connection
            got += chunk
        assert got.startswith(b"IPCRAFT") and len(got) == 41
        silent.close()


def test_connecting_to_a_silent_server_times_out_within_handshake_timeout() -> None:
    """A server that accepts but never answers makes connect() raise Timeout after handshake_timeout."""
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        port = srv.getsockname()[1]
        with pytest.raises(Timeout, match="handshake"):
            ipcraft.connect(f"tcp://127.0.0.1:{port}", authkey=KEY, handshake_timeout=0.3)
    finally:
        srv.close()


def _send_huge_then_hang(url: str) -> None:
    ch = ipcraft.connect(url, authkey=KEY, timeout=10)
    ch.send_bytes(b"ready")
    ch.send_bytes(b"\0" * (256 * 1024 * 1024 - 64))  # blocks: nobody reads past the socket buffers


@pytest.mark.timeout(30)
def test_peer_sigkilled_mid_message_raises_peer_vanished_without_hanging() -> None:
    """A peer killed while its message is half-sent makes recv() raise PeerVanished (no hang)."""
    with ipcraft.listen(LOCAL, authkey=KEY) as listener:
        child = Child(_send_huge_then_hang, str(listener.endpoint))
        with listener.accept(timeout=10) as ch:
            assert ch.recv_bytes(timeout=10) == b"ready"
            assert select.select([ch], [], [], 10)[0]  # bytes of the huge frame are arriving
            time.sleep(0.05)
            child.kill(signal.SIGKILL)
            child.wait()
            with pytest.raises(PeerVanished):
                ch.recv_bytes(timeout=20)


def _self_signed(tmp: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1/localhost and its key, written to ``tmp``."""
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available to make a "
                        "self-signed certificate")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", key, "-out", cert,
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
        return cert, key
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    crt = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pkey.public_key())
           .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
           .not_valid_after(now + datetime.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                          critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(pkey, hashes.SHA256()))
    with open(cert, "wb") as f:
        f.write(crt.public_bytes(serialization.Encoding.PEM))
    with open(key, "wb") as f:
        f.write(pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return cert, key


def _tls_client(url: str, cafile: str | None) -> Any:
    ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    try:
        with ipcraft.connect(url, timeout=10, authkey=KEY, ssl_context=ctx, server_hostname="localhost") as ch:
            ch.send(b"\1" * 200_000)
            return ch.recv(timeout=10), ch.authenticated
    except AuthenticationError as exc:
        return f"AuthenticationError: {exc}"


@pytest.mark.timeout(30)
def test_tls_round_trip_with_a_self_signed_certificate_and_refusal_of_an_untrusted_one(tmp_ipc_dir: str) -> None:
    """With ssl_context= on both sides the channel runs over TLS; a client not trusting the certificate
    gets AuthenticationError and the listener goes on serving."""
    cert, key = _self_signed(tmp_ipc_dir)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    with ipcraft.listen(LOCAL, authkey=KEY, ssl_context=server_ctx) as listener:
        url = str(listener.endpoint)
        untrusting = Child(_tls_client, url, None)
        with pytest.raises(Timeout):
            listener.accept(timeout=1.5)  # serves (and refuses) the untrusting client meanwhile
        assert untrusting.result(20).startswith("AuthenticationError: the TLS handshake")
        assert listener._impl.refused == 1
        trusting = Child(_tls_client, url, cert)
        with listener.accept(timeout=15) as ch:
            assert isinstance(ch._transport.sock, ssl.SSLSocket) and ch.authenticated
            data = ch.recv(timeout=10)
            ch.send(len(data))
        assert trusting.result(20)[0] == 200_000


@pytest.mark.timeout(30)
def test_tls_handshakes_run_beside_silent_clients_and_on_the_aio_loop(tmp_ipc_dir: str) -> None:
    """Three connections that never send a TLS hello do not delay a TLS client, which connects with
    ipcraft.aio (its TLS and authkey handshakes on the loop) while the listener serves in a thread."""
    import asyncio

    import ipcraft.aio

    cert, key = _self_signed(tmp_ipc_dir)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    with ipcraft.listen(LOCAL, authkey=KEY, ssl_context=server_ctx, handshake_timeout=10) as listener:
        silent = [socket.create_connection(listener.endpoint.host_port, timeout=10) for _ in range(3)]
        with pytest.raises(Timeout):
            listener.accept(timeout=0.2)  # the silent ones are pending
        host, port = listener.endpoint.host_port
        t, box = _accept_in_thread(listener)

        async def client() -> tuple[Any, float]:
            start = time.monotonic()
            ch = await ipcraft.aio.connect(f"tcp://{host}:{port}", timeout=10, authkey=KEY, ssl_context=client_ctx,
                                           server_hostname="localhost")
            took = time.monotonic() - start
            with ch:
                await ch.send("over tls")
                return await ch.recv(timeout=10), took

        reply_box: list[Any] = []
        reply = threading.Thread(target=lambda: reply_box.append(asyncio.run(client())))
        reply.start()
        t.join(15)
        with box[0] as server:
            assert isinstance(server._transport.sock, ssl.SSLSocket) and server.authenticated
            server.send(server.recv(timeout=10))
        reply.join(15)
        got, took = reply_box[0]
        assert got == "over tls"
        assert took < 1.0, f"the TLS client waited {took:.2f} s behind silent connections"
        for s in silent:
            s.close()


@pytest.mark.parametrize("nodelay", [True, False])
def test_tcp_nodelay_is_on_by_default_and_can_be_turned_off(nodelay: bool) -> None:
    """TCP_NODELAY is set on both ends unless nodelay=false."""
    opts = {} if nodelay else {"nodelay": False}
    with ipcraft.listen(LOCAL, insecure=True, **opts) as listener:
        t, box = _accept_in_thread(listener)
        with ipcraft.connect(str(listener.endpoint), timeout=10) as client:
            t.join(15)
            with box[0] as server:
                for ch in (client, server):
                    flag = ch._transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    assert bool(flag) is nodelay


def test_ipv6_loopback_listener_endpoint_keeps_brackets() -> None:
    """tcp://[::1]:0 binds IPv6 loopback; the resolved endpoint is tcp://[::1]:port and connectable."""
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        listener = ipcraft.listen("tcp://[::1]:0", authkey=KEY)
    except OSError as exc:
        pytest.skip(f"IPv6 loopback is not usable here: {exc}")
    with listener:
        url = str(listener.endpoint)
        assert url.startswith("tcp://[::1]:") and not url.endswith(":0")
        t, box = _accept_in_thread(listener)
        with ipcraft.connect(url, authkey=KEY, timeout=10) as client:
            t.join(15)
            with box[0] as server:
                client.send("v6")
                assert server.recv(timeout=5) == "v6"
                assert server.peer.address[0] == "::1"
