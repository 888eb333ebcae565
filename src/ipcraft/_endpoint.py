"""Endpoints: a URL parsed once into a frozen value whose scheme chooses the transport.

Address forms::

    unix:///abs/path  unix:rel/path  unix:@abstract     (also unix+seqpacket:, unix+dgram:)
    tcp://host:port   tcp://[::1]:port                   (also udp:)
    shm://name  ring://name  mq://name                   one path component
    fifo:///abs/path  file:///abs/path                   a file path
    sysvmq://1234  sysvmq://0x4d2                        a System V key
    sysvmq:///path?proj_id=7                             the key ftok(path, proj_id) (default 1)

Options follow ``?``; each scheme accepts a known set, converted to typed values.  Options that are
secrets or objects (``authkey``, ``ssl_context``) are keyword arguments only, never in a URL.
"""

from __future__ import annotations

import ipaddress
import math
import types
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidEndpoint
from .serializers import Serializer, by_name


def _int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    if isinstance(v, int):
        return v
    return int(str(v), 0)


def _nonneg_int(v: Any) -> int:
    n = _int(v)
    if n < 0:
        raise ValueError("expected an integer >= 0")
    return n


def _pos_int(v: Any) -> int:
    n = _int(v)
    if n <= 0:
        raise ValueError("expected an integer > 0")
    return n


def _float(v: Any) -> float:
    f = float(v)
    if not math.isfinite(f) or f < 0:
        raise ValueError("expected a finite number >= 0")
    return f


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def _mode(v: Any) -> int:
    n = v if isinstance(v, int) and not isinstance(v, bool) else int(str(v), 8)
    if not 0 <= n <= 0o777:
        raise ValueError("expected permission bits such as 600")
    return n


def _uids(v: Any) -> frozenset[int]:
    if isinstance(v, (str, bytes)):
        return frozenset(int(x) for x in str(v).split(",") if x)
    return frozenset(_nonneg_int(x) for x in v)


def _choice(*choices: str) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        s = str(v)
        if s not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return s
    return conv


def _serializer(v: Any) -> Serializer:
    return by_name(v)


def _keep(v: Any) -> Any:
    return v


@dataclass(frozen=True)
class _Option:
    convert: Callable[[Any], Any]
    url: bool = True  # may appear in a URL (False for secrets and objects)
    doc: str = ""


#: Every option any scheme accepts, with its converter.
OPTIONS: Mapping[str, _Option] = {
    "serializer": _Option(_serializer, doc="raw | json | msgpack (default) | pickle"),
    "max_message_size": _Option(_pos_int, doc="largest message accepted or sent, in bytes"),
    "mode": _Option(_mode, doc="permission bits of what is created (default 600)"),
    "allowed_uids": _Option(_uids, doc="extra uids allowed as Unix peers (comma separated)"),
    "backlog": _Option(_pos_int, doc="listen() backlog"),
    "authkey": _Option(_keep, url=False, doc="bytes: shared secret for the TCP handshake"),
    "insecure": _Option(_bool, doc="TCP without an authkey (pickle is then refused)"),
    "ssl_context": _Option(_keep, url=False, doc="ssl.SSLContext for TLS over TCP"),
    "server_hostname": _Option(str, doc="TLS server name to verify"),
    "nodelay": _Option(_bool, doc="TCP_NODELAY (default on)"),
    "pipe_size": _Option(_pos_int, doc="pipe capacity via F_SETPIPE_SZ"),
    "wait": _Option(_choice("block", "spin"), doc="shared memory: block (spin, then sleep) or spin"),
    "capacity": _Option(_pos_int, doc="ring data capacity in bytes"),
    "sync": _Option(_bool, doc="file://: msync every send and receive (survives an OS crash; slower)"),
    "maxmsg": _Option(_pos_int, doc="POSIX mq: messages the queue holds"),
    "msgsize": _Option(_pos_int, doc="POSIX mq: largest message"),
    "qbytes": _Option(_pos_int, doc="System V mq: bytes the queue holds"),
    "proj_id": _Option(_nonneg_int, doc="System V: ftok project id for a path key"),
    "recv_buffer": _Option(_pos_int, doc="SO_RCVBUF for datagram sockets"),
    "handshake_timeout": _Option(_float, doc="seconds allowed for a connection handshake"),
}

_COMMON = frozenset({"serializer", "max_message_size"})


@dataclass(frozen=True)
class Scheme:
    """A URL scheme: its family (connection or queue), address form and accepted options."""

    name: str
    family: str  # "connection" | "queue"
    address: str  # "unix" | "path" | "host_port" | "name" | "key"
    options: frozenset[str]
    summary: str


