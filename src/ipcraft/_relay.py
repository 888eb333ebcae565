"""``ipcraft.relay(a, b)``: move messages between two open handles until either side ends.

The library form of ``ipcraft relay``; typically a local channel or queue on one side and a
``zmq+tcp://`` one on the other, to expose a local mechanism to the network or feed a local ring from
a remote stream.

Decisions:

* **Frames, not objects.**  Each message moves as ipcraft's frame: its serializer id and payload bytes,
  so a relay between two handles of the same serializer never decodes anything (nor can it be made to
  run pickle).  Only when the two serializers differ is an object decoded with one and re-encoded with
  the other; bytes sent with ``send_bytes`` stay bytes.
* **Batches, and backpressure.**  A direction moves up to 256 messages a turn: it waits for one, takes
  the others that are ready at once (one pass over a ring, ``try_recv_many``) and sends them together
  where the destination can (``try_send_many``: one publication into a ring, one lock over a ZeroMQ
  socket), then one by one, each send waiting as long as the destination has no room.  It receives
  the next batch only after the previous one was sent, so the relay holds at most 256 messages per
  direction and never buffers without bound; a slow consumer slows the producer down to its pace
  (what the mechanisms below buffer is bounded by them: ring capacity, ZeroMQ's high-water mark ...).
* **A clean end.**  One thread per direction, each receiving with a short timeout so that it notices
  when the other direction ended.  The relay returns when either side's peer closes (ChannelClosed,
  PeerVanished) or ``stop`` is set; any other error is re-raised in the caller once both threads ended.
* **Directions.**  Messages move from ``a`` to ``b``, and back from ``b`` to ``a`` only when both are
  channels and ``one_way`` is False: a queue has no sides (the relay would read back what it wrote),
  a publisher only sends and a subscriber only receives.
"""

from __future__ import annotations

import threading
from time import monotonic
from typing import Any

from ._channel import Channel
from ._pubsub import Publisher, Subscriber
from ._wait import deadline_after
from .errors import ChannelClosed, Timeout

__all__ = ("relay",)

_TICK = 0.1  # how often a direction checks whether the other one has ended
_BATCH = 256  # the most messages a direction moves per turn
_STREAMING = 20e-6  # a message that came within this many seconds: a stream, worth waiting for the next


def relay(a: Any, b: Any, *, one_way: bool = False, stop: threading.Event | None = None) -> tuple[int, int]:
    """Move messages from ``a`` to ``b`` (and from ``b`` to ``a``) until either side ends.

    ``a`` and ``b`` are open handles: Channels, Queues, Publishers (destination only) or Subscribers
    (source only).  Returns the numbers of messages moved ``(a to b, b to a)``.  Setting ``stop``
    (a ``threading.Event``) ends the relay from another thread within a tenth of a second.  The
    handles stay open; closing them is the caller's.  Whatever a receive or send raises, other than
    the end of a peer (ChannelClosed, PeerVanished), is raised again.

    Raises:
        ValueError: no direction is possible (e.g. two publishers).

    .. versionadded:: 0.2
    """
    stop = stop or threading.Event()
    both = not one_way and isinstance(a, Channel) and isinstance(b, Channel)
    moves = [(a, b)] if _can_recv(a) and _can_send(b) else []
    if both and _can_recv(b) and _can_send(a):
        moves.append((b, a))
    if not moves:
        raise ValueError(f"relay(): messages cannot move from {a!r} to {b!r} (nor back)")
    counts = [0, 0]
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_pump, args=(src, dst, stop, errors, counts, int(src is b)), daemon=True,
                                name=f"ipcraft-relay-{i}") for i, (src, dst) in enumerate(moves)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(_TICK)
    finally:
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return counts[0], counts[1]


def _can_recv(h: Any) -> bool:
    return (hasattr(h, "_recv_frame") or hasattr(h, "_next")) and not isinstance(h, Publisher)


def _can_send(h: Any) -> bool:
    return (hasattr(h, "_send_frame") or hasattr(h, "_publish")) and not isinstance(h, Subscriber)


def _take(src: Any, timeout: float) -> list[tuple[int, Any]]:
    """The next frames of ``src``, (serializer id, payload) each: one, waiting up to ``timeout``, then
    those of the same serializer that are ready at once (at most _BATCH in all)."""
    if not hasattr(src, "_recv_frame"):
        with src._receiving:
            return [src._next(timeout)]
    with src._receiving:
        t0 = monotonic()
        sid, view = src._recv_frame(timeout, {})
        pop = src._fast_recv_many
        # A ring's try_recv_many spins (up to 100 us) when the ring is empty, which makes the batches
        # of a stream; but a relay on a small machine would take that CPU from the processes around
        # it in each round trip of a request and its answer.  So it spins only when the first
        # message came without a wait (a stream), and otherwise takes only what is pending.
        streaming = monotonic() - t0 < _STREAMING
        if pop is None or src._eof or not (streaming or src._port.wait_readable(deadline_after(0))):
            return [(sid, view)]
        if view.__class__ is memoryview and view.obj.__class__ is not bytes:
            view = view.tobytes()  # it may lie in the ring, where pop below takes the next ones
        out: list[tuple[int, Any]] = [(sid, view)]
        out += [(sid, p) for p in pop(_BATCH - 1, sid)]
        return out


def _put(dst: Any, frames: list[tuple[int, Any]]) -> None:
    """Send ``frames`` to ``dst``, in order: each run of one serializer as one batch (send_many's path)."""
    send = dst._send_payloads if hasattr(dst, "_send_frame") else dst._publish_many
    i = 0
    while i < len(frames):
        sid = frames[i][0]
        j = i + 1
        while j < len(frames) and frames[j][0] == sid:
            j += 1
        send(sid, [p for _, p in frames[i:j]], None)
        i = j


def _pump(src: Any, dst: Any, stop: threading.Event, errors: list[BaseException], counts: list[int],
          slot: int) -> None:
    """Forward src -> dst until src's peer closes, dst's peer goes, or ``stop`` is set."""
    same = src.serializer.id == dst.serializer.id
    try:
        while not stop.is_set():
            try:
                frames = _take(src, _TICK)
            except Timeout:
                continue
            if not same:
                frames = [(dst.serializer.id, memoryview(dst.serializer.dumps(src._decode(sid, view))))
                          if sid != 0 else (sid, view) for sid, view in frames]
            _put(dst, frames)
            counts[slot] += len(frames)
    except ChannelClosed:
        pass
    except BaseException as exc:  # noqa: BLE001 - re-raised by relay() in the caller's thread
        errors.append(exc)
    finally:
        stop.set()
