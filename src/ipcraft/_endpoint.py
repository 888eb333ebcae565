"""Endpoints: a URL parsed once into a frozen value whose scheme chooses the transport.

Address forms::

    unix:///abs/path  unix:rel/path  unix:@abstract     (also unix+seqpacket:, unix+dgram:)
    tcp://host:port   tcp://[::1]:port                   (also udp:)
    shm://name  ring://name  mq://name  bcast://name     one path component
    fifo:///abs/path  file:///abs/path                   a file path
    sysvmq://1234  sysvmq://0x4d2                        a System V key
    sysvmq:///path?proj_id=7                             the key ftok(path, proj_id) (default 1)

Options follow ``?``; each scheme accepts a known set, converted to typed values.  Options that are
secrets or objects (``authkey``, ``ssl_context``) are keyword arguments only, never in a URL.

Parsing is the one validation boundary before anything is created: every address (encodable for the
kernel, within its length limits) and every option value (type *and* range: what the system call
taking it can represent) is checked here, and any failure, whatever raised it, is an InvalidEndpoint
with the cause chained.  A transport therefore never creates a kernel object and then fails on a
value it could have refused first.
"""

from __future__ import annotations

import ipaddress
import math
import os
import types
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidEndpoint
from .serializers import Serializer, by_name

#: The largest value a C ``int`` holds: listen(2)'s backlog, setsockopt(2) buffer sizes, msgmnb.
INT_MAX = 2**31 - 1
#: The largest uid: (uid_t)-1 means "no uid" to the kernel.
UID_MAX = 2**32 - 2
#: poll(2) takes milliseconds in an int: longer timeouts cannot be waited for in one call anyway.
MAX_TIMEOUT = 1e6


def _int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    if isinstance(v, int):
        return v
    return int(str(v), 0)


def _int_in(lo: int, hi: int) -> Callable[[Any], int]:
    """A converter to an integer in ``lo..hi`` (both included)."""
    def conv(v: Any) -> int:
        n = _int(v)
        if not lo <= n <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}")
        return n
    return conv


def _float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number")
    f = float(v)
    if not math.isfinite(f) or not 0 <= f <= MAX_TIMEOUT:
        raise ValueError(f"expected a finite number from 0 to {MAX_TIMEOUT:g}")
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


_uid = _int_in(0, UID_MAX)


def _uids(v: Any) -> frozenset[int]:
    if isinstance(v, (str, bytes)):
        text = v.decode("ascii") if isinstance(v, bytes) else v
        return frozenset(_uid(x) for x in text.split(",") if x)
    return frozenset(_uid(x) for x in v)