SCHEMES: Mapping[str, Scheme] = {s.name: s for s in (
    Scheme("unix", "connection", "unix",
           _COMMON | {"mode", "allowed_uids", "backlog", "handshake_timeout"},
           "AF_UNIX stream + framing; peer credentials checked"),
    Scheme("unix+seqpacket", "connection", "unix",
           _COMMON | {"mode", "allowed_uids", "backlog", "handshake_timeout"},
           "AF_UNIX seqpacket: the kernel keeps message boundaries"),
    Scheme("tcp", "connection", "host_port",
           _COMMON | {"authkey", "insecure", "ssl_context", "server_hostname", "nodelay", "backlog",
                      "handshake_timeout"},
           "TCP + framing; authkey handshake, optional TLS"),
    Scheme("shm", "connection", "name",  # no "mode": nothing named is created (memfd + abstract socket)
           _COMMON | {"wait", "capacity", "allowed_uids", "backlog", "handshake_timeout"},
           "two shared-memory rings per connection (fastest)"),
    Scheme("fifo", "queue", "path", _COMMON | {"mode", "pipe_size"},
           "named pipe; messages never interleave"),
    Scheme("mq", "queue", "name", _COMMON | {"mode", "maxmsg", "msgsize"},
           "POSIX message queue (priority=)"),
    Scheme("sysvmq", "queue", "key", _COMMON | {"mode", "qbytes", "proj_id"},
           "System V message queue (type=)"),
    Scheme("unix+dgram", "queue", "unix", _COMMON | {"mode", "recv_buffer", "allowed_uids"},
           "AF_UNIX datagrams"),
    Scheme("udp", "queue", "host_port", _COMMON | {"recv_buffer", "insecure"},
           "UDP datagrams (unauthenticated)"),
    Scheme("ring", "queue", "name", _COMMON | {"wait", "capacity", "mode"},
           "named multi-producer multi-consumer shared-memory ring"),
    Scheme("file", "queue", "path", _COMMON | {"wait", "capacity", "mode", "sync"},
           "durable memory-mapped ring that survives crashes"),
)}


@dataclass(frozen=True)
class Endpoint:
    """A parsed ipcraft URL: ``scheme``, ``address`` and typed ``options``.

    ``str(endpoint)`` is the canonical URL, and ``Endpoint.parse(str(e)) == e``.  Options holding
    secrets or objects (authkey, ssl_context) are kept but never written into the URL.

    .. versionadded:: 0.1
    """

    scheme: str
    address: str
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", types.MappingProxyType(dict(self.options)))

    @property
    def info(self) -> Scheme:
        return SCHEMES[self.scheme]

    @property
    def abstract(self) -> bool:
        """True for an abstract Unix socket name (``unix:@name``)."""
        return self.info.address == "unix" and self.address.startswith("@")

    @property
    def host_port(self) -> tuple[str, int]:
        """``(host, port)`` for tcp/udp endpoints."""
        host, _, port = self.address.rpartition(":")
        return host.strip("[]"), int(port)

    @classmethod
    def parse(cls, url: str | Endpoint, **options: Any) -> Endpoint:
        """Parse ``url``; keyword ``options`` are merged over those in the URL.

        Raises:
            InvalidEndpoint: malformed URL, unknown scheme, an option the scheme does not accept, or
                a value of the wrong type.  The message names the valid choices.
        """
        if isinstance(url, Endpoint):
            return url.with_options(**options) if options else url
        if not isinstance(url, str):
            raise InvalidEndpoint(f"an endpoint URL is a str, not {type(url).__name__}")
        scheme_part, sep, rest = url.partition(":")
        if not sep:
            raise InvalidEndpoint(f"{url!r} has no scheme; valid schemes: {_valid_schemes()}")
        scheme = scheme_part.lower()
        info = SCHEMES.get(scheme)
        if info is None:
            raise InvalidEndpoint(f"unknown scheme {scheme_part!r} in {url!r}; valid schemes: {_valid_schemes()}")
        rest, _, query = rest.partition("?")
        if "#" in query or "#" in rest:
            raise InvalidEndpoint(f"{url!r}: a fragment (#...) has no meaning in an ipcraft URL")
        address = _parse_address(info, urllib.parse.unquote(rest), url)
        raw: dict[str, Any] = {}
        try:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise InvalidEndpoint(f"{url!r}: malformed options {query!r} (expected key=value&...)") from None
        for key, value in pairs:
            if key in raw:
                raise InvalidEndpoint(f"{url!r}: option {key!r} is given twice")
            if key in OPTIONS and not OPTIONS[key].url and key in info.options:
                raise InvalidEndpoint(f"{url!r}: {key} must be passed as a keyword argument, never in a URL")
            raw[key] = value
        raw.update(options)
        return cls(scheme, address, _convert_options(info, raw, url))

    def with_options(self, **options: Any) -> Endpoint:
        """A copy with ``options`` merged in (validated like parse())."""
        merged = dict(self.options)
        merged.update(_convert_options(self.info, options, str(self)))
        return Endpoint(self.scheme, self.address, merged)

    def __str__(self) -> str:
        info = self.info
        if info.address in ("unix", "path"):
            if self.address.startswith("@"):
                base = f"{self.scheme}:{_quote(self.address)}"
            elif self.address.startswith("/"):
                base = f"{self.scheme}://{_quote(self.address)}"
            else:
                base = f"{self.scheme}:{_quote(self.address)}"
        else:
            base = f"{self.scheme}://{_quote(self.address)}"
        query = [(k, _format_option(k, v)) for k, v in sorted(self.options.items()) if OPTIONS[k].url]
        if query:
            base += "?" + urllib.parse.urlencode(query)
        return base


