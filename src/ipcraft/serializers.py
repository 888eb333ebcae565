"""Serializers: how objects become the bytes of a message, each with a wire id.

A serializer is a value with an ``id`` (one byte on the wire), a ``name``, ``dumps(obj) -> bytes`` and
``loads(buffer) -> object``.  Every frame carries the id of the serializer that produced it, so a
receiver configured for another serializer raises :class:`~ipcraft.errors.ProtocolError` instead of
misdecoding.  Channels decode through :meth:`Serializer.decode`, which turns *any* failure of
``loads`` on bytes a peer sent (bad syntax, bad UTF-8, nesting deep enough to exhaust the recursion
limit, an integer too long to convert, a container as a map key...) into ProtocolError with the
original exception chained as its cause.

========  ====  ==============================================================================
name      id    notes
========  ====  ==============================================================================
RAW       0     bytes-like only; what ``send_bytes``/``recv_bytes`` use
PICKLE    1     any picklable object; **runs code when loaded**: decoded only from an
                authenticated peer (a Unix peer of an allowed uid, or TCP with an authkey).
                On shared-memory channels (shm://, ring://, file://) large PEP 574 buffers (numpy
                arrays, bytearrays) travel out of band (``dumps_oob``): copied once into the ring
                and, on shm://, not again out of the received message (such arrays are read-only)
JSON      2     str/int/float/bool/None/list/dict; tuples arrive as lists
MSGPACK   3     the default.  Safe (cannot execute code), compact; carries bytes natively and
                numpy arrays (dtype and shape kept) as an extension type; tuples arrive as lists
========  ====  ==============================================================================

Ids 0-15 are reserved for ipcraft; custom serializers use 16-255.

.. versionadded:: 0.1
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import ProtocolError

__all__ = ("Serializer", "RAW", "PICKLE", "JSON", "MSGPACK", "by_name", "by_id", "split_oob")


@dataclass(frozen=True)
class Serializer:
    """A way to turn objects into message bytes and back, with a one-byte wire id.

    Attributes:
        id: the byte every frame carries (0-15 reserved, 16-255 for custom serializers).
        name: the name used in URLs (``?serializer=json``) and reprs.
        dumps: object -> bytes-like.
        loads: bytes-like -> object.  Must not keep a reference to its argument: the buffer is
            reused after it returns.
        trusted_only: True when loading can execute code (pickle): such frames are decoded only
            from an authenticated peer.
        dumps_oob: object -> list of bytes-like parts whose concatenation is the message, the large
            buffers among them left where they are (pickle protocol 5 out of band); one part when
            the object has none.  Channels over shared memory use it instead of ``dumps`` to copy
            each buffer once, straight into the ring.  None: the serializer has no such form.

    .. versionchanged:: 0.3
        ``dumps_oob`` (PICKLE's out-of-band container).
    """

    id: int
    name: str
    dumps: Callable[[Any], Any]
    loads: Callable[[Any], Any]
    trusted_only: bool = False
    dumps_oob: Callable[[Any], list[Any]] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.id <= 255:
            raise ValueError(f"a serializer id is one byte (0-255), not {self.id}")

    def __repr__(self) -> str:
        return f"<Serializer {self.name} id={self.id}>"

    def decode(self, data: Any) -> Any:
        """``loads(data)``, with any failure turned into :class:`~ipcraft.errors.ProtocolError`.

        The bytes came from a peer, so whatever ``loads`` raises on them (TypeError, ValueError,
        RecursionError, UnicodeDecodeError, a library's own error...) says the message is malformed:
        it is reported as one typed error whose ``__cause__`` is the original exception.  The message
        is consumed; the channel stays usable.

        .. versionadded:: 0.2
        """
        try:
            return self.loads(data)
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError(f"a {self.name} message could not be decoded: "
                                f"{type(exc).__name__}: {_clip(str(exc))}") from exc


def _clip(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters (a decoder's message may quote much of the input)."""
    return text if len(text) <= limit else text[:limit] + "..."


def _raw_dumps(obj: Any) -> Any:
    if not isinstance(obj, (bytes, bytearray, memoryview)):
        try:
            return memoryview(obj)
        except TypeError:
            raise TypeError(f"the RAW serializer sends bytes-like objects only, not {type(obj).__name__}") from None
    return obj


# -- pickle protocol 5 out of band (the container is specified in docs/spec/frame.md) --------------

#: The first bytes of an out-of-band container: a pickle stream of protocol 2 or later starts with
#: 0x80 (PROTO), so the two never mix.
OOB_MAGIC = b"\x00PB5"
_OOB_HEAD = struct.Struct("<4sIQ")  # magic, buffer count, pickle stream length; then the lengths
_OOB_ALIGN = 16  # each section starts at a multiple of this from the container's start
#: Buffers smaller than this stay in the pickle stream: a separate part costs more than the copy.
OOB_MIN_BUFFER = 4096


def _pad(n: int) -> int:
    return -n % _OOB_ALIGN


_ZEROS = bytes(_OOB_ALIGN)


def _pickle_dumps_oob(obj: Any) -> list[Any]:
    """``obj`` pickled with protocol 5, its large contiguous buffers out of band: ``[container prefix,
    buffer, padding, buffer, ...]`` (the prefix holds the header and the pickle stream), or
    ``[pickle stream]`` when no buffer of OOB_MIN_BUFFER bytes or more is out of band."""
    bufs: list[memoryview] = []

    def in_band(pb: pickle.PickleBuffer) -> bool:
        try:
            raw = pb.raw()  # a flat byte view; BufferError for a non-contiguous buffer
        except BufferError:
            return True
        if raw.nbytes < OOB_MIN_BUFFER:
            return True
        bufs.append(raw)
        return False

    stream = pickle.dumps(obj, protocol=5, buffer_callback=in_band)
    if not bufs:
        return [stream]
    head = _OOB_HEAD.pack(OOB_MAGIC, len(bufs), len(stream)) + struct.pack(f"<{len(bufs)}Q",
                                                                           *(b.nbytes for b in bufs))
    parts: list[Any] = [b"".join((head, _ZEROS[:_pad(len(head))], stream, _ZEROS[:_pad(len(stream))]))]
    for i, b in enumerate(bufs):
        parts.append(b)
        if i + 1 < len(bufs) and _pad(b.nbytes):
            parts.append(_ZEROS[:_pad(b.nbytes)])
    return parts


def split_oob(data: memoryview) -> tuple[memoryview, list[memoryview]]:
    """The pickle stream and the out-of-band buffers of a container, as views into ``data`` (no copy):
    ``pickle.loads(stream, buffers=bufs)`` rebuilds the object.  With ``recv_view()`` that decodes a
    message in place (the objects then must not outlive the block).

    Raises:
        ProtocolError: not a container, or lengths that do not add up to exactly ``data``.

    .. versionadded:: 0.3
    """
    n = data.nbytes
    if n < _OOB_HEAD.size:
        raise ProtocolError(f"an out-of-band pickle container of {n} bytes is shorter than its header")
    magic, k, slen = _OOB_HEAD.unpack_from(data)
    if magic != OOB_MAGIC:
        raise ProtocolError(f"not an out-of-band pickle container (magic {bytes(magic)!r})")
    pos = _OOB_HEAD.size + 8 * k
    if k == 0 or pos > n:
        raise ProtocolError(f"an out-of-band pickle container claims {k} buffers in {n} bytes")
    lens = struct.unpack_from(f"<{k}Q", data, _OOB_HEAD.size)
    pos += _pad(pos)
    if slen > n - pos:
        raise ProtocolError(f"an out-of-band pickle container's stream ({slen} bytes) overruns its {n} bytes")
    stream = data[pos:pos + slen]
    pos += slen + _pad(slen)
    bufs = []
    for i, size in enumerate(lens):
        if pos > n or size > n - pos:
            raise ProtocolError(f"an out-of-band pickle container's buffer {i} ({size} bytes) overruns "
                                f"its {n} bytes")
        bufs.append(data[pos:pos + size])
        pos += size + (_pad(size) if i + 1 < k else 0)
    if pos != n:
        raise ProtocolError(f"an out-of-band pickle container of {n} bytes holds {pos} bytes of sections")
    return stream, bufs


def _pickle_loads(data: Any) -> Any:
    """A pickle stream, or an out-of-band container whose buffers become views of the received bytes
    (read-only, no copy) when they are an immutable ``bytes`` object, of a private copy otherwise."""
    mv = data if isinstance(data, memoryview) else memoryview(data)
    if mv[:4].tobytes() != OOB_MAGIC:
        return pickle.loads(mv)
    if not isinstance(mv.obj, bytes):  # a buffer the transport reuses: the objects must not share it
        mv = memoryview(mv.tobytes())
    stream, bufs = split_oob(mv.cast("B") if mv.format != "B" else mv)
    return pickle.loads(stream, buffers=bufs)


RAW = Serializer(0, "raw", _raw_dumps, bytes)
PICKLE = Serializer(1, "pickle", lambda o: pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL),
                    _pickle_loads, trusted_only=True, dumps_oob=_pickle_dumps_oob)
JSON = Serializer(2, "json", lambda o: json.dumps(o, separators=(",", ":")).encode(),
                  lambda b: json.loads(bytes(b)))

_NDARRAY_EXT = 1


def _msgpack_default(obj: Any) -> Any:
    np = _numpy_if_loaded()
    if np is not None and isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("numpy arrays of Python objects cannot be sent with msgpack; use PICKLE")
        arr = np.ascontiguousarray(obj)  # note: turns a 0-d array into shape (1,), so send obj.shape
        dt = arr.dtype
        # dtype.str loses the fields of a structured dtype ('|V12'); those travel as the .npy format's
        # descr, a Python literal read back with ast.literal_eval (which cannot run code).
        tag = dt.str if np.dtype(dt.str) == dt else repr(np.lib.format.dtype_to_descr(dt))
        header = msgpack.packb((tag, obj.shape))
        return msgpack.ExtType(_NDARRAY_EXT, header + arr.tobytes())
    if np is not None and isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, memoryview):
        return obj.tobytes()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"msgpack cannot serialize {type(obj).__name__}; use PICKLE for arbitrary objects")


