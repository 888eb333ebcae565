"""ipcraft._native: the stub matches the module, bad arguments are exceptions (never a crash), and the
atomics and futexes work between processes through shared memory."""

from __future__ import annotations

import ast
import errno
import mmap
import time
from pathlib import Path
from typing import Any

import pytest

from ipcraft import _native
from ipcraft.testing import Child

STUB = Path(_native.__file__).parent / "_native.pyi"


def stub_items() -> dict[str, ast.FunctionDef | ast.ClassDef]:
    tree = ast.parse(STUB.read_text())
    return {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def stub_functions() -> dict[str, ast.FunctionDef]:
    return {k: v for k, v in stub_items().items() if isinstance(v, ast.FunctionDef)}


def test_stub_names_equal_module_names() -> None:
    """_native.pyi declares exactly the functions and classes the compiled module exports."""
    exported = {n for n in dir(_native) if not n.startswith("_") and callable(getattr(_native, n))}
    assert set(stub_items()) == exported


@pytest.mark.parametrize("name", sorted(k for k, v in stub_items().items() if isinstance(v, ast.ClassDef)))
def test_stub_class_members_equal_the_type(name: str) -> None:
    """Each class in the stub declares exactly the public methods and properties of the real type."""
    declared = {n.name for n in stub_items()[name].body
                if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
    actual = {n for n in dir(getattr(_native, name)) if not n.startswith("_")}
    assert declared - {"__init__"} == actual


@pytest.mark.parametrize("name", sorted(stub_functions()))
def test_stub_arity_matches(name: str) -> None:
    """Each function refuses one argument too few and one too many, as its stub's signature says."""
    fn = stub_functions()[name]
    params = fn.args.posonlyargs + fn.args.args
    required = len(params) - len(fn.args.defaults)
    buf = mmap.mmap(-1, 4096)
    try:
        args: list[Any] = [buf if "Buffer" in ast.unparse(p.annotation or ast.Constant("")) else 0
                           for p in params]
        if required:
            with pytest.raises(TypeError):
                getattr(_native, name)(*args[:required - 1])
        with pytest.raises(TypeError):
            getattr(_native, name)(*args, 0)
    finally:
        buf.close()


BAD_OFFSETS = [
    ("atomic_load_u64", (-1,)), ("atomic_load_u64", (4096,)), ("atomic_load_u64", (4089,)),
    ("atomic_load_u64", (4,)), ("atomic_load_u64", (1,)), ("atomic_store_u64", (3, 1)),
    ("atomic_add_u64", (4092, 1)), ("atomic_cas_u64", (12, 0, 1)), ("atomic_load_u32", (2,)),
    ("atomic_load_u32", (4093,)), ("atomic_store_u32", (4096, 1)), ("atomic_store_u32", (-4, 1)),
    ("futex_wait", (6, 0, 0.0)), ("futex_wait", (4096, 0, 0.0)), ("futex_wake", (1, 1)),
    ("futex_wake", (-8, 1)), ("atomic_load_u64", (2**62,)),
]


@pytest.mark.parametrize("name, args", BAD_OFFSETS, ids=[f"{n}{a}" for n, a in BAD_OFFSETS])
def test_bad_offsets_are_value_errors(name: str, args: tuple[Any, ...]) -> None:
    """An offset outside the buffer or not aligned to the word size is a ValueError, not a crash."""
    buf = mmap.mmap(-1, 4096)
    try:
        with pytest.raises(ValueError, match="outside|aligned"):
            getattr(_native, name)(buf, *args)
    finally:
        buf.close()


def test_bad_buffers_and_timeouts() -> None:
    """A read-only buffer where a write is needed, a non-buffer, and a bad timeout raise, never crash."""
    ro = bytes(64)
    with pytest.raises((TypeError, BufferError)):
        _native.atomic_store_u64(ro, 0, 1)
    with pytest.raises((TypeError, BufferError)):
        _native.futex_wake(ro, 0, 1)
    with pytest.raises(TypeError):
        _native.atomic_load_u64("not a buffer", 0)
    buf = mmap.mmap(-1, 4096)
    try:
        for bad in (-1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="timeout"):
                _native.futex_wait(buf, 0, 0, bad)
        assert _native.atomic_load_u32(memoryview(ro), 8) == 0  # a read needs no write access
    finally:
        buf.close()


def test_atomic_operations() -> None:
    """Load/store/add/compare-exchange do what their names say, on 4- and 8-byte words."""
    buf = mmap.mmap(-1, 4096)
    try:
        _native.atomic_store_u64(buf, 8, 2**64 - 1)
        assert _native.atomic_load_u64(buf, 8) == 2**64 - 1
        assert _native.atomic_add_u64(buf, 8, 1) == 2**64 - 1 and _native.atomic_load_u64(buf, 8) == 0
        assert _native.atomic_add_u64(buf, 8, -1) == 0 and _native.atomic_load_u64(buf, 8) == 2**64 - 1
        assert _native.atomic_cas_u64(buf, 8, 2**64 - 1, 5) is True
        assert _native.atomic_cas_u64(buf, 8, 4, 6) is False and _native.atomic_load_u64(buf, 8) == 5
        _native.atomic_store_u32(buf, 4, 0xDEADBEEF)
        assert _native.atomic_load_u32(buf, 4) == 0xDEADBEEF and _native.atomic_load_u32(buf, 0) == 0
        assert bytes(buf[4:8]) == (0xDEADBEEF).to_bytes(4, "little")
    finally:
        buf.close()


N = 20000


def _add_many(buf: mmap.mmap, n: int) -> int:
    for _ in range(n):
        _native.atomic_add_u64(buf, 64, 1)
        while True:  # the same count again through a compare-exchange loop
            old = _native.atomic_load_u64(buf, 128)
            if _native.atomic_cas_u64(buf, 128, old, old + 1):
                break
    return n


@pytest.mark.timeout(60)
def test_atomics_across_fork() -> None:
    """Two processes adding to words of one MAP_SHARED mapping never lose an increment."""
    buf = mmap.mmap(-1, 4096)  # anonymous and MAP_SHARED: a forked child sees the same pages
    try:
        child = Child(_add_many, buf, N)
        _add_many(buf, N)
        assert child.result(50) == N
        assert _native.atomic_load_u64(buf, 64) == 2 * N
        assert _native.atomic_load_u64(buf, 128) == 2 * N
    finally:
        buf.close()


def _wait_for_flag(buf: mmap.mmap) -> int:
    while _native.atomic_load_u32(buf, 0) == 0:
        rc = _native.futex_wait(buf, 0, 0, 10.0)
        if rc == -errno.ETIMEDOUT:
            return rc
    return _native.atomic_load_u32(buf, 0)


@pytest.mark.timeout(60)
def test_futex_wakes_another_process() -> None:
    """A child sleeping in futex_wait on a shared word is woken by the parent's store + futex_wake."""
    buf = mmap.mmap(-1, 4096)
    try:
        assert _native.futex_wait(buf, 0, 1, 0.0) == -errno.EAGAIN  # the word is not 1: no sleep
        assert _native.futex_wait(buf, 0, 0, 0.01) == -errno.ETIMEDOUT
        child = Child(_wait_for_flag, buf)
        time.sleep(0.1)
        _native.atomic_store_u32(buf, 0, 7)
        assert _native.futex_wake(buf, 0, 1) in (0, 1)  # 0 if the child had not gone to sleep yet
        assert child.result(20) == 7
        assert _native.futex_wake(buf, 0, 1) == 0, "nobody is left waiting"
    finally:
        buf.close()


def test_fast_method_calls_the_fast_attribute_then_the_general_method() -> None:
    """FastMethod: exactly nargs positional arguments go to the instance's fast callable; True (sent) or
    a result other than None (received) ends the call, anything else calls the Python method with the
    original arguments; on the class it is the Python method itself."""
    calls: list[tuple[object, ...]] = []

    class Handle:
        def __init__(self, fast: Any) -> None:
            self._fast = fast
            self._take = fast

        def send(self, data: object, *more: object, **kw: object) -> object:
            """Send."""
            calls.append(("general", data, more, kw))
            return "general"

        def recv(self, *more: object) -> object:
            calls.append(("recv general", more))
            return "general"

    general_send = Handle.send
    Handle.send = _native.FastMethod(Handle.send, "_fast", 1, True)  # type: ignore[method-assign]
    Handle.recv = _native.FastMethod(Handle.recv, "_take", 0, False)  # type: ignore[method-assign]
    assert Handle.send is general_send and Handle.send.__doc__ == "Send."
    h = Handle(lambda *a: len(a) == 1 and a[0] == b"ok")
    assert h.send(b"ok") is None and calls == []
    assert h.send(b"no") == "general" and calls == [("general", b"no", (), {})]
    assert h.send(b"ok", 1) == "general" and h.send(b"ok", x=1) == "general" and len(calls) == 3
    bound = h.send
    assert bound(b"ok") is None and bound.__name__ == "send" and len(calls) == 3
    r = Handle(lambda: b"got")
    assert r.recv() == b"got" and r.recv(1) == "general"
    assert Handle(lambda: None).recv() == "general"
    assert Handle(None).send(b"ok") == "general"

    def boom(*a: object) -> bool:
        raise ValueError("fast path failed")

    with pytest.raises(ValueError):
        Handle(boom).send(b"ok")
    with pytest.raises(TypeError):
        _native.FastMethod(42, "x", 1, True)
