"""A federation's CKKS key files: make, read, check and load them, on the client's and the server's side.

``uaap keys init --out DIR`` (:func:`generate_keys`) writes ``DIR/secret.ckks`` (mode 0600, for clients only),
``DIR/public.ckks`` (for the server) and ``DIR/fingerprint.txt``. Each file is a ``UAAP-CKKS/1`` line, a JSON
header (parameters, whether it holds the secret key, the fingerprint) and TenSEAL's serialisation. Loading
checks the parameters and that the header's fingerprint matches the context, so a corrupt or altered file
is refused before it is used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uaap.config import RunConfig
from uaap.crypto.params import (
    COEFF_MOD_BIT_SIZES,
    CT_BYTES,
    FILE_MAGIC,
    FINGERPRINT_FILE,
    FORMAT,
    POLY_MODULUS_DEGREE,
    PUBLIC_FILE,
    SCALE_BITS,
    SECRET_FILE,
    VALUES_PER_CT,
)
from uaap.crypto.seal import SealTools, fresh_ciphertext_meta
from uaap.errors import ConfigError, KeyMaterialError
from uaap.protocol import NODE_HE_SECRET_CONTEXT

log = logging.getLogger("uaap.crypto")


@dataclass(frozen=True, eq=False)
class HEContext:
    """A loaded CKKS context plus what the wire format needs from it."""

    context: Any  # tenseal.Context
    fingerprint: str
    modulus: int
    seal_prefix: bytes  # SEAL metadata of a fresh ciphertext (parms_id, NTT flag, size, N, scale, array header)
    seal: SealTools
    path: str = ""

    @property
    def has_secret_key(self) -> bool:
        """Whether this context can decrypt (client side) or only encrypt and add (server side)."""
        return bool(self.context.has_secret_key())

    @property
    def short(self) -> str:
        """The fingerprint's first 16 hex digits, for messages."""
        return self.fingerprint[:16]


@dataclass(frozen=True)
class KeyFiles:
    """Where :func:`generate_keys` wrote a federation's contexts."""

    secret: Path
    public: Path
    fingerprint_file: Path
    fingerprint: str


def _public_bytes(ctx: Any) -> bytes:
    pub = ctx.copy()
    if pub.has_secret_key():
        pub.make_context_public()
    data: bytes = pub.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    return data


def fingerprint_of(ctx: Any) -> str:
    """SHA-256 (hex) of a TenSEAL context's public part; equal for a secret context and its public twin."""
    return hashlib.sha256(_public_bytes(ctx)).hexdigest()


def _modulus() -> int:
    import tenseal.sealapi as sealapi

    primes = sealapi.CoeffModulus.Create(POLY_MODULUS_DEGREE, list(COEFF_MOD_BIT_SIZES))
    return int(primes[0].value())


def _new_tenseal_context() -> Any:
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, POLY_MODULUS_DEGREE, coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES))
    ctx.global_scale = 2.0**SCALE_BITS
    return ctx


def _wrap(ctx: Any, path: str = "") -> HEContext:
    """Check that ``ctx`` has UAAP's parameters and derive the wire-format constants."""
    if not ctx.has_public_key():
        raise KeyMaterialError(
            f"CKKS context {path or '(in memory)'} has no public key; recreate it with `uaap keys init`"
        )
    ctx.global_scale = 2.0**SCALE_BITS
    meta = fresh_ciphertext_meta(ctx)
    size, degree, levels = struct.unpack_from("<QQQ", meta, 33)
    (scale,) = struct.unpack_from("<d", meta, 57)
    if (size, degree, levels, scale) != (2, POLY_MODULUS_DEGREE, 1, 2.0**SCALE_BITS) or meta[32] != 1:
        raise KeyMaterialError(
            f"CKKS context {path or '(in memory)'} has parameters (N={degree}, data primes={levels}, scale={scale:g}); "
            f"UAAP expects N={POLY_MODULUS_DEGREE}, coeff_mod_bit_sizes={list(COEFF_MOD_BIT_SIZES)}, "
            f"scale 2**{SCALE_BITS}: make keys with `uaap keys init`"
        )
    return HEContext(ctx, fingerprint_of(ctx), _modulus(), meta, SealTools.of(ctx), path)