def _hostname(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a str, not {type(v).__name__}")
    _check_host(v)
    return v


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
    "max_message_size": _Option(_int_in(1, 2**32 - 1), doc="largest message accepted or sent, in bytes"),
    "mode": _Option(_mode, doc="permission bits of what is created (default 600)"),
    "allowed_uids": _Option(_uids, doc="extra uids allowed as Unix peers (comma separated)"),
    "backlog": _Option(_int_in(1, INT_MAX), doc="listen() backlog"),
    "authkey": _Option(_keep, url=False, doc="bytes: shared secret for the TCP handshake"),
    "insecure": _Option(_bool, doc="TCP without an authkey (pickle is then refused)"),
    "ssl_context": _Option(_keep, url=False, doc="ssl.SSLContext for TLS over TCP"),
    "server_hostname": _Option(_hostname, doc="TLS server name to verify"),
    "nodelay": _Option(_bool, doc="TCP_NODELAY (default on)"),
    "pipe_size": _Option(_int_in(1, INT_MAX), doc="pipe capacity via F_SETPIPE_SZ"),
    "wait": _Option(_choice("block", "spin"), doc="shared memory: block (spin, then sleep) or spin"),
    "capacity": _Option(_int_in(1, 2**32), doc="ring data capacity in bytes (shm://: at most 2**30)"),
    "sync": _Option(_bool, doc="file://: msync every send and receive (survives an OS crash; slower)"),
    # HARD_MSGMAX and HARD_MSGSIZEMAX of the kernel: no sysctl allows more.
    "maxmsg": _Option(_int_in(1, 65536), doc="POSIX mq: messages the queue holds"),
    "msgsize": _Option(_int_in(1, 16 * 1024 * 1024), doc="POSIX mq: largest message"),
    "qbytes": _Option(_int_in(1, INT_MAX), doc="System V mq: bytes the queue holds"),
    "proj_id": _Option(_int_in(1, 255), doc="System V: ftok project id for a path key (ftok keeps 8 bits)"),
    "recv_buffer": _Option(_int_in(1, INT_MAX), doc="SO_RCVBUF for datagram sockets"),
    "access": _Option(_choice("rw", "r", "w"), doc="message queues: open to receive (r), send (w) or both"),
    "handshake_timeout": _Option(_float, doc="seconds allowed for a connection handshake"),
    "on_slow": _Option(_choice("drop", "block"),
                       doc="bcast://, at creation: drop (a lapped subscriber skips) or block (publishers wait)"),
    "slow_timeout": _Option(_float, doc="bcast:// block mode: evict a subscriber idle this many seconds (0: never)"),
    "start": _Option(_choice("next", "latest", "oldest"), doc="bcast:// subscriber: where it starts reading"),
    "max_subscribers": _Option(_int_in(1, 4096), doc="bcast://, at creation: subscriber slots in the ring"),
    "framing": _Option(_choice("ipcraft", "none", "lines", "length"),
                       doc="ipcraft (default) | none (message schemes) | lines, length (byte streams)"),
    "handshake": _Option(_bool, doc="with raw framing: run the peer handshake anyway (default off)"),
    "curve_keys": _Option(_keep, doc="ZeroMQ: this side's CURVE key pair (.key_secret file, or a (public, secret) "
                          "pair as a keyword argument)"),
    "curve_server": _Option(_keep, doc="ZeroMQ: the binding side's CURVE public key or .key file"),
    "curve_clients": _Option(_keep, doc="ZeroMQ: the CURVE public keys the binding side admits (directory, "
                             ".key file, or a list as a keyword argument)"),
    "role": _Option(_choice("push", "pull"), doc="ZeroMQ queue: push (send) or pull (receive)"),
    "topic": _Option(str, doc="ZeroMQ publish/subscribe: the topic sent, or the prefix subscribed to"),
    "hwm": _Option(_int_in(0, 2**31 - 1), doc="ZeroMQ: high-water mark in messages (default 1000; 0: none)"),
    "linger": _Option(_float, doc="ZeroMQ pair: seconds close() waits for the peer to take what was sent "
                      "(default 5)"),
    "heartbeat": _Option(_float, doc="ZeroMQ: seconds between heartbeats (default 1; a peer silent for 3 "
                         "is dropped; 0: off)"),
}

#: The framings each scheme takes (``framing=``): ipcraft's frames everywhere; without them, whole
#: kernel messages (``none``) where the kernel keeps boundaries, and newline-delimited (``lines``) or
#: 4-byte big-endian length-prefixed (``length``) messages on byte streams.
FRAMINGS: Mapping[str, frozenset[str]] = {
    "unix": frozenset({"ipcraft", "lines", "length"}),
    "tcp": frozenset({"ipcraft", "lines", "length"}),
    "fifo": frozenset({"ipcraft", "lines", "length"}),
    "unix+seqpacket": frozenset({"ipcraft", "none"}),
    "unix+dgram": frozenset({"ipcraft", "none"}),
    "udp": frozenset({"ipcraft", "none"}),
    "mq": frozenset({"ipcraft", "none"}),
    "sysvmq": frozenset({"ipcraft", "none"}),
}

_COMMON = frozenset({"serializer", "max_message_size"})
_RAW = frozenset({"framing"})
_ZMQ = _COMMON | {"insecure", "curve_keys", "curve_server", "curve_clients", "role", "topic", "hwm", "heartbeat",
                  "handshake_timeout", "linger"}


@dataclass(frozen=True)
class Scheme:
    """A URL scheme: its family (connection or queue), address form and accepted options."""

    name: str
    family: str  # "connection" | "queue" | "pubsub"
    address: str  # "unix" | "path" | "host_port" | "name" | "key"
    options: frozenset[str]
    summary: str
    #: Other families the scheme also serves (ZeroMQ: queue and pubsub besides connection).
    more_families: frozenset[str] = frozenset()

    def serves(self, family: str) -> bool:
        """Whether the facade of ``family`` (connection, queue, pubsub) takes this scheme."""
        return family == self.family or family in self.more_families