def _quote(s: str) -> str:
    return urllib.parse.quote(s, safe="/@:[]")


def _format_option(key: str, v: Any) -> str:
    if key == "mode":
        return format(v, "o")  # permission bits are read back as octal (mode=600)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Serializer):
        return v.name
    if isinstance(v, frozenset):
        return ",".join(str(x) for x in sorted(v))
    return str(v)


def _valid_schemes() -> str:
    return ", ".join(sorted(SCHEMES))


def _convert_options(info: Scheme, raw: Mapping[str, Any], url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in info.options:
            valid = ", ".join(sorted(info.options))
            raise InvalidEndpoint(f"{url!r}: the {info.name} scheme has no option {key!r}; valid: {valid}")
        try:
            converted = OPTIONS[key].convert(value)
        except (ValueError, TypeError) as exc:
            raise InvalidEndpoint(f"{url!r}: bad value {value!r} for option {key!r}: {exc}") from None
        if key == "mode" and isinstance(value, int) and not isinstance(value, bool):
            converted = value
        out[key] = converted
    return out


def _parse_address(info: Scheme, rest: str, url: str) -> str:
    kind = info.address
    if kind in ("unix", "path"):
        if rest.startswith("//"):
            rest = rest[2:]
            if rest and not rest.startswith(("/", "@")):
                raise InvalidEndpoint(f"{url!r}: write an absolute path as {info.name}:///abs/path "
                                      f"and a relative one as {info.name}:rel/path")
        if rest.startswith("@"):
            if kind != "unix":
                raise InvalidEndpoint(f"{url!r}: only Unix sockets have abstract (@) names")
            if len(rest) == 1:
                raise InvalidEndpoint(f"{url!r}: the abstract name is empty")
            return rest
        if not rest or rest.endswith("/"):
            raise InvalidEndpoint(f"{url!r}: expected a file path such as {info.name}:///run/app.sock")
        if "\0" in rest:
            raise InvalidEndpoint(f"{url!r}: a path must not contain NUL")
        return rest
    if not rest.startswith("//"):
        raise InvalidEndpoint(f"{url!r}: expected {info.name}://...")
    rest = rest[2:]
    if kind == "host_port":
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise InvalidEndpoint(f"{url!r}: expected {info.name}://host:port with a port 0-65535")
        if host.startswith("["):
            if not host.endswith("]"):
                raise InvalidEndpoint(f"{url!r}: unbalanced [ in an IPv6 address")
            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError:
                raise InvalidEndpoint(f"{url!r}: {host[1:-1]!r} is not an IPv6 address") from None
        elif ":" in host or "/" in host:
            raise InvalidEndpoint(f"{url!r}: write an IPv6 address in brackets: [::1]:port")
        return f"{host}:{int(port)}"
    if kind == "name":
        name = rest[1:] if rest.startswith("/") else rest
        from ._names import validate_name
        try:
            return validate_name(name, f"{info.name}://")
        except InvalidEndpoint as exc:
            raise InvalidEndpoint(f"{url!r}: {exc}") from None
    if kind == "key":
        if rest.startswith("/"):  # sysvmq:///path?proj_id=N: the key is ftok(path, proj_id)
            if rest.endswith("/") or "\0" in rest:
                raise InvalidEndpoint(f"{url!r}: expected a file path such as {info.name}:///etc/app.conf")
            return rest
        try:
            key = int(rest, 0)
        except ValueError:
            raise InvalidEndpoint(f"{url!r}: expected a System V key such as {info.name}://1234 or "
                                  f"{info.name}://0x4d2, or a file for ftok: {info.name}:///path") from None
        if not -(2**31) <= key < 2**32:
            raise InvalidEndpoint(f"{url!r}: a System V key is a 32-bit number")
        return str(key)
    raise AssertionError(kind)
