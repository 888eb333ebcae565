"""Serializers: round trips (hypothesis), numpy arrays with dtype and shape, and what is refused."""

from __future__ import annotations

import os
import pickle
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ipcraft._channel import Channel
from ipcraft._conformance._core import msgpack_form as as_lists  # tuples arrive as lists
from ipcraft._framing import header
from ipcraft._transports._io import FdStream
from ipcraft.errors import AuthenticationError, ProtocolError
from ipcraft.serializers import JSON, MSGPACK, PICKLE, RAW, Serializer, by_id, by_name

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                     st.floats(allow_nan=False), st.text(), st.binary())
msgpack_data = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner), st.tuples(inner, inner),
                            st.dictionaries(st.one_of(st.text(), st.integers(-(2**63), 2**63 - 1)), inner)),
    max_leaves=30)
json_data = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.text()),
    lambda inner: st.one_of(st.lists(inner), st.tuples(inner), st.dictionaries(st.text(), inner)),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(msgpack_data)
def test_msgpack_round_trip(obj: Any) -> None:
    """msgpack (the default) returns equal data of the same types; tuples arrive as lists."""
    got = MSGPACK.loads(MSGPACK.dumps(obj))
    assert got == as_lists(obj)
    assert repr(got) == repr(as_lists(obj))  # same types too: bytes stay bytes, bool stays bool


@settings(max_examples=200, deadline=None)
@given(json_data)
def test_json_round_trip(obj: Any) -> None:
    """JSON returns equal data; tuples arrive as lists."""
    assert JSON.loads(JSON.dumps(obj)) == as_lists(obj)


@settings(max_examples=100, deadline=None)
@given(msgpack_data)
def test_pickle_round_trip_keeps_tuples(obj: Any) -> None:
    """Pickle returns exactly the object, tuples included."""
    assert PICKLE.loads(PICKLE.dumps(obj)) == obj


