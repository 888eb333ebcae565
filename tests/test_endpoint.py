"""Endpoints: parse(str(e)) == e for every scheme, and every malformed form is an InvalidEndpoint
that names the valid choices."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcraft._endpoint import OPTIONS, SCHEMES, Endpoint
from ipcraft.errors import InvalidEndpoint
from ipcraft.serializers import JSON, MSGPACK, PICKLE, RAW

_component = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1,
                     max_size=12)
_abs_path = st.lists(_component, min_size=1, max_size=4).map(lambda cs: "/" + "/".join(cs))
_rel_path = st.lists(_component, min_size=1, max_size=3).map("/".join).filter(lambda p: not p.startswith("@"))
_abstract = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1,
                    max_size=30).map(lambda n: "@" + n)
_name = _component.filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255)
_hostname = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,2}\Z")
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
_host_port = st.tuples(st.one_of(_hostname, _ipv4, _ipv6), st.integers(0, 65535)).map(lambda hp: f"{hp[0]}:{hp[1]}")
_key = st.integers(-(2**31), 2**32 - 1).filter(bool).map(str)  # 0 is IPC_PRIVATE, refused

ADDRESSES = {
    "unix": st.one_of(_abs_path, _rel_path, _abstract),
    "path": st.one_of(_abs_path, _rel_path),
    "host_port": _host_port,
    "name": _name,
    "key": _key,
}

_int = st.integers(1, 2**31 - 1)
OPTION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "serializer": st.sampled_from([RAW, JSON, MSGPACK, PICKLE]),
    "max_message_size": st.integers(1, 2**32 - 1),
    "mode": st.integers(0, 0o777),
    "allowed_uids": st.frozensets(st.integers(0, 2**32 - 2)),
    "backlog": _int,
    "insecure": st.booleans(),
    "server_hostname": _hostname,
    "nodelay": st.booleans(),
    "sync": st.booleans(),
    "pipe_size": _int,
    "wait": st.sampled_from(["block", "spin"]),
    "capacity": st.integers(1, 2**30),
    "maxmsg": st.integers(1, 65536),
    "msgsize": st.integers(1, 16 * 1024 * 1024),
    "qbytes": _int,
    "proj_id": st.integers(1, 255),
    "recv_buffer": _int,
    "access": st.sampled_from(["r", "w", "rw"]),
    "framing": st.sampled_from(["ipcraft", "none", "lines", "length"]),
    "handshake": st.booleans(),
    "handshake_timeout": st.floats(0, 1e6, allow_nan=False),
    "on_slow": st.sampled_from(["drop", "block"]),
    "slow_timeout": st.floats(0, 1e6, allow_nan=False),
    "start": st.sampled_from(["next", "latest", "oldest"]),
    "max_subscribers": st.integers(1, 4096),
    "curve_keys": _abs_path,
    "curve_server": _abs_path,
    "curve_clients": _abs_path,
    "role": st.sampled_from(["push", "pull"]),
    "topic": st.text(st.characters(blacklist_categories=("Cs",))),
    "hwm": st.integers(0, 2**31 - 1),
    "heartbeat": st.floats(0, 1e6, allow_nan=False),
    "linger": st.floats(0, 1e6, allow_nan=False),
}


@st.composite
def endpoints(draw: st.DrawFn) -> Endpoint:
    scheme = draw(st.sampled_from(sorted(SCHEMES)))
    info = SCHEMES[scheme]
    address = draw(ADDRESSES[info.address])
    url_options = sorted(o for o in info.options if OPTIONS[o].url)
    chosen = draw(st.lists(st.sampled_from(url_options), unique=True, max_size=4)) if url_options else []
    return Endpoint(scheme, address, {k: draw(OPTION_VALUES[k]) for k in chosen})


def test_every_url_option_has_a_strategy() -> None:
    """The round-trip test covers every option that may appear in a URL."""
    assert {k for k, o in OPTIONS.items() if o.url} == set(OPTION_VALUES)


@settings(max_examples=500, deadline=None)
@given(endpoints())
def test_parse_str_round_trip(ep: Endpoint) -> None:
    """str() of any endpoint is a URL that parses back to an equal endpoint, and is canonical."""
    url = str(ep)
    back = Endpoint.parse(url)
    assert back == ep, url
    assert str(back) == url


def test_canonical_forms() -> None:
    """The documented address forms parse to the expected scheme and address."""
    cases = {
        "unix:///run/app.sock": ("unix", "/run/app.sock"),
        "unix:rel/app.sock": ("unix", "rel/app.sock"),
        "unix:@name": ("unix", "@name"),
        "unix://@name": ("unix", "@name"),
        "UNIX+SEQPACKET:///x": ("unix+seqpacket", "/x"),
        "tcp://[::1]:80": ("tcp", "[::1]:80"),
        "udp://localhost:0": ("udp", "localhost:0"),
        "shm:///jobs": ("shm", "jobs"),
        "mq://jobs": ("mq", "jobs"),
        "sysvmq://0x4d2": ("sysvmq", "1234"),
        "fifo:///tmp/f%20g": ("fifo", "/tmp/f g"),
    }
    for url, (scheme, address) in cases.items():
        ep = Endpoint.parse(url)
        assert (ep.scheme, ep.address) == (scheme, address), url
    assert Endpoint.parse("unix:@x").abstract and not Endpoint.parse("unix:///x").abstract
    assert Endpoint.parse("tcp://[::1]:80").host_port == ("::1", 80)


def test_secrets_never_appear_in_the_url() -> None:
    """authkey and ssl_context are kept as options but never written into str()."""
    ep = Endpoint.parse("tcp://h:1", authkey=b"secret", insecure=False)
    assert ep.options["authkey"] == b"secret"
    assert "secret" not in str(ep) and "authkey" not in str(ep)


def test_keyword_options_merge_and_convert() -> None:
    """Keyword options override the URL's and are converted like URL values; parse(ep) passes through."""
    ep = Endpoint.parse("unix:///a?max_message_size=10", max_message_size="0x20", mode=0o640)
    assert ep.options["max_message_size"] == 32 and ep.options["mode"] == 0o640
    assert Endpoint.parse(ep) is ep
    assert ep.with_options(backlog=5).options["backlog"] == 5
    assert dict(ep.options) == {"max_message_size": 32, "mode": 0o640}, "with_options changed the original"
    with pytest.raises(TypeError):
        ep.options["x"] = 1  # type: ignore[index]


