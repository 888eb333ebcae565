"""The facade: connect, listen, queue and pipe turn a URL into a Channel, Listener or Queue."""

from __future__ import annotations

from typing import Any

from . import _framing
from ._channel import Channel, Listener, Queue
from ._endpoint import Endpoint
from ._transports import module_for
from ._transports._sockets import Steps, run
from ._wait import deadline_after
from .errors import InvalidEndpoint
from .serializers import MSGPACK, RAW, Serializer, by_name


def _channel_options(ep: Endpoint) -> dict[str, Any]:
    return {
        "serializer": ep.options.get("serializer", MSGPACK if ep.framing == "ipcraft" else RAW),
        "max_message_size": ep.options.get("max_message_size", _framing.DEFAULT_MAX_MESSAGE_SIZE),
        "framing": ep.framing,
    }


def _endpoint(url: str | Endpoint, family: str, verb: str, opts: dict[str, Any]) -> Endpoint:
    ep = Endpoint.parse(url, **opts)
    if not ep.info.serves(family):
        hint = {"queue": "ipcraft.queue()", "pubsub": "ipcraft.publish()/subscribe()"}.get(
            ep.info.family, "ipcraft.connect()/listen()")
        raise InvalidEndpoint(f"{ep.scheme}:// is a {ep.info.family} scheme; {verb}() does not take it "
                              f"(use {hint})")
    ep.check_framing()
    return ep


def connect(url: str | Endpoint, timeout: float | None = None, **options: Any) -> Channel[Any]:
    """Connect to a listener and return a duplex :class:`Channel`.

    ``url`` names a connection scheme: ``unix:///path``, ``unix:@name``, ``unix+seqpacket:///path``,
    ``tcp://host:port``, ``shm://name``.  Keyword ``options`` override those in the URL
    (``serializer=``, ``max_message_size=``, ``authkey=`` ...).  ``timeout`` bounds the connection and
    its handshake.

    Raises:
        InvalidEndpoint: a malformed URL, an unknown option, a queue scheme.
        FileNotFoundError / ConnectionRefusedError: nobody listens there.
        AuthenticationError: the credential policy or the authkey handshake refused.
        Timeout: the listener did not answer in time.

    .. versionadded:: 0.1
    """
    return run(connect_steps(url, timeout, **options))


def connect_steps(url: str | Endpoint, timeout: float | None = None, **options: Any) -> Steps[Channel[Any]]:
    """:func:`connect` as resumable handshake steps, for a driver that waits elsewhere (asyncio)."""
    ep = _endpoint(url, "connection", "connect", options)
    transport = yield from module_for(ep.scheme).connect_steps(ep, deadline_after(timeout))
    try:
        return Channel._create(transport, ep, **_channel_options(ep))  # type: ignore[no-any-return]
    except BaseException:
        transport.close()
        raise


def listen(url: str | Endpoint, **options: Any) -> Listener[Any]:
    """Bind ``url`` and return a :class:`Listener`; ``accept()`` yields a Channel per client.

    Named things are created owner-only (mode 0600) unless ``mode=`` says otherwise, and only peers of
    this uid (or ``allowed_uids=``) are accepted on Unix sockets.  TCP requires ``authkey=`` unless
    ``insecure=True``.

    .. versionadded:: 0.1
    """
    ep = _endpoint(url, "connection", "listen", options)
    impl = module_for(ep.scheme).listen(ep)
    return Listener._create(impl, ep, _channel_options(ep))  # type: ignore[no-any-return]


def queue(url: str | Endpoint, create: bool | str = False, **options: Any) -> Queue[Any]:
    """Open (or with ``create=True`` create) a many-to-many :class:`Queue`.

    ``create=True`` creates the named object exclusively (FileExistsError if it exists) and makes this
    handle its owner, which removes it on close(); ``create="if_missing"`` creates it only if absent;
    ``create=False`` opens an existing one.  For ``fifo://``, ``unix+dgram://`` and ``udp://`` the
    creating side is the one that receives.

    .. versionadded:: 0.1
    """
    if create not in (True, False, "if_missing"):
        raise ValueError(f"create is True, False or 'if_missing', not {create!r}")
    ep = _endpoint(url, "queue", "queue", options)
    transport = module_for(ep.scheme).open_queue(ep, create)
    bound = getattr(transport, "endpoint", None)  # e.g. udp://host:0 with the port the kernel chose
    return Queue._create(transport, bound or ep, **_channel_options(ep))  # type: ignore[no-any-return]


def pipe(duplex: bool = True, *, serializer: str | Serializer | None = None,
         max_message_size: int = _framing.DEFAULT_MAX_MESSAGE_SIZE,
         framing: str = "ipcraft") -> tuple[Channel[Any], Channel[Any]]:
    """Two connected channels for a parent and the children it forks, like ``multiprocessing.Pipe``.

    With ``duplex=True`` both ends send and receive (a Unix socketpair).  With ``duplex=False`` it
    returns ``(reader, writer)`` over an anonymous pipe whose capacity is raised to 1 MiB.
    ``framing="lines"`` or ``"length"`` puts raw bytes on the pipe instead of ipcraft's frames, for a
    child that is not Python (the serializer is then raw, the default msgpack otherwise).

    Raises:
        InvalidEndpoint: a framing other than ipcraft, lines or length, or a serializer other than
            raw with a raw framing.

    .. versionadded:: 0.1
    """
    from ._transports.pipe import pipe_pair

    if framing not in ("ipcraft", "lines", "length"):
        raise InvalidEndpoint(f"a pipe takes framing=ipcraft, lines or length, not {framing!r}")
    chosen = by_name(serializer if serializer is not None else (MSGPACK if framing == "ipcraft" else RAW))
    if framing != "ipcraft" and chosen.id != 0:
        raise InvalidEndpoint(f"framing={framing} carries raw bytes only; serializer={chosen.name} needs "
                              "framing=ipcraft")
    a, b = pipe_pair(duplex)
    opts = {"serializer": chosen, "max_message_size": max_message_size, "framing": framing}
    return Channel._create(a, None, **opts), Channel._create(b, None, **opts)
