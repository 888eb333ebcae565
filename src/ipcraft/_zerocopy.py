"""The context managers behind Channel.recv_view() and send_view(): zero copy in shared memory.

``recv_view()`` is the transport's ``peek`` on enter and ``consume`` on exit; ``send_view()`` is its
``reserve`` on enter and ``commit`` (or ``abort``, when the block raised) on exit: the verbs of the
ring ports and of their C twins (see ``_rings``).

Small classes rather than @contextmanager generators: the zero-copy path is the fast path, and a
generator-based context manager costs several microseconds per message.
"""

from __future__ import annotations

from typing import Any

from ._resource import ConflictDetector
from ._wait import deadline_after


def release_view(view: memoryview) -> None:
    """Release a lent view so that nothing reads the ring through it after the block."""
    try:
        view.release()
    except BufferError:
        pass  # an export of the view (np.frombuffer) outlives the block; the docstrings forbid its use


class RecvView:
    """What recv_view() returns: peeks at the next record on enter, consumes it on exit."""

    __slots__ = ("_t", "_guard", "_timeout", "_view")
    _view: memoryview

    def __init__(self, t: Any, guard: ConflictDetector, timeout: float | None) -> None:
        self._t, self._guard, self._timeout = t, guard, timeout

    def __enter__(self) -> memoryview:
        self._guard.__enter__()
        try:
            timeout = self._timeout
            self._view = self._t.peek(None if timeout is None else deadline_after(timeout))[0]
        except BaseException:
            self._guard.__exit__()
            raise
        return self._view

    def __exit__(self, *exc: object) -> None:
        try:
            release_view(self._view)
            self._t.consume()
        finally:
            self._guard.__exit__()


class SendView:
    """What send_view() returns: reserves n bytes on enter; commits them on a normal exit, aborts them
    when the block raised."""

    __slots__ = ("_t", "_guard", "_n", "_timeout", "_view")
    _view: memoryview

    def __init__(self, t: Any, guard: ConflictDetector, n: int, timeout: float | None) -> None:
        self._t, self._guard, self._n, self._timeout = t, guard, n, timeout

    def __enter__(self) -> memoryview:
        self._guard.__enter__()
        try:
            timeout = self._timeout
            self._view = self._t.reserve(self._n, None if timeout is None else deadline_after(timeout))
        except BaseException:
            self._guard.__exit__()
            raise
        return self._view

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            release_view(self._view)
            if exc_type is None:
                self._t.commit()
            else:
                self._t.abort()
        finally:
            self._guard.__exit__()