def generate_keys(out_dir: str | Path, *, overwrite: bool = False) -> KeyFiles:
    """Make a federation's CKKS contexts: secret (mode 0600), public, fingerprint, and a .gitignore."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    files = KeyFiles(out / SECRET_FILE, out / PUBLIC_FILE, out / FINGERPRINT_FILE, "")
    if files.secret.exists() and not overwrite:
        raise KeyMaterialError(
            f"{files.secret} already exists; pass --force to replace it (every client then needs the new file)"
        )
    ctx = _new_tenseal_context()
    hctx = _wrap(ctx)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def payload(secret: bool) -> bytes:
        header = {
            "format": FORMAT,
            "scheme": "ckks",
            "poly_modulus_degree": POLY_MODULUS_DEGREE,
            "coeff_mod_bit_sizes": list(COEFF_MOD_BIT_SIZES),
            "scale_bits": SCALE_BITS,
            "security": "128-bit (HE standard, tc128)",
            "secret_key": secret,
            "fingerprint": hctx.fingerprint,
            "created": created,
        }
        body = (
            ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
            if secret
            else _public_bytes(ctx)
        )
        return FILE_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + body

    (out / ".gitignore").write_text(f"# never commit a secret CKKS context\n{SECRET_FILE}\n")
    _write_private(files.secret, payload(True))
    tmp = files.public.with_name(files.public.name + ".tmp")
    tmp.write_bytes(payload(False))
    os.replace(tmp, files.public)
    files.fingerprint_file.write_text(hctx.fingerprint + "\n")
    return KeyFiles(files.secret, files.public, files.fingerprint_file, hctx.fingerprint)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_key_file(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the TenSEAL bytes of a context file written by :func:`generate_keys`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise KeyMaterialError(
            f"CKKS context file {str(p)!r} does not exist; create keys with `uaap keys init --out DIR`"
        )
    data = p.read_bytes()
    if not data.startswith(FILE_MAGIC):
        raise KeyMaterialError(f"{p} is not a UAAP CKKS context file (no {FILE_MAGIC!r} header); use `uaap keys init`")
    end = data.index(b"\n", len(FILE_MAGIC))
    return json.loads(data[len(FILE_MAGIC) : end]), data[end + 1 :]


def load_context(path: str | Path) -> HEContext:
    """Load a context file (cached per process; simulated ClientApps are rebuilt for every message)."""
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except OSError:
        raise KeyMaterialError(
            f"CKKS context file {str(path)!r} does not exist; create keys with `uaap keys init --out DIR`"
        ) from None
    return _load_cached(str(p), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> HEContext:
    import tenseal as ts

    header, body = read_key_file(path)
    try:
        ctx = ts.context_from(body)
    except Exception as exc:
        raise KeyMaterialError(
            f"{path} holds no readable TenSEAL context ({exc}); recreate it with `uaap keys init`"
        ) from exc
    hctx = _wrap(ctx, path)
    if header.get("fingerprint") != hctx.fingerprint:
        raise KeyMaterialError(
            f"{path}: context fingerprint {hctx.short} differs from its header's "
            f"{str(header.get('fingerprint'))[:16]}; "
            "the file is corrupt or was altered: copy it again from the key holder"
        )
    if bool(header.get("secret_key")) != hctx.has_secret_key:
        raise KeyMaterialError(f"{path}: header says secret_key={header.get('secret_key')} but the context disagrees")
    return hctx


def inspect_context(path: str | Path) -> dict[str, Any]:
    """What a context file holds (kind, parameters, fingerprint), never key material."""
    header, _ = read_key_file(path)
    hctx = load_context(path)
    return {
        "file": str(Path(path).expanduser()),
        "kind": "secret (data owners only)" if hctx.has_secret_key else "public (server)",
        "secret_key": hctx.has_secret_key,
        "public_key": bool(hctx.context.has_public_key()),
        "scheme": "ckks",
        "poly_modulus_degree": POLY_MODULUS_DEGREE,
        "coeff_mod_bit_sizes": list(COEFF_MOD_BIT_SIZES),
        "log2_q": sum(COEFF_MOD_BIT_SIZES),
        "security": "128-bit: log2 q <= 218 at N=8192 (HE standard)",
        "scale": f"2**{SCALE_BITS}",
        "values_per_ciphertext": VALUES_PER_CT,
        "bytes_per_parameter": CT_BYTES / VALUES_PER_CT,
        "fingerprint": hctx.fingerprint,
        "created": header.get("created", ""),
        "mode": oct(Path(path).expanduser().stat().st_mode & 0o777),
    }


def client_context(cfg: RunConfig, node_config: Mapping[str, Any] | None = None) -> HEContext:
    """The client's secret context: node config ``he-secret-context`` first, then the run config's path."""
    path = str((node_config or {}).get(NODE_HE_SECRET_CONTEXT, "") or cfg.he_secret_context)
    if not path:
        raise KeyMaterialError(
            "secure-aggregation='ckks' but this client has no secret context: pass --node-config "
            "'he-secret-context=\"DIR/secret.ckks\"' (or he-secret-context in the run config); make keys with "
            "`uaap keys init --out DIR`"
        )
    hctx = load_context(path)
    if not hctx.has_secret_key:
        raise KeyMaterialError(f"{path} is a public context; a client needs the secret one ({SECRET_FILE})")
    return hctx


def server_context(path: str | Path) -> HEContext:
    """The server's public context; refuses a context that carries a secret key."""
    hctx = load_context(path)
    if hctx.has_secret_key:
        raise KeyMaterialError(
            f"{path} carries a secret key; the server must hold only the public context ({PUBLIC_FILE}, "
            f"fingerprint {hctx.short}). Give it DIR/{PUBLIC_FILE} and keep {SECRET_FILE} with the data owners"
        )
    return hctx


def ensure_simulation_keys(cfg: RunConfig) -> RunConfig:
    """For simulations only: make (or reuse) keys under ``<UAAP_HOME>/keys/<run-id>/`` when no paths are set."""
    if not cfg.secure:
        return cfg
    if cfg.he_public_context and cfg.he_secret_context:
        return cfg
    if cfg.he_public_context or cfg.he_secret_context:
        raise ConfigError(
            "give both he-public-context and he-secret-context (or neither, to let a simulation make keys); "
            f"got he-public-context={cfg.he_public_context!r}, he-secret-context={cfg.he_secret_context!r}"
        )
    if not cfg.run_id:
        raise ConfigError("simulation keys are stored per run: set run-id before calling ensure_simulation_keys")
    from uaap import workspace  # lazily: the workspace is no dependency of the crypto package

    workspace.run_dir(cfg.run_id)  # refuses '../x' and the like before anything is written
    folder = workspace.home() / "keys" / cfg.run_id
    if not (folder / SECRET_FILE).is_file():
        generate_keys(folder)
        log.info("made simulation CKKS keys in %s", folder)
    return cfg.replace(he_public_context=str(folder / PUBLIC_FILE), he_secret_context=str(folder / SECRET_FILE))
