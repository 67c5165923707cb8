"""Secure aggregation by homomorphic encryption (TenSEAL CKKS): keys, wire format, encrypted sums.

Design
------
One CKKS context per federation, made on the data owners' side (``uaap keys init --out DIR``):

* ``DIR/secret.ckks`` (mode 0600): the secret context, held by every client. Never sent, logged or committed
  (``DIR/.gitignore`` ignores it);
* ``DIR/public.ckks``: the same context without the secret key, for the server;
* ``DIR/fingerprint.txt``: SHA-256 of the serialised *public* context. Both sides compute it from the
  context they load and every ciphertext carries it, so a client keyed for another federation is refused.

A round under ``secure-aggregation = "ckks"``: each client flattens its new weights, pre-weights them
(``he-weight`` = num-examples, or 1 under central DP), encrypts and sends ciphertext only. The server adds
ciphertexts with the public context (:class:`EncryptedSum`) and returns the encrypted SUM plus the plaintext
total weight; clients decrypt and divide. The server never multiplies, so the modulus chain stays add-only.
Round 1's global model is plaintext (a seeded random initialisation is not private); later rounds are
ciphertext, and checkpoints keep them so (``uaap keys decrypt-model`` makes the plaintext model for a key
holder).

Parameters and packing (measured; see FIELD-NOTES and benchmarks/secure_aggregation.py)
---------------------------------------------------------------------------------------
``N = 8192``, ``coeff_mod_bit_sizes = [60, 60]``, scale ``2**40``. One 60-bit data prime plus the special
prime: log2 q = 120 <= 218, the HE standard's bound for 128-bit security at N = 8192 (SEAL enforces it,
``sec_level = tc128``). A ciphertext has N/2 = 4096 complex slots in 2 x 8192 coefficients of 8 bytes.
CKKS is linear over the complex numbers, so each slot carries two parameters (real and imaginary part):
8192 values per ciphertext, 16 bytes per parameter (TenSEAL's real ``ckks_vector`` packing costs 32; a
[60,40,60] chain that allows one server-side multiply ~58). Clients encrypt symmetrically with the secret
key they hold: half the work of public-key encryption, and ciphertexts of the same kind. Precision: the
decrypted sum of K fresh ciphertexts is off by ~1e-9 (max abs, K = 10), far below the float32 resolution
of the weights. Range: a coefficient of the decrypted sum must stay below 2**19 (scale 2**40 in a 60-bit
prime); it is bounded by the largest slot modulus, so :func:`encrypt_weights` refuses values beyond
``2**18 / max_summands`` per parameter (a slot then stays below 2**18.5).

Wire format (an ``ArrayRecord``; every entry a 1-D uint8 ``Array``)
-----------------------------------------------------------------
``he-fingerprint``   ASCII hex SHA-256 of the public context the ciphertexts belong to;
``he-header``        UTF-8 JSON: ``format`` ("uaap-ckks/2"), ``n_values``, ``n_ciphertexts``, ``shapes``,
                     ``dtypes`` (the model tensors, for unflattening), ``modulus`` (q, decimal string);
``he-total-weight``  one little-endian float64: the plaintext weight this ciphertext is a sum over
                     (a client's own ``he-weight``, or the server's total over the clients summed);
``he-ct-NNNN``       ciphertext chunks: little-endian uint64 RNS coefficients, shape (k, 2, 8192), k <= 64
                     ciphertexts (524,288 values, 8 MiB) per chunk, in NTT form, all at the context's first
                     data level and scale 2**40 (the SEAL metadata is identical for every fresh ciphertext of
                     a context and is rebuilt on the client from its own context, never trusted from the wire).
                     Values 2i and 2i+1 of ciphertext j are the real and imaginary part of its slot i.

Carrying raw coefficients instead of TenSEAL's serialisation lets the server add with NumPy (lazy modular
reduction) instead of decompressing and parsing every ciphertext through SEAL: that is what makes server
aggregation cheap (see benchmarks/secure_aggregation.py), and the server parses no untrusted bytes in C++.
TenSEAL makes and stores the keys; the per-ciphertext work (encode, encrypt, decrypt) goes through the SEAL
API that TenSEAL ships (``tenseal.sealapi``), which has the complex encoder and symmetric encryption.

Security notes
--------------
* The server holds only the public context; it refuses a context that carries a secret key
  (:class:`uaap.errors.KeyMaterialError`) and cannot decrypt what it adds.
* All clients share one secret key (single-key CKKS). A client colluding with the server can therefore
  decrypt every other client's update: secure aggregation here protects against an honest-but-curious
  server, not against a server plus a client. Threshold or multi-key HE (or SecAgg+ masking) closes that.
* Decrypted values never return to the server: clients send back only fresh ciphertexts and metrics.
  Returning exact CKKS decryptions would allow key recovery (Li & Micciancio, EUROCRYPT 2021).
* The server cannot check that a ciphertext encrypts a sensible update (a malicious client can poison the
  sum); it checks the fingerprint, the layout and that every coefficient is below q.
* In simulations (``uaap simulate`` without key paths) keys are generated under ``<UAAP_HOME>/keys/<run-id>/``:
  one machine holds both contexts, which is fine for a simulation and never for a deployment.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import re
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.config import RunConfig
from uaap.errors import ConfigError, DataError, KeyMaterialError, WorkspaceError

if TYPE_CHECKING:
    from flwr.app import Array, ArrayRecord

log = logging.getLogger("uaap.crypto")

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (60, 60)
SCALE_BITS = 40
SLOTS = POLY_MODULUS_DEGREE // 2  # complex slots per ciphertext
VALUES_PER_CT = 2 * SLOTS  # two real values per slot: its real and its imaginary part
CT_PER_CHUNK = 64
MAX_ABS_SUM = 2.0**18  # per value; a slot's modulus then stays below 2**18.5 < 2**(60 - 40 - 1)
FORMAT = "uaap-ckks/2"
FILE_MAGIC = b"UAAP-CKKS/1\n"

KEY_FINGERPRINT = "he-fingerprint"
KEY_HEADER = "he-header"
KEY_WEIGHT = "he-total-weight"
CHUNK_PREFIX = "he-ct-"
METRIC_WEIGHT = "he-weight"

SECRET_FILE = "secret.ckks"
PUBLIC_FILE = "public.ckks"
FINGERPRINT_FILE = "fingerprint.txt"

_SEAL_MAGIC = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, version major, minor, compr mode, reserved, size
_CT_BYTES = 2 * POLY_MODULUS_DEGREE * 8


class CiphertextError(DataError):
    """Ciphertext bytes that cannot be used (wrong layout, not deserialisable, out of range)."""


# ---- contexts ------------------------------------------------------------------------------------------


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


@dataclass(frozen=True, eq=False)
class SealTools:
    """SEAL objects for the per-ciphertext hot path, built once per loaded context.

    Clients encrypt symmetrically with the secret key they hold (half the work of public-key encryption and
    less noise; the ciphertexts are the same kind, so the server's sums do not change).
    """

    context: Any  # seal::SEALContext
    encoder: Any  # seal::CKKSEncoder
    encryptor: Any | None  # symmetric (secret key); None on the server
    decryptor: Any | None

    @classmethod
    def of(cls, ctx: Any) -> SealTools:
        """The encoder, encryptor and decryptor of a TenSEAL context (the last two only with a secret key)."""
        import tenseal.sealapi as sealapi

        seal_ctx = ctx.seal_context().data
        encoder = sealapi.CKKSEncoder(seal_ctx)
        if not ctx.has_secret_key():
            return cls(seal_ctx, encoder, None, None)
        sk = ctx.secret_key().data
        return cls(seal_ctx, encoder, sealapi.Encryptor(seal_ctx, sk), sealapi.Decryptor(seal_ctx, sk))


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
    return pub.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


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
    meta = _fresh_ciphertext_meta(ctx)
    size, degree, levels = struct.unpack_from("<QQQ", meta, 33)
    (scale,) = struct.unpack_from("<d", meta, 57)
    if (size, degree, levels, scale) != (2, POLY_MODULUS_DEGREE, 1, 2.0**SCALE_BITS) or meta[32] != 1:
        raise KeyMaterialError(
            f"CKKS context {path or '(in memory)'} has parameters (N={degree}, data primes={levels}, scale={scale:g}); "
            f"UAAP expects N={POLY_MODULUS_DEGREE}, coeff_mod_bit_sizes={list(COEFF_MOD_BIT_SIZES)}, "
            f"scale 2**{SCALE_BITS}: make keys with `uaap keys init`"
        )
    return HEContext(ctx, fingerprint_of(ctx), _modulus(), meta, SealTools.of(ctx), path)


def _fresh_ciphertext_meta(ctx: Any) -> bytes:
    """The SEAL metadata of a fresh public-key encryption of zero under ``ctx`` (any parameters)."""
    import tenseal.sealapi as sealapi

    seal_ctx = ctx.seal_context().data
    plain, cipher = sealapi.Plaintext(), sealapi.Ciphertext(seal_ctx)
    sealapi.CKKSEncoder(seal_ctx).encode(0.0, 2.0**SCALE_BITS, plain)
    sealapi.Encryptor(seal_ctx, ctx.public_key().data).encrypt(plain, cipher)
    return _split_seal(_SEAL_FILE.save(cipher))[0]


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
        "bytes_per_parameter": _CT_BYTES / VALUES_PER_CT,
        "fingerprint": hctx.fingerprint,
        "created": header.get("created", ""),
        "mode": oct(Path(path).expanduser().stat().st_mode & 0o777),
    }


def client_context(cfg: RunConfig, node_config: Mapping[str, Any] | None = None) -> HEContext:
    """The client's secret context: node config ``he-secret-context`` first, then the run config's path."""
    path = str((node_config or {}).get("he-secret-context", "") or cfg.he_secret_context)
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
    from uaap import workspace

    folder = workspace.home() / "keys" / cfg.run_id
    if not (folder / SECRET_FILE).is_file():
        generate_keys(folder)
        log.info("made simulation CKKS keys in %s", folder)
    return cfg.replace(he_public_context=str(folder / PUBLIC_FILE), he_secret_context=str(folder / SECRET_FILE))


# ---- raw ciphertexts -----------------------------------------------------------------------------------


class _SealFile:
    """One in-memory file per process through which SEAL objects become bytes and back.

    TenSEAL's SEAL bindings save and load only by path. A memfd (a file that lives in RAM and has no name on
    any disk) stands in; elsewhere a private temporary file. Only ciphertexts and the server's plaintext
    noise pass through it, never key material or decrypted values.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._fd = -1
        self._path = ""

    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            self._fd = os.memfd_create("uaap-seal", os.MFD_CLOEXEC)
            self._path = f"/proc/self/fd/{self._fd}"
        else:
            self._fd, self._path = tempfile.mkstemp(prefix="uaap-seal-")
            atexit.register(functools.partial(_unlink_quietly, self._path))
        self._pid = os.getpid()

    def save(self, obj: Any) -> bytes:
        """A SEAL Ciphertext or Plaintext as SEAL's serialisation (header + possibly compressed body)."""
        with self._lock:
            self._open()
            obj.save(self._path)
            return os.pread(self._fd, os.fstat(self._fd).st_size, 0)

    def load(self, obj: Any, seal_context: Any, blob: bytes) -> Any:
        """Load SEAL's serialisation ``blob`` into ``obj`` (SEAL validates it against ``seal_context``)."""
        with self._lock:
            self._open()
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, blob, 0)
            obj.load(seal_context, self._path)
            return obj


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