SCHEMES: Mapping[str, Scheme] = {s.name: s for s in (
    Scheme("unix", "connection", "unix",
           _COMMON | _RAW | {"mode", "allowed_uids", "backlog", "handshake_timeout", "handshake"},
           "AF_UNIX stream + framing; peer credentials checked"),
    Scheme("unix+seqpacket", "connection", "unix",
           _COMMON | _RAW | {"mode", "allowed_uids", "backlog", "handshake_timeout", "handshake"},
           "AF_UNIX seqpacket: the kernel keeps message boundaries"),
    Scheme("tcp", "connection", "host_port",
           _COMMON | _RAW | {"authkey", "insecure", "ssl_context", "server_hostname", "nodelay", "backlog",
                             "handshake_timeout", "handshake"},
           "TCP + framing; authkey handshake, optional TLS"),
    Scheme("shm", "connection", "name",  # no "mode": nothing named is created (memfd + abstract socket)
           _COMMON | {"wait", "capacity", "allowed_uids", "backlog", "handshake_timeout"},
           "two shared-memory rings per connection (fastest)"),
    Scheme("fifo", "queue", "path", _COMMON | _RAW | {"mode", "pipe_size"},
           "named pipe; messages never interleave"),
    Scheme("mq", "queue", "name", _COMMON | _RAW | {"mode", "maxmsg", "msgsize", "access"},
           "POSIX message queue (priority=)"),
    Scheme("sysvmq", "queue", "key", _COMMON | _RAW | {"mode", "qbytes", "proj_id", "access"},
           "System V message queue (type=)"),
    Scheme("unix+dgram", "queue", "unix", _COMMON | _RAW | {"mode", "recv_buffer", "allowed_uids"},
           "AF_UNIX datagrams"),
    Scheme("udp", "queue", "host_port", _COMMON | _RAW | {"recv_buffer", "insecure"},
           "UDP datagrams (unauthenticated)"),
    Scheme("ring", "queue", "name", _COMMON | {"wait", "capacity", "mode"},
           "named multi-producer multi-consumer shared-memory ring"),
    Scheme("file", "queue", "path", _COMMON | {"wait", "capacity", "mode", "sync"},
           "durable memory-mapped ring that survives crashes"),
    Scheme("bcast", "pubsub", "name",
           _COMMON | {"wait", "capacity", "mode", "on_slow", "slow_timeout", "start", "max_subscribers"},
           "one-to-many shared-memory broadcast ring"),
    Scheme("zmq+tcp", "connection", "host_port", _ZMQ, "ZeroMQ over TCP (pyzmq); CURVE by default",
           frozenset({"queue", "pubsub"})),
    Scheme("zmq+ipc", "connection", "path", _ZMQ | {"mode"}, "ZeroMQ over a Unix socket (pyzmq); CURVE by default",
           frozenset({"queue", "pubsub"})),
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
    def framing(self) -> str:
        """How messages are delimited: ``"ipcraft"`` (its frames, the default), ``"none"``,
        ``"lines"`` or ``"length"`` (see FRAMINGS)."""
        return str(self.options.get("framing", "ipcraft"))

    @property
    def handshake(self) -> bool:
        """Whether the peer handshake runs: always with ipcraft's frames; with a raw framing only
        when ``handshake=true`` asks for it."""
        return self.framing == "ipcraft" or bool(self.options.get("handshake", False))

    def check_framing(self) -> None:
        """Refuse a framing this scheme cannot keep, or a serializer other than raw with raw framing.

        Raises:
            InvalidEndpoint: naming what the scheme takes.
        """
        framing = self.framing
        if framing == "ipcraft":
            if self.options.get("handshake") is False:
                raise InvalidEndpoint(f"{self}: handshake=false applies to a raw framing (framing=lines, length "
                                      "or none); ipcraft's frames always run the peer handshake")
            return
        allowed = FRAMINGS.get(self.scheme, frozenset({"ipcraft"}))
        if framing not in allowed:
            raise InvalidEndpoint(f"{self}: {self.scheme}:// takes framing={' | '.join(sorted(allowed))}, not "
                                  f"{framing} (none: message schemes, lines/length: byte streams)")
        serializer = self.options.get("serializer")
        if serializer is not None and serializer.id != 0:
            raise InvalidEndpoint(f"{self}: framing={framing} carries raw bytes only (no serializer id "
                                  f"travels); serializer={serializer.name} needs framing=ipcraft")

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
        address = _parse_address(info, _unquote(rest, url), url)
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
        query = [(k, _format_option(k, v)) for k, v in sorted(self.options.items())
                 if OPTIONS[k].url and not isinstance(v, (tuple, list, bytes))]  # key pairs given as values
        if query:
            base += "?" + urllib.parse.urlencode(query)
        return base


def _quote(s: str) -> str:
    return urllib.parse.quote(s, safe="/@:[]", errors="surrogateescape")


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


def _unquote(text: str, url: str) -> str:
    """The address with its %-escapes decoded, as one run of bytes: escapes and characters that are not
    UTF-8 stand for the raw bytes of a file name (as os.fsdecode does), however they were mixed, so
    that the canonical URL parses back to the same address."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise InvalidEndpoint(f"{url!r}: the address holds a character no file name can: {exc.reason}") from exc
    return urllib.parse.unquote_to_bytes(raw).decode("utf-8", "surrogateescape")


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
            if key == "capacity":
                _check_capacity(info.name, converted)
        except Exception as exc:  # any failure of a converter means the value is bad: one typed error
            raise InvalidEndpoint(f"{url!a}: bad value {value!a} for option {key!r}: {exc}") from exc
        if key == "mode" and isinstance(value, int) and not isinstance(value, bool):
            converted = value
        out[key] = converted
    return out


#: The largest ``capacity=`` each shared-memory scheme lays out (its index arithmetic's limit); the
#: ring engines (_rings.spsc for shm://, _rings.mpmc for ring:// and file://, _rings.bcast for bcast://)
#: take theirs from here.
MAX_RING_CAPACITY: Mapping[str, int] = types.MappingProxyType({"shm": 1 << 30, "ring": 1 << 32, "file": 1 << 32,
                                                                  "bcast": 1 << 32})


def _check_capacity(scheme: str, capacity: int) -> None:
    limit = MAX_RING_CAPACITY[scheme]
    if capacity > limit:
        raise ValueError(f"a {scheme}:// ring holds at most {limit} bytes")


def _check_host(host: str) -> None:
    """Refuse a host name the resolver cannot take: not IDNA-encodable, a label over 63 bytes, or
    longer than 253 bytes (RFC 1035).  Raises ValueError (UnicodeError is one) naming the problem."""
    if not host:
        raise ValueError("the host name is empty")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    encoded = host.encode("idna")  # raises UnicodeError for an empty or over-long label
    if len(encoded.rstrip(b".")) > 253:
        raise ValueError(f"a host name is at most 253 bytes, this one is {len(encoded)}")


def _check_fs(text: str, url: str) -> None:
    """Refuse a name or path that cannot be turned into the bytes the kernel takes (a lone surrogate)."""
    try:
        os.fsencode(text)
    except UnicodeError as exc:
        raise InvalidEndpoint(f"{url!a}: the name cannot be encoded for the kernel ({exc})") from exc


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
            _check_fs(rest, url)
            return rest
        if not rest or rest.endswith("/"):
            raise InvalidEndpoint(f"{url!r}: expected a file path such as {info.name}:///run/app.sock")
        if "\0" in rest:
            raise InvalidEndpoint(f"{url!r}: a path must not contain NUL")
        _check_fs(rest, url)
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
            raise InvalidEndpoint(f"{url!a}: write an IPv6 address in brackets: [::1]:port")
        else:
            try:
                _check_host(host)
            except ValueError as exc:
                raise InvalidEndpoint(f"{url!a}: bad host name: {exc}") from exc
        return f"{host}:{int(port)}"
    if kind == "name":
        name = rest[1:] if rest.startswith("/") else rest
        from ._names import validate_name
        try:
            return validate_name(name, f"{info.name}://")
        except InvalidEndpoint as exc:
            raise InvalidEndpoint(f"{url!a}: {exc}") from exc
    if kind == "key":
        if rest.startswith("/"):  # sysvmq:///path?proj_id=N: the key is ftok(path, proj_id)
            if rest.endswith("/") or "\0" in rest:
                raise InvalidEndpoint(f"{url!r}: expected a file path such as {info.name}:///etc/app.conf")
            _check_fs(rest, url)
            return rest
        try:
            key = int(rest, 0)
        except ValueError:
            raise InvalidEndpoint(f"{url!r}: expected a System V key such as {info.name}://1234 or "
                                  f"{info.name}://0x4d2, or a file for ftok: {info.name}:///path") from None
        if not -(2**31) <= key < 2**32:
            raise InvalidEndpoint(f"{url!r}: a System V key is a 32-bit number")
        if key == 0:  # msgget(0, ...) would create a new unnamed queue on every open, never found again
            raise InvalidEndpoint(f"{url!r}: key 0 is IPC_PRIVATE (a new private queue on every open, which "
                                  "no other process can find); choose a nonzero key or a file for ftok")
        return str(key)
    raise AssertionError(kind)
