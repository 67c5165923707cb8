"""Files encrypted at rest: AES-256-GCM, authenticated, so a changed byte is refused rather than loaded.

One blob is ``MAGIC | nonce (12 bytes) | ciphertext and tag``; the artefact's name is bound in as associated
data, so a file swapped for another artefact of the same key is refused too. The key (32 bytes) comes from
``$UAAP_MODEL_KEY`` (base64 or hex) or from a key file (base64, mode 0600, :func:`create_key_file`). Its
fingerprint (the first 16 hex digits of its SHA-256) travels with what it encrypts, so "wrong key" and
"tampered" read as two different errors. Decryption happens in memory: nothing decrypted is written.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path

from uaap.errors import UaapError

MAGIC = b"UAAPAES1"
NONCE_BYTES = 12
KEY_BYTES = 32
KEY_ENV = "UAAP_MODEL_KEY"


class AtRestError(UaapError):
    """A key is missing or malformed, or an encrypted file fails authentication."""


def default_key_file() -> Path:
    """``<workspace>/keys/model-at-rest.key``. The workspace root is resolved as :func:`uaap.workspace.home` does
    (``$UAAP_HOME`` or ``./.uaap``), without importing it: the workspace encrypts its checkpoints with this module."""
    return Path(os.environ.get("UAAP_HOME", ".uaap")).expanduser().resolve() / "keys" / "model-at-rest.key"


def fingerprint(key: bytes) -> str:
    """A public name for ``key``: 16 hex digits of its SHA-256 (tells which key a file needs, reveals nothing)."""
    return hashlib.sha256(b"uaap-at-rest:" + key).hexdigest()[:16]


def _decode_key(text: str, origin: str) -> bytes:
    text = text.strip()
    for decode in (bytes.fromhex, base64.b64decode, base64.urlsafe_b64decode):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise AtRestError(
        f"the key in {origin} is not {KEY_BYTES} bytes of base64 or hex (AES-256 needs a 32-byte key); "
        "make one with `uaap register --encrypt` (it writes a key file) or `openssl rand -base64 32`"
    )


def create_key_file(path: Path) -> bytes:
    """Write a fresh random key to ``path`` (mode 0600, never overwritten) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise AtRestError(f"key file {path} already exists; it is kept (load it instead of making a new one)") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(key).decode() + "\n")
    return key


def load_key(path: Path | None = None, *, create: bool = False) -> bytes:
    """The at-rest key: ``$UAAP_MODEL_KEY`` if set, else the key file (made when missing and ``create``)."""
    env = os.environ.get(KEY_ENV)
    if env:
        return _decode_key(env, f"${KEY_ENV}")
    path = path or default_key_file()
    if not path.is_file():
        if create:
            return create_key_file(path)
        raise AtRestError(
            f"no at-rest key: ${KEY_ENV} is not set and key file {path} does not exist; set the variable or pass "
            "the key file the model was encrypted with"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise AtRestError(
            f"key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}` and try again"
        )
    return _decode_key(path.read_text(), f"key file {path}")


def is_encrypted(blob: bytes) -> bool:
    """Whether ``blob`` is an at-rest encrypted artefact (starts with :data:`MAGIC`)."""
    return blob[: len(MAGIC)] == MAGIC


def encrypt(data: bytes, key: bytes, name: str) -> bytes:
    """AES-256-GCM of ``data`` with a fresh nonce, bound to the artefact ``name``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(key) != KEY_BYTES:
        raise AtRestError(f"an AES-256 key is {KEY_BYTES} bytes, not {len(key)}")
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, data, MAGIC + name.encode())


def decrypt(blob: bytes, key: bytes, name: str) -> bytes:
    """Inverse of :func:`encrypt`; a changed byte, another artefact's file or another key is refused."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not is_encrypted(blob) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
        raise AtRestError(f"artefact {name!r} is not an at-rest encrypted file (no {MAGIC.decode()} header)")
    nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES :], MAGIC + name.encode())
    except InvalidTag:
        raise AtRestError(
            f"artefact {name!r} failed authentication: it was changed after it was encrypted, or it belongs to "
            "another artefact; refusing to load it (register the run again from its run folder)"
        ) from None