_SEAL_FILE = _SealFile()


def _seal_body(blob: bytes) -> bytes:
    """The uncompressed body of a SEAL serialisation (after its 16-byte header)."""
    magic, hsize, _major, _minor, compr, _res, size = _SEAL_HEADER.unpack_from(blob, 0)
    if magic != _SEAL_MAGIC or hsize != _SEAL_HEADER.size or size != len(blob):
        raise CiphertextError("not a SEAL serialisation")
    body = blob[hsize:size]
    if compr == 2:
        import zstandard

        return zstandard.ZstdDecompressor().decompress(body, max_output_size=4 * _CT_BYTES)
    if compr == 1:
        import zlib

        return zlib.decompress(body)
    if compr != 0:
        raise CiphertextError(f"unknown SEAL compression mode {compr}")
    return body


def _split_seal(blob: bytes) -> tuple[bytes, np.ndarray]:
    """A SEAL ciphertext -> (metadata prefix, uint64 coefficients of shape (size, N x primes))."""
    body = _seal_body(blob)
    # metadata: parms_id(32) ntt(1) size(8) N(8) primes(8) scale(8) correction(8) | array header(16+8)
    if len(body) < 97:
        raise CiphertextError("SEAL ciphertext shorter than its metadata")
    size, degree, primes = struct.unpack_from("<QQQ", body, 33)
    n_bytes = size * degree * primes * 8
    if not 0 < n_bytes <= len(body) - 97:
        raise CiphertextError(f"SEAL ciphertext of {len(body)} bytes cannot hold {size} x {degree} x {primes}")
    cut = len(body) - n_bytes
    return bytes(body[:cut]), np.frombuffer(body, dtype="<u8", offset=cut).reshape(size, degree * primes)


