"""Endpoint words for send/recv/relay, and how a received message is shown.

An endpoint argument is a URL, optionally prefixed:

* ``URL`` of a connection scheme (unix://, unix+seqpacket://, tcp://, shm://): connect to a listener.
* ``listen:URL``: listen there, accept one peer, and stop listening (the socket file is removed).
* ``URL`` of a queue scheme (mq://, sysvmq://, fifo://, ...): open the existing queue.
* ``create:URL``: create the queue, and remove it when the command ends.
* ``publish:URL`` / ``subscribe:URL``: a publisher or a subscriber (zmq+tcp://, zmq+ipc://).

The commands go through the public facade (ipcraft.connect / listen / queue) only, so every scheme
the library has works here, including those added later.
"""

from __future__ import annotations

import json
from typing import Any

import click

from .. import Channel, Endpoint, Publisher, Queue, Subscriber, connect, listen, publish, queue, subscribe

Handle = Channel[Any] | Queue[Any] | Publisher[Any] | Subscriber[Any]

ENDPOINT_HELP = """\b
Endpoints:
  URL           connect to a listener: unix:///run/app.sock, unix:@name,
                unix+seqpacket://..., tcp://host:port, shm://name ...
                or open an existing queue: mq://name, sysvmq://1234, fifo:///path ...
  listen:URL    listen at URL, accept one peer, then stop listening
  create:URL    create the queue at URL; it is removed when the command ends
                (zmq+tcp://, zmq+ipc://: bind a PULL queue there, or PUSH with ?role=push)
  publish:URL   publish there (zmq+tcp://, zmq+ipc://: bind a PUB socket)
  subscribe:URL subscribe there (?topic=prefix)
"""


#: The --framing choice of send, recv and relay (the endpoint's ``framing=`` option).
FRAMING_CHOICE = click.Choice(["ipcraft", "none", "lines", "length"])
FRAMING_HELP = ("How messages are delimited on the wire: ipcraft (its frames, the default); none (one "
                "message per kernel message or datagram: mq, sysvmq, unix+dgram, unix+seqpacket, udp); "
                "lines or length (a 4-byte big-endian length prefix) on byte streams (unix, tcp), to talk "
                "to socat or C programs.  Same as ?framing= in the URL.")


def open_endpoint(spec: str, timeout: float | None, framing: str | None = None) -> Handle:
    """Open the endpoint ``spec`` (see the module docstring); ``timeout`` bounds connect and accept,
    ``framing`` (if given) is the endpoint's ``framing=`` option.

    Raises:
        click.BadParameter: a prefix that does not fit the scheme's family.
        and what ipcraft.connect / listen / queue raise.
    """
    prefix, sep, rest = spec.partition(":")
    mode = prefix if sep and prefix in ("listen", "create", "publish", "subscribe") else "open"
    url = rest if mode != "open" else spec
    info = Endpoint.parse(url).info
    family = info.family
    if mode == "listen" and not info.serves("connection"):
        raise click.BadParameter(f"{url!r} is a queue: use create:{url} to create it, or {url} to open it")
    if mode == "create" and not info.serves("queue"):
        raise click.BadParameter(f"{url!r} is a connection scheme: use listen:{url} to wait for a peer, "
                                 f"or {url} to connect")
    if mode in ("publish", "subscribe"):
        if not info.serves("pubsub"):
            raise click.BadParameter(f"{url!r} has no publish/subscribe")
        return publish(url) if mode == "publish" else subscribe(url)
    opts: dict[str, Any] = {} if framing is None else {"framing": framing}
    if mode == "listen":
        with listen(url, **opts) as listener:
            channel: Channel[Any] = listener.accept(timeout=timeout)
            return channel
    if mode == "create":
        return queue(url, create=True, **opts)
    if family == "queue":
        return queue(url, **opts)
    return connect(url, timeout=timeout, **opts)


def show(obj: Any) -> str:
    """A received message on one line: printable text as is, anything else escaped unambiguously.

    Bytes that are printable UTF-8 are printed as text; other bytes as a Python literal (``b'\\x00'``).
    Strings with control characters, and other objects, are printed as JSON (repr() if not JSON).
    """
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return repr(data)
        return text if _printable(text) else repr(data)
    if isinstance(obj, str) and _printable(obj):
        return obj
    try:
        return json.dumps(obj, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(obj)


def _printable(text: str) -> bool:
    return all(ch.isprintable() or ch == "\t" for ch in text)