_dtypes = st.one_of(hnp.integer_dtypes(endianness="="), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(),
                    hnp.complex_number_dtypes(), hnp.boolean_dtypes(), hnp.datetime64_dtypes(),
                    hnp.byte_string_dtypes(), hnp.unicode_string_dtypes(),
                    hnp.integer_dtypes(endianness=">"))


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(_dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
def test_msgpack_numpy_round_trip(arr: Any) -> None:
    """A numpy array keeps its dtype (byte order included), shape and bytes, 0-d and empty ones too."""
    got = MSGPACK.loads(MSGPACK.dumps(arr))
    assert isinstance(got, np.ndarray)
    assert got.dtype == arr.dtype and got.shape == arr.shape
    assert got.tobytes() == np.ascontiguousarray(arr).tobytes()


def test_msgpack_numpy_layouts() -> None:
    """Fortran-ordered, sliced and structured arrays arrive with equal values and dtype; the result is
    writable and does not alias the receive buffer."""
    structured = np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8", (2,)), ("s", [("x", "u1")])])
    structured["a"] = [1, 2, 3]
    for arr in (np.asfortranarray(np.arange(12.0).reshape(3, 4)), np.arange(30)[::4], structured,
                np.arange(24).reshape(2, 3, 4).transpose(2, 0, 1)):
        buf = bytearray(MSGPACK.dumps(arr))
        got = MSGPACK.loads(memoryview(buf))
        buf[:] = bytes(len(buf))  # the channel reuses its receive buffer
        assert got.dtype == arr.dtype and np.array_equal(got, arr)
        got[...] = got  # writable
    nested = MSGPACK.loads(MSGPACK.dumps({"a": [np.float32(1.5), np.ones(2, np.int8)], "n": np.int64(7)}))
    assert nested["n"] == 7 and type(nested["n"]) is int and nested["a"][0] == 1.5
    assert np.array_equal(nested["a"][1], np.ones(2, np.int8))


def test_msgpack_refuses_what_it_cannot_carry() -> None:
    """Object arrays and arbitrary objects are a TypeError naming PICKLE, never a silent conversion."""
    with pytest.raises(TypeError, match="PICKLE"):
        MSGPACK.dumps(np.array([object()]))
    with pytest.raises(TypeError, match="PICKLE"):
        MSGPACK.dumps(object())
    assert sorted(MSGPACK.loads(MSGPACK.dumps({1, 2}))) == [1, 2]  # sets arrive as lists
    assert MSGPACK.loads(MSGPACK.dumps(memoryview(b"mv"))) == b"mv"


@pytest.mark.parametrize("garbage", [b"\xc1", b"\x92\x01", msgpack.packb(msgpack.ExtType(99, b"x")),
                                     msgpack.packb(msgpack.ExtType(1, b"junk")),
                                     msgpack.packb(msgpack.ExtType(1, msgpack.packb(("<i4", (5,))) + b"\0"))],
                         ids=["reserved-byte", "truncated", "unknown-ext", "bad-array-header", "short-array"])
def test_msgpack_garbage_is_protocol_error(garbage: bytes) -> None:
    """Bytes that are not a valid msgpack message raise ProtocolError, not a msgpack or numpy exception."""
    with pytest.raises(ProtocolError):
        MSGPACK.loads(garbage)


def test_raw_takes_bytes_like_only() -> None:
    """RAW sends any bytes-like object and returns bytes; anything else is a TypeError."""
    assert RAW.loads(RAW.dumps(bytearray(b"ab"))) == b"ab"
    assert RAW.loads(RAW.dumps(np.arange(2, dtype=np.uint8))) == b"\x00\x01"
    with pytest.raises(TypeError, match="bytes-like"):
        RAW.dumps("text")


def test_registry() -> None:
    """Ids and names are unique; only pickle is trusted_only; unknown names list the valid ones."""
    all_ = (RAW, PICKLE, JSON, MSGPACK)
    assert [s.id for s in all_] == [0, 1, 2, 3]
    assert [s.trusted_only for s in all_] == [False, True, False, False]
    for s in all_:
        assert by_name(s.name) is s and by_name(s.name.upper()) is s and by_id(s.id) is s and by_name(s) is s
    assert by_id(200) is None
    with pytest.raises(ValueError, match="json, msgpack, pickle, raw"):
        by_name("yaml")
    with pytest.raises(ValueError, match="one byte"):
        Serializer(256, "big", bytes, bytes)


class _Evil:
    """A pickle that creates a directory when loaded: proof of whether pickle data was decoded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (os.mkdir, (self.path,))


def test_pickle_is_refused_on_an_unauthenticated_channel(tmp_path: Any) -> None:
    """Pickle cannot be chosen on a channel that does not authenticate its peer, and a pickle frame
    arriving there is refused undecoded (AuthenticationError); the channel stays usable."""
    r, w = os.pipe()
    with pytest.raises(AuthenticationError, match="authenticated"):
        Channel._create(FdStream(r, "raw pipe"), None, serializer=PICKLE)
    with pytest.raises(OSError):
        os.fstat(r)  # the refused channel closed its transport
    r, w2 = os.pipe()
    os.close(w)
    ch = Channel._create(FdStream(r, "raw pipe"), None)  # unauthenticated: a bare pipe from nowhere
    try:
        target = str(tmp_path / "pwned")
        payload = pickle.dumps(_Evil(target))
        os.write(w2, header(PICKLE.id, len(payload)) + payload)
        with pytest.raises(AuthenticationError, match="without being decoded"):
            ch.recv(timeout=5)
        assert not os.path.exists(target), "the pickle was decoded"
        data = MSGPACK.dumps({"ok": 1})
        os.write(w2, header(MSGPACK.id, len(data)) + data)
        assert ch.recv(timeout=5) == {"ok": 1}
    finally:
        ch.close()
        os.close(w2)
