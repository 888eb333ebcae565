"""The conformance suite's machinery: capabilities, the check registry, and helpers shared by checks."""

from __future__ import annotations

import os
import random
import select
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .._child import Child
from .._framing import HEADER_SIZE, SCRATCH_SIZE

MiB = 1024 * 1024
MAX_PAYLOAD = 16 * MiB  # the largest message the suite ever builds
WAIT = 10.0  # seconds any single expected event may take on a loaded machine
Pair = Callable[[], "tuple[Any, Any]"]


@dataclass(frozen=True)
class Capabilities:
    """What a scheme can do; check_channel's keyword arguments.

    Attributes:
        eof: closing the sender ends the stream: the receiver gets ChannelClosed after the last
            message (connection schemes and pipes).  Queues have no end of stream (False).
        duplex: the receiver can send back to the sender.
        max_size: the largest message tried (at most 16 MiB, and capped by the channel's own limit).
        selectable: fileno() gives an fd that select() reports readable when a message arrives.
        lossy: the mechanism drops messages when the receiver falls behind (udp://).
    """

    eof: bool = True
    duplex: bool = False
    max_size: int = 16 * MiB
    selectable: bool = True
    lossy: bool = False


_Check = Callable[[Pair, Capabilities], None]
CHECKS: dict[str, tuple[_Check, Callable[[Capabilities], bool]]] = {}


def check(applies: Callable[[Capabilities], bool] = lambda caps: True) -> Callable[[_Check], _Check]:
    def register(fn: _Check) -> _Check:
        CHECKS[fn.__name__.lstrip("_")] = (fn, applies)
        return fn
    return register


def run_conformance(make_pair: Pair, *, checks: Any = None, **capabilities: Any) -> None:
    """Run every check (or the names in ``checks``) that applies to ``capabilities``.

    Raises AssertionError naming the failed check; the original exception is its cause.
    """
    caps = Capabilities(**capabilities)
    for name in checks if checks is not None else list(CHECKS):
        fn, applies = CHECKS[name]
        if not applies(caps):
            continue
        try:
            fn(make_pair, caps)
        except Exception as exc:
            raise AssertionError(f"conformance check {name!r} failed: {type(exc).__name__}: {exc}") from exc


# -- helpers ---------------------------------------------------------------------------------------

_BASE = b""


def payload(n: int, seed: int = 0) -> memoryview:
    """``n`` deterministic pseudo-random bytes; different seeds give different contents."""
    global _BASE
    if len(_BASE) < MAX_PAYLOAD + 4096:
        _BASE = random.Random(20240611).randbytes(MAX_PAYLOAD + 4096)
    start = (seed * 613) % 4096
    if n > len(_BASE) - start:
        raise ValueError(f"the suite's payloads are at most {len(_BASE) - 4096} bytes")
    return memoryview(_BASE)[start:start + n]


@contextmanager
def pair(make_pair: Pair) -> Iterator[tuple[Any, Any]]:
    a, b = make_pair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def limit(sender: Any, receiver: Any, caps: Capabilities) -> tuple[int, int]:
    """(largest size the suite tries, the channel's own limit) for sender -> receiver."""
    own = min(getattr(sender, "_send_limit", 2**62), receiver.max_message_size)
    return min(own, caps.max_size, MAX_PAYLOAD), own


def size_ladder(top: int) -> list[int]:
    ladder = {0, 1, 2, 7, 8, 9, 100, 4095, 4096, 4097, SCRATCH_SIZE - HEADER_SIZE,
              SCRATCH_SIZE - HEADER_SIZE + 1, SCRATCH_SIZE, SCRATCH_SIZE + 1, MiB - 1, MiB, 4 * MiB,
              16 * MiB, top}
    return sorted(n for n in ladder if n <= top)


class Lockstep:
    """Acknowledgements on a side pipe, so a lossy mechanism never has two messages in flight."""

    def __init__(self, lossy: bool) -> None:
        self.lossy = lossy
        self._r, self._w = os.pipe() if lossy else (-1, -1)

    def sent(self) -> None:
        if self.lossy:
            if not select.select([self._r], [], [], WAIT)[0]:
                raise AssertionError("the receiver did not acknowledge a message")
            os.read(self._r, 1)

    def received(self) -> None:
        if self.lossy:
            os.write(self._w, b"k")

    def close(self) -> None:
        for fd in (self._r, self._w):
            if fd >= 0:
                os.close(fd)


def fork(func: Callable[[Any], Any], child_end: Any, parent_end: Any, caps: Capabilities) -> Child:
    """Run ``func(child_end)`` in a forked child; each process closes its copy of the other's end."""
    def body() -> Any:
        if caps.eof:
            parent_end.close()
        return func(child_end)

    child = Child(body)
    if caps.eof:
        child_end.close()
    return child


def expect(exc_type: type[BaseException], fn: Callable[[], Any], what: str) -> BaseException:
    try:
        fn()
    except exc_type as exc:
        return exc
    except Exception as exc:
        raise AssertionError(f"{what}: expected {exc_type.__name__}, got {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"{what}: expected {exc_type.__name__}, nothing was raised")


def msgpack_form(obj: Any) -> Any:
    """What ``obj`` becomes after a msgpack round trip: tuples arrive as lists."""
    if isinstance(obj, (list, tuple)):
        return [msgpack_form(x) for x in obj]
    if isinstance(obj, dict):
        return {k: msgpack_form(v) for k, v in obj.items()}
    return obj
