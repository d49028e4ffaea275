"""Signed sources: ed25519 keys whose public half is the source id.

Theory of operation
-------------------

A replica made with ``signing_key=`` takes the key's :attr:`SigningKey.id`
as its source id and signs every entry it writes. The signature covers the
*canonical bytes* of the entry::

    canonical(change, ts, source) = JSON of [change, ts, source]
        - object keys sorted, no whitespace, UTF-8 (orjson's OPT_SORT_KEYS)
        - ts canonical: a whole number written as an integer
        - strings as JSON escapes them (orjson: only what JSON requires)

and travels as the entry's fourth element, ``[change, ts, source,
signature]`` (the slot JS scuttlebutt's ``security.js`` used), or in a
batch's ``"signatures"`` list. The signature is 64 bytes in unpadded
URL-safe base64 (86 characters); an id is the 32-byte public key the same
way (43 characters).

Relays keep a signature exactly as it came and forward it with the entry,
whether or not they verify; so every replica refuses a slot that is not the
one spelling of a signature's 64 bytes (:func:`is_signature`): base64 leaves
four spare bits in the last of 86 characters, and a second spelling of a
valid signature would otherwise be kept and relayed as a different entry.
A replica made with ``verify=True`` also refuses any entry that is
unsigned, whose source is not a public key, or whose signature does not
match its change, stamp and source (``bad-signature``); with ``writers=``
it also refuses sources not among the writers (``not-a-writer``).
Verifying replicas refuse snapshots: a snapshot folds many sources' entries
and carries none of their signatures.

The cryptography is libsodium's, through PyNaCl (the Python Cryptographic
Authority's binding): nothing here is hand-written but the encoding.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import nacl.signing

__all__ = [
    "ID_LENGTH",
    "SIGNATURE_LENGTH",
    "SigningKey",
    "Writers",
    "canonical",
    "is_key_id",
    "is_signature",
    "verifier",
]

#: Characters in a signing key's id (32 bytes, unpadded URL-safe base64).
ID_LENGTH = 43
#: Characters in a signature (64 bytes, unpadded URL-safe base64).
SIGNATURE_LENGTH = 86

#: Who may write to a verifying replica: a set of ids, or a predicate.
Writers = Iterable[str] | Callable[[str], bool]

_KEY_PREFIX = "repred-ed25519-seed:"

#: Public keys a verifier keeps decoded, at most (a replica admits 16,384
#: sources by default; past this the cache starts afresh).
_MAX_KEYS = 32_768


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str, size: int) -> bytes | None:
    """The bytes of an unpadded URL-safe base64 text of ``size`` bytes, or None."""
    if type(text) is not str or not text.isascii():
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(data) != size or _b64(data) != text:
        return None  # not the one spelling of these bytes
    return data


def canonical(change: Any, ts: float, source: str) -> bytes:
    """The bytes a signature covers (see the module docstring)."""
    return orjson.dumps([change, ts, source], option=orjson.OPT_SORT_KEYS)


def is_key_id(source: str) -> bool:
    """Whether ``source`` is a public key id (43 URL-safe base64 characters)."""
    return len(source) == ID_LENGTH and _unb64(source, 32) is not None


def is_signature(slot: Any) -> bool:
    """Whether ``slot`` is the one spelling of a signature's 64 bytes (86
    URL-safe base64 characters, the spare bits of the last one clear)."""
    return (
        type(slot) is str
        and len(slot) == SIGNATURE_LENGTH
        and _unb64(slot, 64) is not None
    )


class SigningKey:
    """An ed25519 signing key; its public half, as text, is :attr:`id`.

    Make one with :meth:`generate` or :meth:`load`; keep it with
    :meth:`save`. Its repr shows the id only: the secret never appears in
    logs or errors.
    """

    __slots__ = ("_key", "id")

    def __init__(self, seed: bytes) -> None:
        if type(seed) is not bytes or len(seed) != 32:
            raise ValueError("an ed25519 seed is 32 bytes")
        import nacl.signing  # (on first use: most programs never sign)

        self._key = nacl.signing.SigningKey(seed)
        #: The public key, as the source id of a signed replica.
        self.id: str = _b64(bytes(self._key.verify_key))

    def __repr__(self) -> str:
        return f"<SigningKey id={self.id!r}>"

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key."""
        return cls(os.urandom(32))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """The key saved at ``path`` by :meth:`save`.

        Raises:
            OSError: the file cannot be read.
            ValueError: the file does not hold a key.
        """
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(len(_KEY_PREFIX) + 64).strip()
        seed = _unb64(text.removeprefix(_KEY_PREFIX), 32)
        if not text.startswith(_KEY_PREFIX) or seed is None:
            raise ValueError(f"{os.fspath(path)} does not hold a repred signing key")
        return cls(seed)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key to a new file that only its owner can read (0600).

        Raises:
            FileExistsError: ``path`` exists (a key is never overwritten).
            OSError: the file cannot be written.
        """
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(_KEY_PREFIX + _b64(bytes(self._key)) + "\n")

    def sign(self, change: Any, ts: float, source: str) -> str:
        """The signature of an entry (over its :func:`canonical` bytes)."""
        return _b64(self._key.sign(canonical(change, ts, source)).signature)


def verifier() -> Callable[[Any, float, str, Any], bool]:
    """A function ``check(change, ts, source, signature) -> bool``.

    It keeps the public keys it has decoded (one per source id that passed
    the bounds of the replica that uses it).
    """
    import nacl.exceptions  # (on first use: most programs never verify)
    import nacl.signing

    # Only keys that verified a signature are kept, so what a peer can make
    # this hold is bounded by the sources the replica admits.
    keys: dict[str, nacl.signing.VerifyKey] = {}

    def check(change: Any, ts: float, source: str, signature: Any) -> bool:
        if type(signature) is not str or len(signature) != SIGNATURE_LENGTH:
            return False
        # Only the one spelling: another would verify (the signature is
        # over bytes) and be kept and relayed as it came.
        sig = _unb64(signature, 64)
        if sig is None:
            return False
        key = keys.get(source)
        if key is None:
            raw = _unb64(source, 32) if len(source) == ID_LENGTH else None
            if raw is None:
                return False
            key = nacl.signing.VerifyKey(raw)  # (32 bytes: it checks no more)
        try:
            key.verify(canonical(change, ts, source), sig)
        except nacl.exceptions.BadSignatureError:
            return False
        if len(keys) >= _MAX_KEYS:
            keys.clear()  # (keys anyone can make: a bounded cache, not a ledger)
        keys[source] = key
        return True

    return check