def _seal_ciphertext(coeffs: np.ndarray, hctx: HEContext) -> bytes:
    """SEAL's uncompressed serialisation of one (2, N) coefficient array at the context's fresh level."""
    body = hctx.seal_prefix + np.ascontiguousarray(coeffs, dtype="<u8").tobytes()
    return _SEAL_HEADER.pack(_SEAL_MAGIC, _SEAL_HEADER.size, 4, 3, 0, 0, _SEAL_HEADER.size + len(body)) + body


def _pack(vector: np.ndarray) -> np.ndarray:
    """Real values -> complex slots, (n_ct, SLOTS): values 2i and 2i+1 are slot i's real and imaginary part."""
    vec = np.asarray(vector, dtype=np.float64).ravel()
    n_ct = max(1, -(-vec.size // VALUES_PER_CT))
    padded = np.zeros(n_ct * VALUES_PER_CT)
    padded[: vec.size] = vec
    return padded.view(np.complex128).reshape(n_ct, SLOTS)


def encrypt_vector(vector: np.ndarray, hctx: HEContext) -> np.ndarray:
    """Encrypt a float vector (needs the secret context): uint64 coefficients (ceil(n / 8192), 2, 8192)."""
    import tenseal.sealapi as sealapi

    seal = hctx.seal
    if seal.encryptor is None:
        raise KeyMaterialError(
            f"context {hctx.path or hctx.short} has no secret key; clients encrypt with {SECRET_FILE}"
        )
    slots = _pack(vector)
    out = np.empty((slots.shape[0], 2, POLY_MODULUS_DEGREE), dtype=np.uint64)
    plain, cipher = sealapi.Plaintext(), sealapi.Ciphertext(seal.context)
    for j, row in enumerate(slots):
        seal.encoder.encode(row.tolist(), 2.0**SCALE_BITS, plain)
        seal.encryptor.encrypt_symmetric(plain, cipher)
        meta, coeffs = _split_seal(_SEAL_FILE.save(cipher))
        if meta != hctx.seal_prefix:
            raise CiphertextError("SEAL produced a ciphertext at an unexpected level or scale")
        out[j] = coeffs
    return out


def encode_vector(vector: np.ndarray, hctx: HEContext) -> np.ndarray:
    """CKKS-encode a float vector (no key needed): uint64 plaintext coefficients (ceil(n / 8192), 8192).

    Adding them to a ciphertext's first polynomial adds the vector to what it encrypts (SEAL's add_plain).
    """
    import tenseal.sealapi as sealapi

    seal = hctx.seal
    slots = _pack(vector)
    out = np.empty((slots.shape[0], POLY_MODULUS_DEGREE), dtype=np.uint64)
    plain = sealapi.Plaintext()
    parms_id = hctx.seal_prefix[:32]
    for j, row in enumerate(slots):
        seal.encoder.encode(row.tolist(), 2.0**SCALE_BITS, plain)
        body = _seal_body(_SEAL_FILE.save(plain))  # parms_id(32) coeff_count(8) scale(8) | array header | data
        if body[:32] != parms_id or len(body) < 48 + POLY_MODULUS_DEGREE * 8:
            raise CiphertextError("SEAL encoded a plaintext at an unexpected level")
        out[j] = np.frombuffer(body, dtype="<u8", offset=len(body) - POLY_MODULUS_DEGREE * 8)
    return out


def decrypt_vector(coeffs: np.ndarray, n_values: int, hctx: HEContext) -> np.ndarray:
    """Decrypt uint64 coefficients (k, 2, 8192) into ``n_values`` floats (needs the secret context)."""
    import tenseal.sealapi as sealapi

    seal = hctx.seal
    if seal.decryptor is None:
        raise KeyMaterialError(
            f"context {hctx.path or hctx.short} has no secret key and cannot decrypt; only data owners hold "
            f"{SECRET_FILE}"
        )
    slots = np.empty((coeffs.shape[0], SLOTS), dtype=np.complex128)
    plain, cipher = sealapi.Plaintext(), sealapi.Ciphertext(seal.context)
    for j in range(coeffs.shape[0]):
        _SEAL_FILE.load(cipher, seal.context, _seal_ciphertext(coeffs[j], hctx))
        seal.decryptor.decrypt(cipher, plain)
        slots[j] = seal.encoder.decode_complex(plain)
    return slots.view(np.float64).ravel()[:n_values]


# ---- uint8 Arrays without copies -----------------------------------------------------------------------


_NPY_U8 = re.compile(rb"\{'descr': '\|u1', 'fortran_order': False, 'shape': \((\d+),\), \} *\n")


def _u8_array(data: np.ndarray | bytes) -> Array:
    """A 1-D uint8 Flower Array (np.save layout) built with one copy."""
    from flwr.app import Array

    raw = memoryview(data if isinstance(data, bytes) else np.ascontiguousarray(data).view(np.uint8).reshape(-1))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (raw.nbytes,)})
    return Array(dtype="uint8", shape=(raw.nbytes,), stype="numpy.ndarray", data=b"".join((buf.getvalue(), raw)))


