"""Raw SEAL I/O: encode, encrypt and decrypt float vectors as uint64 ciphertext coefficients.

TenSEAL makes and stores the keys (:mod:`uaap.crypto.keys`); the per-ciphertext work (encode, encrypt,
decrypt) goes through the SEAL API that TenSEAL ships (``tenseal.sealapi``), which has the complex encoder
and symmetric encryption. Ciphertexts leave this module as raw RNS coefficients in NTT form, shape
(k, 2, N); the SEAL metadata around them is rebuilt from the receiver's own context, never read from the
wire (:mod:`uaap.crypto.wire`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import struct
import tempfile
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.crypto.params import (
    CT_BYTES,
    POLY_MODULUS_DEGREE,
    SCALE_BITS,
    SECRET_FILE,
    SLOTS,
    VALUES_PER_CT,
    CiphertextError,
)
from uaap.errors import KeyMaterialError

if TYPE_CHECKING:
    from uaap.crypto.keys import HEContext

_SEAL_MAGIC = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, version major, minor, compr mode, reserved, size


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

        return zstandard.ZstdDecompressor().decompress(body, max_output_size=4 * CT_BYTES)
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


def fresh_ciphertext_meta(ctx: Any) -> bytes:
    """The SEAL metadata of a fresh public-key encryption of zero under ``ctx`` (any parameters)."""
    import tenseal.sealapi as sealapi

    seal_ctx = ctx.seal_context().data
    plain, cipher = sealapi.Plaintext(), sealapi.Ciphertext(seal_ctx)
    sealapi.CKKSEncoder(seal_ctx).encode(0.0, 2.0**SCALE_BITS, plain)
    sealapi.Encryptor(seal_ctx, ctx.public_key().data).encrypt(plain, cipher)
    return _split_seal(_SEAL_FILE.save(cipher))[0]


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
