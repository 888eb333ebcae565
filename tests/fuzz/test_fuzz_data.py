"""Fuzz targets for what a peer or a URL hands ipcraft: the frame reader, message headers, the endpoint
parser and every serializer's decode.  Only ipcraft's typed errors may come out; memory follows the
bytes that arrived.  See conftest.py for the budget and the corpus.
"""

from __future__ import annotations

from typing import Any

from _fuzz import run_fuzz, seeded_bytes
from hypothesis import strategies as st

from ipcraft import _framing
from ipcraft._endpoint import Endpoint
from ipcraft.errors import InvalidEndpoint, MessageTooLarge, PeerVanished, ProtocolError
from ipcraft.serializers import JSON, MSGPACK, PICKLE, RAW, Serializer, split_oob

# -- frames ----------------------------------------------------------------------------------------

_chunks = st.lists(st.integers(1, 70_000), min_size=1, max_size=8)


def _read_stream(case: tuple[bytes, list[int], int, bool]) -> None:
    """Feed ``data`` in chunks, take every frame; a bad header ends the stream, as it closes a channel."""
    data, sizes, max_size, use_feed = case
    reader = _framing.FrameReader(max_size)
    pos = i = 0
    try:
        while True:
            chunk = data[pos:pos + sizes[i % len(sizes)]]
            i += 1
            if use_feed:
                reader.feed(chunk)  # b"" at the end means end of stream
            else:
                view = reader.buffer()
                chunk = chunk[:len(view)]
                view[:len(chunk)] = chunk
                reader.advance(len(chunk))
            pos += len(chunk)
            body = reader._body
            # memory follows the bytes that arrived, never the length a header announces
            assert body is None or len(body) <= max(_framing.BODY_START, 2 * pos), (len(body), pos)
            while True:
                try:
                    frame = reader.next_frame()
                except MessageTooLarge as exc:
                    assert exc.size is not None and exc.size > max_size
                    continue
                if frame is _framing.NEED_DATA or frame is _framing.END:
                    break
                sid, payload = frame  # type: ignore[misc]
                assert 0 <= sid <= 255 and len(payload) <= max_size
            if not chunk:
                return
    except (ProtocolError, PeerVanished):
        return


def test_fuzz_frame_reader() -> None:
    """Random and mutated byte streams through FrameReader (feed() and buffer()/advance()), in random
    chunk sizes and limits: frames within the limit, or MessageTooLarge, ProtocolError, PeerVanished."""
    strategy = st.tuples(seeded_bytes("frames", 4096), _chunks, st.sampled_from([0, 10, 4096, 2**20, 2**28]),
                         st.booleans())
    assert run_fuzz("frame reader", strategy, _read_stream) > 0


def _message(msg: bytes) -> None:
    try:
        sid, payload = _framing.check_message_header(memoryview(msg), len(msg))
    except ProtocolError:
        return
    assert len(payload) == len(msg) - _framing.HEADER_SIZE and 0 <= sid <= 255


def test_fuzz_message_header() -> None:
    """Whole messages of message transports (mq, sysvmq, rings, datagrams): a header that announces
    exactly the bytes that follow, or ProtocolError.  (The size limit is the channel's, tested apart.)"""
    assert run_fuzz("message header", seeded_bytes("frames", 512), _message) > 0


# -- endpoints --------------------------------------------------------------------------------------

_values: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20),
    st.binary(max_size=8), st.lists(st.integers(-(2**40), 2**40), max_size=3), st.just(MSGPACK))
_option_names = st.sampled_from(["serializer", "max_message_size", "mode", "allowed_uids", "backlog",
                                 "insecure", "server_hostname", "nodelay", "pipe_size", "wait", "capacity",
                                 "sync", "maxmsg", "msgsize", "qbytes", "proj_id", "recv_buffer",
                                 "handshake_timeout", "authkey", "bogus"])
_urls = st.one_of(seeded_bytes("endpoints", 200).map(lambda b: b.decode("utf-8", "surrogateescape")),
                  seeded_bytes("endpoints", 200).map(lambda b: b.decode("latin-1")),
                  st.text(max_size=80))


def _parse(case: tuple[str, dict[str, Any]]) -> None:
    url, options = case
    try:
        ep = Endpoint.parse(url, **options)
    except InvalidEndpoint:
        return
    again = Endpoint.parse(str(ep), **{k: v for k, v in ep.options.items() if k in ("authkey", "ssl_context")})
    assert again == ep and dict(again.options) == dict(ep.options), (str(ep), again)


def test_fuzz_endpoint_parser() -> None:
    """Random and mutated URLs (lone surrogates, Latin-1, junk) with random option values of every type:
    InvalidEndpoint, or an Endpoint whose canonical URL parses back to itself."""
    strategy = st.tuples(_urls, st.dictionaries(_option_names, _values, max_size=3))
    assert run_fuzz("endpoint parser", strategy, _parse) > 0


# -- serializers ------------------------------------------------------------------------------------

def _decoder(serializer: Serializer) -> Any:
    def decode(data: bytes) -> None:
        try:
            serializer.decode(memoryview(data))
        except ProtocolError as exc:
            # msgpack and PICKLE's out-of-band container parser raise ProtocolError themselves
            assert exc.__cause__ is not None or serializer is MSGPACK or "out-of-band" in str(exc)
    return decode


def test_fuzz_msgpack_decode() -> None:
    """Random and mutated msgpack (numpy extension included): ProtocolError or a value."""
    assert run_fuzz("msgpack decode", seeded_bytes("msgpack"), _decoder(MSGPACK)) > 0


def test_fuzz_json_decode() -> None:
    """Random and mutated JSON, with deep nesting and long digit runs mixed in: ProtocolError or a value."""
    deep = st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n)
    digits = st.integers(1, 20_000).map(lambda n: b"7" * n)
    strategy = st.one_of(seeded_bytes("json"), deep, digits)
    assert run_fuzz("json decode", strategy, _decoder(JSON)) > 0


def test_fuzz_pickle_decode() -> None:
    """Mutated pickles (decoded only from authenticated peers, but a peer can be buggy): ProtocolError
    or a value, never another exception type."""
    assert run_fuzz("pickle decode", seeded_bytes("pickle"), _decoder(PICKLE)) > 0


def test_fuzz_raw_decode() -> None:
    """RAW returns the bytes unchanged."""
    def check(data: bytes) -> None:
        assert RAW.decode(memoryview(data)) == data

    assert run_fuzz("raw decode", st.binary(max_size=256), check, budget=0.2) > 0


def _split_container(data: bytes) -> None:
    """split_oob: ProtocolError, or a stream and buffers that lie inside ``data`` and tile it."""
    try:
        stream, bufs = split_oob(memoryview(data))
    except ProtocolError:
        return
    assert bufs and stream.nbytes + sum(b.nbytes for b in bufs) <= len(data)
    assert all(b.obj is data for b in (stream, *bufs))  # views into what arrived, never copies


def test_fuzz_pickle_oob_container() -> None:
    """Mutated out-of-band pickle containers (hostile counts and lengths): the parser answers
    ProtocolError or views inside the input; decoding them is ProtocolError or a value."""
    assert run_fuzz("pickle oob container", seeded_bytes("pickle_oob", 256), _split_container) > 0
    assert run_fuzz("pickle oob decode", seeded_bytes("pickle_oob", 256), _decoder(PICKLE)) > 0