def _u8_view(array: Array, what: str) -> np.ndarray:
    """A read-only uint8 view of an Array's payload (no copy)."""
    data = array.data
    head = bytes(data[:10])
    if (
        head[:6] == b"\x93NUMPY"
        and head[6] == 1
        and (match := _NPY_U8.fullmatch(data, 10, 10 + head[8] + 256 * head[9]))
    ):
        offset, count = match.end(), int(match.group(1))  # fast path: the header np.save writes for 1-D uint8
    else:
        try:
            fh = io.BytesIO(data[:4096])
            version = np.lib.format.read_magic(fh)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(fh)
        except Exception as exc:
            raise CiphertextError(f"{what}: not a NumPy array payload ({exc})") from exc
        if dtype != np.uint8 or len(shape) != 1 or fortran:
            raise CiphertextError(f"{what}: expected a 1-D uint8 array, got {dtype} of shape {shape}")
        offset, count = fh.tell(), int(shape[0])
    if len(data) - offset != count:
        raise CiphertextError(f"{what}: payload has {len(data) - offset} bytes, header says {count}")
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=offset)


# ---- records -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encrypted:
    """A parsed encrypted record: header, coefficient chunks, plaintext total weight."""

    header: dict[str, Any]
    chunks: list[np.ndarray]  # uint64 (k, 2, N) views
    weight: float
    fingerprint: str


