"""``ipcraft.publish(url)`` / ``ipcraft.subscribe(url)`` over ZeroMQ's PUB/SUB (zmq+tcp://, zmq+ipc://).

A :class:`Publisher` sends every message to each subscriber whose ``topic=`` prefix matches the
message's topic (the publisher's ``topic=``, or ``send(..., topic=...)``); a :class:`Subscriber`
receives them.  Both are the channel surface over one ZeroMQ socket: a publisher's receive methods
and a subscriber's send methods raise io.UnsupportedOperation.

What ZeroMQ does not give, they do not pretend: a subscriber has no end of stream (a publisher may
come back), so ``recv`` waits until a message or its timeout and iteration ends only when the
subscriber is closed; a message published before a subscription reached the publisher, or while a
subscriber is ``hwm=`` messages behind, is dropped, and nothing counts it.  ``Subscriber.last_meta``
holds the topic of the last message.

.. versionadded:: 0.2
"""

from __future__ import annotations

from typing import Any, TypeVar

from ._channel import _MessageIO
from ._connect import _channel_options
from ._endpoint import Endpoint
from ._transports import module_for
from .errors import InvalidEndpoint

T = TypeVar("T")

__all__ = ("Publisher", "Subscriber", "publish", "subscribe")


class Publisher(_MessageIO[T]):
    """The sending end of publish/subscribe, from :func:`ipcraft.publish`: ``send``, ``send_bytes``
    (both take ``topic=``), ``close``, ``with``.

    .. versionadded:: 0.2
    """

    _latch_eof = False


class Subscriber(_MessageIO[T]):
    """The receiving end of publish/subscribe, from :func:`ipcraft.subscribe`: ``recv``,
    ``recv_bytes``, ``recv_bytes_into``, ``poll``, ``fileno``, iteration, ``close``, ``with``.

    .. versionadded:: 0.2
    """

    _latch_eof = False


def _pubsub_endpoint(url: str | Endpoint, verb: str, options: dict[str, Any]) -> Endpoint:
    ep = Endpoint.parse(url, **options)
    if not ep.info.serves("pubsub"):
        raise InvalidEndpoint(f"{ep.scheme}:// has no publish/subscribe; {verb}() takes zmq+tcp:// or zmq+ipc://")
    return ep


def publish(url: str | Endpoint, create: bool | str = "if_missing", **options: Any) -> Publisher[Any]:
    """A :class:`Publisher` on ``url``: it binds there (``create=False``: connects to a subscriber
    that binds).  Options as for :func:`ipcraft.connect` of the scheme, plus ``topic=`` (default
    empty) and ``hwm=``.

    .. versionadded:: 0.2
    """
    ep = _pubsub_endpoint(url, "publish", options)
    transport = module_for(ep.scheme).open_publisher(ep, create is not False)
    return Publisher._create(transport, getattr(transport, "endpoint", ep),  # type: ignore[no-any-return]
                             **_channel_options(ep))


def subscribe(url: str | Endpoint, create: bool | str = False, **options: Any) -> Subscriber[Any]:
    """A :class:`Subscriber` to messages whose topic starts with ``topic=`` (default: all): it
    connects to ``url`` (``create=True``: binds, for publishers that connect).

    .. versionadded:: 0.2
    """
    ep = _pubsub_endpoint(url, "subscribe", options)
    transport = module_for(ep.scheme).open_subscriber(ep, create is not False)
    return Subscriber._create(transport, getattr(transport, "endpoint", ep),  # type: ignore[no-any-return]
                              **_channel_options(ep))

