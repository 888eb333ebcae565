"""The context managers behind Channel.recv_view() and send_view(), and Subscriber/Publisher's.

``recv_view()`` is the transport's ``peek`` on enter and ``consume`` on exit; ``send_view()`` is its
``reserve`` on enter and ``commit`` (or ``abort``, when the block raised) on exit: the verbs of the
ring ports and of their C twins (see ``_rings``).

The context managers are C types (``_native.Lender`` makes one ``_native.Lend`` per call): the
zero-copy path is the fast path, and a Python ``__enter__``/``__exit__`` pair with its guard and
port calls cost several times the copying round trip of a small message.  A transport with C ports
(:class:`~._transports._contract.NativeLends`, shm://) is lent from in C without a call into Python;
any other lender's verbs are called through the Python callables made here.  Either way the view is
released when the block exits, so using it afterwards raises ValueError instead of reading ring
memory the peer is reusing.
"""

from __future__ import annotations

from typing import Any

from . import _native
from ._resource import ConflictDetector
from ._transports._contract import NativeLends
from ._wait import deadline_after


def recv_lender(t: Any, guard: ConflictDetector) -> _native.Lender:
    """A Lender whose ``lend(timeout)`` is one recv_view(): ``t.peek`` on enter, ``t.consume`` on exit."""

    def peek(timeout: float | None) -> memoryview:
        return t.peek(deadline_after(timeout))[0]  # type: ignore[no-any-return]

    port = fail = None
    if issubclass(type(t), NativeLends):
        port, fail = t.native_lends()[0]
    return _native.Lender(guard, False, peek, t.consume, None, port, fail)


def send_lender(t: Any, guard: ConflictDetector) -> _native.Lender:
    """A Lender whose ``lend(timeout, n)`` is one send_view(n): ``t.reserve`` on enter, ``t.commit``
    (``t.abort`` if the block raised) on exit."""

    def reserve(n: int, timeout: float | None) -> memoryview:
        return t.reserve(n, deadline_after(timeout))  # type: ignore[no-any-return]

    port = fail = None
    if issubclass(type(t), NativeLends):
        port, fail = t.native_lends()[1]
    return _native.Lender(guard, True, reserve, t.commit, t.abort, port, fail)