def is_encrypted(record: ArrayRecord) -> bool:
    """Whether an ArrayRecord carries CKKS ciphertext (UAAP wire format) rather than plaintext weights."""
    return KEY_FINGERPRINT in record


def record_fingerprint(record: ArrayRecord) -> str:
    """The fingerprint an encrypted record claims."""
    return bytes(_u8_view(record[KEY_FINGERPRINT], KEY_FINGERPRINT)).decode("ascii", errors="replace")


def total_weight(record: ArrayRecord) -> float:
    """The plaintext weight an encrypted record sums over (divide the decrypted sum by it)."""
    raw = _u8_view(record[KEY_WEIGHT], KEY_WEIGHT)
    if raw.size != 8:
        raise CiphertextError(f"{KEY_WEIGHT} must hold one float64, has {raw.size} bytes")
    return float(raw.view("<f8")[0])


def _build_record(header: dict[str, Any], chunks: list[np.ndarray], weight: float, fingerprint: str) -> ArrayRecord:
    from flwr.app import ArrayRecord

    items: dict[str, Array] = {
        KEY_FINGERPRINT: _u8_array(fingerprint.encode("ascii")),
        KEY_HEADER: _u8_array(json.dumps(header, sort_keys=True).encode()),
        KEY_WEIGHT: _u8_array(np.array([weight], dtype="<f8")),
    }
    for i, chunk in enumerate(chunks):
        items[f"{CHUNK_PREFIX}{i:04d}"] = _u8_array(np.ascontiguousarray(chunk, dtype="<u8"))
    return ArrayRecord(items)