ALL_SCHEMES = sorted(SCHEMES)


@pytest.mark.parametrize("url, names", [
    ("nothing-here", ALL_SCHEMES),
    ("http://example.com", ALL_SCHEMES),
    ("unix:///a?bogus=1", sorted(SCHEMES["unix"].options)),
    ("tcp://h:1?capacity=4", sorted(SCHEMES["tcp"].options)),
    ("mq://q?pipe_size=4096", sorted(SCHEMES["mq"].options)),
])
def test_unknown_scheme_or_option_names_the_valid_ones(url: str, names: list[str]) -> None:
    """An unknown scheme lists every scheme; an unknown option lists every option of the scheme."""
    with pytest.raises(InvalidEndpoint) as info:
        Endpoint.parse(url)
    for name in names:
        assert name in str(info.value), f"{name!r} missing from: {info.value}"


MALFORMED = [
    "unix://relative", "unix:", "unix:@", "unix:///dir/", "unix:///a%00b", "unix:///a#frag",
    "fifo:@name", "file:", "fifo:///",
    "tcp://host", "tcp://host:", "tcp://host:70000", "tcp://:80", "tcp://::1:80", "tcp://[::1:80",
    "tcp://[zz]:80", "tcp:host:80", "udp://h:-1", "tcp://h/x:1",
    "shm://", "shm://a/b", "shm://..", "shm://.", "mq://" + "x" * 256, "ring://a%00b", "shm:name",
    "sysvmq://abc", f"sysvmq://{2**32}", "sysvmq://",
    "unix:///a?x", "unix:///a?mode=600&mode=600", "unix:///a?max_message_size=abc",
    "unix:///a?max_message_size=0", "unix:///a?max_message_size=-1", "unix:///a?mode=999",
    "unix:///a?mode=1000", "tcp://h:1?insecure=maybe", "shm://a?wait=fast", "tcp://h:1?authkey=x",
    "unix:///a?handshake_timeout=nan", "unix:///a?handshake_timeout=-1", "unix:///a?backlog=true",
]


@pytest.mark.parametrize("url", MALFORMED)
def test_malformed_urls_are_invalid_endpoint(url: str) -> None:
    """Each malformed URL raises InvalidEndpoint (a ValueError) whose text quotes the URL."""
    with pytest.raises(InvalidEndpoint) as info:
        Endpoint.parse(url)
    assert isinstance(info.value, ValueError)
    assert url[:20] in str(info.value) or "endpoint URL" in str(info.value), str(info.value)


@pytest.mark.parametrize("url, kwargs", [
    ("unix:///a", {"bogus": 1}),
    ("unix:///a", {"authkey": b"k"}),
    ("unix:///a", {"max_message_size": True}),
    ("unix:///a", {"allowed_uids": [-1]}),
    ("tcp://h:1", {"nodelay": "sometimes"}),
])
def test_bad_keyword_options_are_invalid_endpoint(url: str, kwargs: dict[str, Any]) -> None:
    """Keyword options are validated like URL options."""
    with pytest.raises(InvalidEndpoint):
        Endpoint.parse(url, **kwargs)


def test_non_string_url_is_invalid_endpoint() -> None:
    """Only a str (or an Endpoint) is an endpoint: nothing is guessed from the type of an address."""
    for bad in (123, ("127.0.0.1", 80), b"unix:///a", None):
        with pytest.raises(InvalidEndpoint, match="is a str"):
            Endpoint.parse(bad)  # type: ignore[arg-type]