def _msgpack_ext(code: int, data: bytes) -> Any:
    if code == _NDARRAY_EXT:
        import numpy as np

        try:
            unpacker = msgpack.Unpacker(raw=False, use_list=False)
            unpacker.feed(data)
            tag, shape = unpacker.unpack()
            offset = unpacker.tell()
            if tag.startswith("["):
                import ast

                dtype = np.lib.format.descr_to_dtype(ast.literal_eval(tag))
            else:
                dtype = np.dtype(tag)
            arr = np.frombuffer(data, dtype=dtype, offset=offset)
            return arr.reshape(shape).copy()  # writable and independent of the receive buffer
        except Exception as exc:
            raise ProtocolError(f"a numpy array in a msgpack message is malformed: {exc}") from exc
    raise ProtocolError(f"unknown msgpack extension type {code}")


def _numpy_if_loaded() -> Any:
    import sys

    return sys.modules.get("numpy")


_packer_kwargs = {"default": _msgpack_default, "use_bin_type": True}


def _msgpack_dumps(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, **_packer_kwargs)
    return packed


def _msgpack_loads(buf: Any) -> Any:
    try:
        return msgpack.unpackb(buf, raw=False, ext_hook=_msgpack_ext, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"a msgpack message could not be decoded: {exc}") from exc


MSGPACK = Serializer(3, "msgpack", _msgpack_dumps, _msgpack_loads)

_BY_NAME = {s.name: s for s in (RAW, PICKLE, JSON, MSGPACK)}
_BY_ID = {s.id: s for s in _BY_NAME.values()}


def by_name(name: str | Serializer) -> Serializer:
    """The built-in serializer called ``name`` (``raw``, ``pickle``, ``json``, ``msgpack``).

    A Serializer passes through unchanged.  Raises ValueError naming the valid names.
    """
    if isinstance(name, Serializer):
        return name
    try:
        return _BY_NAME[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown serializer {name!r}; valid: {', '.join(sorted(_BY_NAME))}") from None


def by_id(sid: int) -> Serializer | None:
    """The built-in serializer with wire id ``sid``, or None."""
    return _BY_ID.get(sid)
