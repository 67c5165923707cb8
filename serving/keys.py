"""API keys: a random token shown once, kept only as its SHA-256; scopes and a per-key rate limit.

The store is ``<workspace>/serving/api-keys.json`` (mode 0600). A token reads ``uaap_<id>_<secret>``: the id
finds the entry, the secret's hash is compared in constant time. The secret is 256 random bits, so an unsalted
SHA-256 cannot be brute-forced and costs microseconds per request (scrypt would cost tens of milliseconds on
every call). The API rereads the store when it changes, so a revoked key stops working without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from uaap.errors import UaapError

SCOPES = ("predict", "admin")  # admin can do everything predict can, and read /metrics
TOKEN = re.compile(r"^uaap_([a-f0-9]{12})_([A-Za-z0-9_-]{20,100})$")
DEFAULT_RATE = 600  # requests per minute


class ApiKeyError(UaapError):
    """A key operation got a bad value (unknown id or scope)."""


@dataclass(frozen=True)
class ApiKey:
    """One stored key (never the token itself)."""

    id: str
    name: str
    sha256: str
    scopes: tuple[str, ...]
    rate_per_minute: int
    created: float
    revoked: float | None = None

    def allows(self, scope: str) -> bool:
        """Whether the key carries ``scope`` (admin carries every scope)."""
        return scope in self.scopes or "admin" in self.scopes


def default_store() -> Path:
    """``<workspace>/serving/api-keys.json``."""
    from uaap import workspace

    return workspace.home() / "serving" / "api-keys.json"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _read(path: Path) -> list[ApiKey]:
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text())["keys"]
        return [ApiKey(**{**r, "scopes": tuple(r["scopes"])}) for r in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise ApiKeyError(
            f"API key store {path} is unreadable ({exc}); restore it or move it away and create keys again"
        ) from None


def _write(path: Path, keys: list[ApiKey]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"keys": [asdict(k) for k in keys]}, fh, indent=1)
    os.replace(tmp, path)


def create(
    name: str, scopes: tuple[str, ...] = ("predict",), rate_per_minute: int = DEFAULT_RATE, path: Path | None = None
) -> tuple[str, ApiKey]:
    """A new key: returns the token (shown once, never stored) and the stored entry."""
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ApiKeyError(f"scopes {','.join(scopes) or '(none)'!r}: choose from {', '.join(SCOPES)} (comma-separated)")
    if rate_per_minute < 1:
        raise ApiKeyError(f"rate {rate_per_minute} must be at least 1 request per minute")
    path = path or default_store()
    keys = _read(path)
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    entry = ApiKey(key_id, name, _digest(secret), tuple(dict.fromkeys(scopes)), rate_per_minute, time.time())
    _write(path, [*keys, entry])
    return f"uaap_{key_id}_{secret}", entry


def list_keys(path: Path | None = None) -> list[ApiKey]:
    """Every stored key, revoked ones included."""
    return _read(path or default_store())


def revoke(key_id: str, path: Path | None = None) -> ApiKey:
    """Mark a key revoked (kept, so the API can answer 403 rather than 401)."""
    path = path or default_store()
    keys = _read(path)
    found = [k for k in keys if k.id == key_id]
    if not found:
        known = ", ".join(k.id for k in keys) or "none"
        raise ApiKeyError(f"no API key with id {key_id!r}; ids: {known} (`uaap api-keys list`)")
    done = replace(found[0], revoked=found[0].revoked or time.time())
    _write(path, [done if k.id == key_id else k for k in keys])
    return done


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class KeyRing:
    """What the API checks tokens against: the store, reread when its file changes; per-key token buckets."""

    path: Path
    _keys: dict[str, ApiKey] = field(default_factory=dict)
    _stamp: tuple[float, int] | None = None
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._keys = {k.id: k for k in _read(self.path)}
            self._stamp = stamp

    def check(self, token: str | None) -> tuple[str, ApiKey | None]:
        """``("ok", key)``, ``("missing"|"unknown", None)`` or ``("revoked", key)``."""
        if not token:
            return "missing", None
        m = TOKEN.match(token)
        if not m:
            return "unknown", None
        with self._lock:
            self._refresh()
            key = self._keys.get(m.group(1))
        if key is None or not hmac.compare_digest(key.sha256, _digest(m.group(2))):
            return "unknown", None
        return ("revoked", key) if key.revoked else ("ok", key)

    def take(self, key: ApiKey) -> float:
        """Spend one request of ``key``'s budget: 0.0 if allowed, else the seconds until one is free."""
        now = time.monotonic()
        rate = key.rate_per_minute / 60.0
        with self._lock:
            b = self._buckets.setdefault(key.id, _Bucket(float(key.rate_per_minute), now))
            b.tokens = min(float(key.rate_per_minute), b.tokens + (now - b.stamp) * rate)
            b.stamp = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return 0.0
            return (1.0 - b.tokens) / rate
