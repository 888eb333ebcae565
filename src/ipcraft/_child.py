"""Forked children with timeouts, and names that cannot collide: the process tools behind
:mod:`ipcraft.testing` (which re-exports them) and the conformance suite (which forks with them).

Kept apart from ``testing.py`` so that the conformance suite, which ``testing.check_channel`` runs,
imports this module and not ``testing`` itself: the import graph stays without a cycle.
"""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import time
import traceback
import zlib
from collections.abc import Callable
from typing import Any

_counter = itertools.count()


def session_token() -> str:
    """A token naming this test session; children inherit it through the environment."""
    token = os.environ.get("IPCRAFT_TEST_TOKEN")
    if not token:
        token = f"s{os.getpid()}x{os.urandom(2).hex()}"
        os.environ["IPCRAFT_TEST_TOKEN"] = token
    return token


def unique_name(prefix: str = "t") -> str:
    """A name no other test, run or concurrent session uses: ``ipcraft-<session>-<prefix><n>``.

    Usable as a /dev/shm or mqueue name, an abstract socket name, or a file name under a temp dir.
    """
    return f"ipcraft-{session_token()}-{prefix}{os.getpid()}n{next(_counter)}"


def session_key_base() -> int:
    """The first System V key of this session's range of 65536 (see :func:`unique_key`)."""
    return 0x10000000 | ((zlib.crc32(session_token().encode()) & 0x7FF) << 16)


def unique_key() -> int:
    """A System V IPC key in a range reserved for this session, so leak checks can find its objects."""
    return session_key_base() | ((os.getpid() * 131 + next(_counter)) & 0xFFFF)


class ChildFailed(AssertionError):
    """A child started by run_in_child raised, died, or overran its timeout."""


class Child:
    """A function running in a forked child; ``result(timeout)`` returns its value or re-raises.

    The child's return value travels back pickled over a pipe.  If the child raises, ChildFailed
    carries its traceback text.  On timeout the child is killed (SIGKILL) and ChildFailed raised.
    """

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        r, w = os.pipe()
        self._r = r
        self.name = getattr(func, "__name__", repr(func))
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                os.close(r)
                try:
                    payload = pickle.dumps(("ok", func(*args, **kwargs)))
                except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
                    payload = pickle.dumps(("err", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
                    code = 1
                view = memoryview(payload)
                while view:
                    view = view[os.write(w, view):]
            finally:
                os._exit(code)
        os.close(w)
        self.pid = pid
        self._status: int | None = None

    def result(self, timeout: float = 30.0) -> Any:
        """Wait for the child; return what the function returned."""
        import select

        deadline = time.monotonic() + timeout
        chunks = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._r], [], [], left)[0]:
                    self.kill()
                    raise ChildFailed(f"child {self.name} (pid {self.pid}) overran its {timeout} s timeout "
                                      "and was killed")
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self._r)
            self._r = -1
        status = self.wait(max(0.1, deadline - time.monotonic()))
        if not chunks:
            raise ChildFailed(f"child {self.name} (pid {self.pid}) died without a result "
                              f"({_describe(status)})")
        kind, value = pickle.loads(b"".join(chunks))
        if kind == "err":
            raise ChildFailed(f"child {self.name} raised:\n{value}")
        return value

    def wait(self, timeout: float = 10.0) -> int:
        """Reap the child; returns its wait status (kills it after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self._status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._status = status
                break
            if time.monotonic() > deadline:
                self.kill()
            time.sleep(0.002)
        return self._status

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL) if the child has not been reaped yet."""
        if self._status is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def __del__(self) -> None:
        if getattr(self, "_status", 0) is None:
            self.kill()
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        if getattr(self, "_r", -1) >= 0:
            os.close(self._r)


def _describe(status: int | None) -> str:
    if status is None:
        return "still running"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"


def run_in_child(func: Callable[..., Any], *args: Any, timeout: float = 30.0, **kwargs: Any) -> Any:
    """Run ``func(*args, **kwargs)`` in a forked child and return its (picklable) result.

    Raises ChildFailed with the child's traceback if it raised, or if it overran ``timeout`` (it is
    then killed).
    """
    return Child(func, *args, **kwargs).result(timeout)
