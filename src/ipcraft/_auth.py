"""Who may talk to whom: the authkey handshake for TCP and the peer-credential policy for Unix sockets.

Sans-I/O: these objects compute what to send and judge what arrived; the transport
moves the bytes.

**Authkey handshake** (every TCP connection starts with it, so a side that wants an authkey and a side
that does not find out at once instead of deadlocking, CPython #123736)::

    both sides send   HELLO = b"IPCRAFT" + version(1) + flags(1) + nonce(32)        41 bytes
                      flags bit 0: "I have an authkey"
    both sides send   PROOF = HMAC-SHA256(authkey, role + peer_nonce + own_nonce)   32 bytes
                      role is b"client" or b"server", so a proof cannot be reflected back

Each side checks the other's proof with a constant-time comparison.  Both directions are proven, so a
client also knows the server holds the key.  Without authkeys on both sides, only the HELLOs pass and
the connection is *unauthenticated*: pickle is then refused.

**Peer credentials**: on a Unix socket the kernel reports the peer's pid, uid and gid (SO_PEERCRED),
which cannot be forged.  A listener accepts only its own uid (or those in ``allowed_uids``) and tells
the client so in a one-byte verdict; a client likewise accepts only a server running as its own uid,
root, or one in ``allowed_uids``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Final

from .errors import AuthenticationError, ProtocolError

_MAGIC: Final = b"IPCRAFT"
_VERSION: Final = 1
_FLAG_AUTHKEY: Final = 1
HELLO_SIZE: Final = len(_MAGIC) + 2 + 32
PROOF_SIZE: Final = 32

#: Unix listener verdicts, sent as one byte right after accept().
VERDICT_OK: Final = b"\x01"
VERDICT_REFUSED: Final = b"\x00"




class Handshake:
    """One side of the authkey handshake.

    Usage: send ``hello()``; pass the peer's 41 bytes to ``receive_hello()``, which returns the proof to
    send (or None when neither side has a key); pass the peer's 32-byte proof to ``receive_proof()``.
    ``authenticated`` is then True when both sides proved the key.
    """

    def __init__(self, authkey: bytes | None, role: str) -> None:
        if authkey is not None and not isinstance(authkey, (bytes, bytearray)):
            raise TypeError(f"authkey must be bytes, not {type(authkey).__name__}")
        if authkey is not None and len(authkey) == 0:
            raise ValueError("authkey must not be empty")
        if role not in ("client", "server"):
            raise ValueError("role is 'client' or 'server'")
        self._key = bytes(authkey) if authkey is not None else None
        self._role = role.encode()
        self._peer_role = b"server" if role == "client" else b"client"
        self._nonce = os.urandom(32)
        self._peer_nonce = b""
        self.authenticated = False

    def hello(self) -> bytes:
        flags = _FLAG_AUTHKEY if self._key is not None else 0
        return _MAGIC + struct.pack("BB", _VERSION, flags) + self._nonce

    def receive_hello(self, data: bytes) -> bytes | None:
        """Judge the peer's HELLO; return our PROOF to send, or None if no proof is exchanged."""
        if len(data) != HELLO_SIZE or not data.startswith(_MAGIC):
            raise ProtocolError("the peer did not start the ipcraft TCP handshake (is it ipcraft, and the "
                                "same version?)")
        version, flags = data[len(_MAGIC)], data[len(_MAGIC) + 1]
        if version != _VERSION:
            raise ProtocolError(f"the peer speaks handshake version {version}; this side speaks {_VERSION}")
        peer_has_key = bool(flags & _FLAG_AUTHKEY)
        if peer_has_key != (self._key is not None):
            mine = "requires an authkey" if self._key is not None else "has no authkey (insecure=True)"
            theirs = "requires one" if peer_has_key else "has none (insecure=True)"
            raise AuthenticationError(f"this side {mine} but the peer {theirs}: both sides must pass the "
                                      "same authkey=, or both insecure=True")
        self._peer_nonce = data[len(_MAGIC) + 2:]
        if self._key is None:
            return None
        return hmac.new(self._key, self._role + self._peer_nonce + self._nonce, hashlib.sha256).digest()

    def receive_proof(self, proof: bytes) -> None:
        """Check the peer's PROOF; raises AuthenticationError if it does not hold our authkey."""
        assert self._key is not None
        expected = hmac.new(self._key, self._peer_role + self._nonce + self._peer_nonce,
                            hashlib.sha256).digest()
        if not hmac.compare_digest(expected, bytes(proof)):
            raise AuthenticationError("the peer's authkey proof is wrong: the two sides hold different "
                                      "authkeys")
        self.authenticated = True


def uid_allowed(uid: int | None, allowed_uids: frozenset[int] | None, *, allow_root: bool = False) -> bool:
    """The Unix peer-credential policy: the peer's uid must be ours, listed, or (for servers) root."""
    if uid is None:
        return False
    if uid == os.geteuid():
        return True
    if allow_root and uid == 0:
        return True
    return allowed_uids is not None and uid in allowed_uids