def parse_record(record: ArrayRecord, hctx: HEContext, *, check_range: bool = True) -> Encrypted:
    """Validate an encrypted record against ``hctx`` (fingerprint, layout, coefficient range) and view it."""
    if not is_encrypted(record):
        raise CiphertextError("the record holds plaintext arrays, not UAAP ciphertext (is secure-aggregation on?)")
    theirs = record_fingerprint(record)
    if theirs != hctx.fingerprint:
        raise KeyMaterialError(
            f"ciphertext fingerprint {theirs[:16]} differs from this side's context fingerprint {hctx.short}: "
            "the sender uses another federation's keys; give it the key files from the same `uaap keys init`"
        )
    try:
        header = json.loads(bytes(_u8_view(record[KEY_HEADER], KEY_HEADER)).decode())
        n_values, n_ct = int(header["n_values"]), int(header["n_ciphertexts"])
        shapes = [tuple(int(d) for d in s) for s in header["shapes"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CiphertextError(f"unreadable {KEY_HEADER} ({exc})") from exc
    if header.get("format") != FORMAT or int(header.get("modulus", 0)) != hctx.modulus:
        raise CiphertextError(f"ciphertext format {header.get('format')!r} / modulus do not match {FORMAT}")
    if sum(int(np.prod(s)) for s in shapes) != n_values or n_ct != max(1, -(-n_values // VALUES_PER_CT)):
        raise CiphertextError(f"header says {n_values} values in {n_ct} ciphertexts for shapes {shapes}")
    names = sorted(k for k in record if k.startswith(CHUNK_PREFIX))
    expected = [f"{CHUNK_PREFIX}{i:04d}" for i in range(-(-n_ct // CT_PER_CHUNK))]
    if names != expected:
        raise CiphertextError(f"expected chunks {expected[0]}..{expected[-1]} ({len(expected)}), got {len(names)}")
    chunks = []
    for i, name in enumerate(names):
        raw = _u8_view(record[name], name)
        k = min(CT_PER_CHUNK, n_ct - i * CT_PER_CHUNK)
        if raw.size != k * _CT_BYTES:
            raise CiphertextError(f"{name} has {raw.size} bytes; {k} ciphertexts need {k * _CT_BYTES}")
        coeffs = raw.view("<u8").reshape(k, 2, POLY_MODULUS_DEGREE)
        if check_range and int(coeffs.max()) >= hctx.modulus:
            raise CiphertextError(f"{name} has coefficients >= q: not a ciphertext of this context")
        chunks.append(coeffs)
    weight = total_weight(record)
    if not np.isfinite(weight) or weight <= 0:
        raise CiphertextError(f"{KEY_WEIGHT}={weight!r} must be a positive finite number")
    return Encrypted(header, chunks, weight, theirs)


def encrypt_weights(weights: list[np.ndarray], weight: float, hctx: HEContext, *, max_summands: int = 1) -> ArrayRecord:
    """Encrypt ``weight * weights`` (flattened) as a UAAP encrypted record carrying ``weight`` as its total."""
    from uaap.models import flatten

    if not np.isfinite(weight) or weight <= 0:
        raise ConfigError(f"he-weight={weight!r} must be a positive finite number (num-examples, or 1 under DP)")
    flat = flatten(weights) * float(weight)
    peak = float(np.abs(flat).max()) if flat.size else 0.0
    if not np.isfinite(peak) or peak * max(1, max_summands) >= MAX_ABS_SUM:
        raise ConfigError(
            f"pre-weighted update peaks at |{peak:.4g}| x {max_summands} clients, beyond the CKKS range "
            f"{MAX_ABS_SUM:g} (scale 2**{SCALE_BITS} in a 60-bit prime): the model diverged, or num-examples "
            "is too large for this range; lower the learning rate or use fewer/larger weights"
        )
    coeffs = encrypt_vector(flat, hctx)
    header = {
        "format": FORMAT,
        "n_values": int(flat.size),
        "n_ciphertexts": int(coeffs.shape[0]),
        "shapes": [list(np.shape(w)) for w in weights],
        "dtypes": [str(np.asarray(w).dtype) for w in weights],
        "modulus": str(hctx.modulus),
    }
    chunks = [coeffs[i : i + CT_PER_CHUNK] for i in range(0, coeffs.shape[0], CT_PER_CHUNK)]
    return _build_record(header, chunks, float(weight), hctx.fingerprint)


def decrypt_sum(record: ArrayRecord, hctx: HEContext) -> np.ndarray:
    """The decrypted (still weighted) flat sum of an encrypted record (a read-only float64 array)."""
    return _decrypted(parse_record(record, hctx), hctx)


_RECENT: OrderedDict[bytes, np.ndarray] = OrderedDict()
_RECENT_LOCK = threading.Lock()


def _decrypted(enc: Encrypted, hctx: HEContext) -> np.ndarray:
    """Decrypt a parsed record, keeping the last two results per process.

    They are keyed by a digest of ciphertext, layout and key. A simulated client process gets the same
    global model for evaluation and again for the next round's training, several times when it plays
    several clients.
    """
    digest = hashlib.blake2b(hctx.fingerprint.encode() + json.dumps(enc.header, sort_keys=True).encode())
    for chunk in enc.chunks:
        digest.update(np.ascontiguousarray(chunk))
    key = digest.digest()
    with _RECENT_LOCK:
        hit = _RECENT.get(key)
        if hit is not None:
            _RECENT.move_to_end(key)
            return hit
    coeffs = np.concatenate(enc.chunks) if len(enc.chunks) > 1 else enc.chunks[0]
    flat = decrypt_vector(coeffs, int(enc.header["n_values"]), hctx)
    flat.setflags(write=False)
    with _RECENT_LOCK:
        _RECENT[key] = flat
        while len(_RECENT) > 2:
            _RECENT.popitem(last=False)
    return flat


def decrypt_global(record: ArrayRecord, hctx: HEContext, like: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Decrypt an encrypted global model and divide by its total weight: the averaged weights."""
    enc = parse_record(record, hctx)
    flat = _decrypted(enc, hctx) / enc.weight
    shapes = [tuple(s) for s in enc.header["shapes"]]
    dtypes = enc.header.get("dtypes") or ["float32"] * len(shapes)
    if like is not None and [tuple(np.shape(w)) for w in like] != shapes:
        raise CiphertextError(f"encrypted model has shapes {shapes}; the local model has {[np.shape(w) for w in like]}")
    out, pos = [], 0
    for shape, dtype in zip(shapes, dtypes, strict=True):
        size = int(np.prod(shape))
        out.append(flat[pos : pos + size].reshape(shape).astype(dtype))
        pos += size
    return out


def add_plain(record: ArrayRecord, vector: np.ndarray, context: HEContext | str | Path) -> ArrayRecord:
    """Add a plaintext float64 vector (e.g. central-DP noise, in units of the weighted SUM) to an encrypted sum.

    The vector is CKKS-encoded (no key needed) and added to each ciphertext's first polynomial, as SEAL's
    add_plain does, so a public context (or its path) suffices. The total weight, header and fingerprint
    are kept.
    """
    if not isinstance(context, HEContext):
        context = load_context(context)
    enc = parse_record(record, context)
    vec = np.asarray(vector, dtype=np.float64).ravel()
    if vec.size != int(enc.header["n_values"]):
        raise ConfigError(f"plaintext vector has {vec.size} values; the encrypted sum has {enc.header['n_values']}")
    if vec.size and float(np.abs(vec).max()) >= MAX_ABS_SUM:
        raise ConfigError(f"plaintext vector peaks at {np.abs(vec).max():.4g}, beyond the CKKS range {MAX_ABS_SUM:g}")
    plain = encode_vector(vec, context)
    q = np.uint64(context.modulus)
    chunks, pos = [], 0
    for chunk in enc.chunks:
        k = chunk.shape[0]
        total = np.array(chunk, dtype=np.uint64)
        c0 = total[:, 0, :]
        np.add(c0, plain[pos : pos + k], out=c0)  # both < q < 2**60: no uint64 overflow
        np.subtract(c0, q, out=c0, where=c0 >= q)
        chunks.append(total)
        pos += k
    return _build_record(enc.header, chunks, enc.weight, enc.fingerprint)


class EncryptedSum:
    """Server-side sum of encrypted records (public context only); lazy modular reduction in NumPy."""

    _LAZY = 15  # 15 * q < 2**64 for a 60-bit q

    def __init__(self, hctx: HEContext) -> None:
        self.hctx = hctx
        self.header: dict[str, Any] | None = None
        self.acc: list[np.ndarray] = []
        self.count = 0
        self.total = 0.0
        self._pending = 0

    def add(self, record: ArrayRecord, weight: float | None = None) -> Encrypted:
        """Validate ``record`` completely, then add it; on any error the sum is untouched (raises)."""
        enc = parse_record(record, self.hctx)
        if weight is not None and not np.isclose(weight, enc.weight, rtol=1e-12, atol=0.0):
            raise CiphertextError(f"reply metric {METRIC_WEIGHT}={weight} disagrees with its record's {enc.weight}")
        if self.header is None:
            self.header = enc.header
            self.acc = [np.array(c, dtype=np.uint64) for c in enc.chunks]
        else:
            mine = (self.header["n_values"], self.header["shapes"])
            if (enc.header["n_values"], enc.header["shapes"]) != mine:
                raise CiphertextError(
                    f"reply encrypts {enc.header['n_values']} values {enc.header['shapes']}; "
                    f"the others encrypt {mine[0]} values {mine[1]}"
                )
            if self._pending == self._LAZY - 1:
                self._reduce()
            for acc, chunk in zip(self.acc, enc.chunks, strict=True):
                np.add(acc, chunk, out=acc)
            self._pending += 1
        self.count += 1
        self.total += enc.weight
        return enc

    def _reduce(self) -> None:
        q = np.uint64(self.hctx.modulus)
        for acc in self.acc:
            np.remainder(acc, q, out=acc)
        self._pending = 0

    def result(self, weight: float | None = None) -> ArrayRecord | None:
        """The encrypted sum as a record, or None if empty.

        Its total weight is the sum of the weights added, or ``weight`` when the caller fixes the divisor
        (central DP's fixed-denominator estimator publishes 1: the sum already is the model).
        """
        if self.header is None:
            return None
        self._reduce()
        return _build_record(self.header, self.acc, self.total if weight is None else weight, self.hctx.fingerprint)


# ---- decrypting a run's final model --------------------------------------------------------------------


def decrypt_model(run_id: str, secret_context: str | Path) -> Path:
    """Decrypt the last checkpoint of an HE run into ``runs/<id>/model.npz`` (for a key holder)."""
    from flwr.app import Array, ArrayRecord

    from uaap import workspace
    from uaap.data import describe

    rd = workspace.existing_run(run_id)
    ckpt = rd.latest_checkpoint()
    if ckpt is None:
        raise WorkspaceError(f"run {run_id!r} has no checkpoint yet; nothing to decrypt")
    record = ArrayRecord({k: Array(v) for k, v in ckpt.arrays.items()})
    if not is_encrypted(record):
        raise WorkspaceError(f"run {run_id!r} is not encrypted; its plaintext model is {rd.model_file}")
    hctx = load_context(secret_context)
    if not hctx.has_secret_key:
        raise KeyMaterialError(f"{secret_context} is a public context; decrypting needs {SECRET_FILE}")
    theirs = record_fingerprint(record)
    if theirs != hctx.fingerprint:
        raise KeyMaterialError(
            f"run {run_id!r} was encrypted under key fingerprint {theirs[:16]}, but {secret_context} has "
            f"{hctx.short}: use the secret context of that federation (see the run's he-secret-context)"
        )
    weights = decrypt_global(record, hctx)
    cfg = rd.read_config()
    meta = describe(cfg)
    return workspace.save_model(
        rd.model_file,
        cfg.model,
        weights,
        n_features=meta.n_features,
        n_classes=meta.n_classes,
        image_shape=meta.image_shape,
        extra={
            "run_id": rd.run_id,
            "dataset": cfg.dataset,
            "decrypted_from_round": ckpt.round,
            "he_fingerprint": hctx.fingerprint,
        },
    )
