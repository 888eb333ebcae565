"""Listeners of every connection scheme, their good clients, and hostile peers that are bare sockets
(they do not import ipcraft), for the handshake, load and fuzz tests."""

from __future__ import annotations

import socket
from typing import Any

import ipcraft
from ipcraft.testing import unique_name

KEY = b"handshake-test-key"
SCHEMES = ["unix", "unix+seqpacket", "tcp", "shm"]


def listen_args(scheme: str, **opts: Any) -> tuple[str, dict[str, Any]]:
    """The URL and options of a listener of ``scheme`` on a fresh address (tcp:// with an authkey)."""
    if scheme == "tcp":
        return "tcp://127.0.0.1:0", {"authkey": KEY, **opts}
    if scheme == "shm":
        return f"shm://{unique_name('hs')}", opts
    return f"{scheme}:@{unique_name('hs')}", opts


def listen(scheme: str, **opts: Any) -> Any:
    url, kw = listen_args(scheme, **opts)
    return ipcraft.listen(url, **kw)


def client_url(listener: Any) -> tuple[str, dict[str, Any]]:
    """The URL and options a good client of ``listener`` connects with."""
    ep = listener.endpoint
    if ep.scheme == "tcp":
        host, port = ep.host_port
        return f"tcp://{host}:{port}", {"authkey": KEY}
    return f"{ep.scheme}:{'//' if ep.scheme == 'shm' else ''}{ep.address}", {}


def raw_connect(listener: Any) -> socket.socket:
    """A bare socket connected to ``listener`` that will never say a word."""
    ep = listener.endpoint
    if ep.scheme == "tcp":
        return socket.create_connection(ep.host_port, timeout=10)
    kind = socket.SOCK_SEQPACKET if ep.scheme == "unix+seqpacket" else socket.SOCK_STREAM
    s = socket.socket(socket.AF_UNIX, kind)
    name = f"ipcraft-shm.{ep.address}" if ep.scheme == "shm" else ep.address[1:]
    s.connect(b"\0" + name.encode())
    return s
