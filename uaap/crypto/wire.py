"""UAAP's encrypted-record wire format (``uaap-ckks/2``): build, validate, encrypt and decrypt records.

Wire format (an ``ArrayRecord``; every entry a 1-D uint8 ``Array``; key names in :mod:`uaap.protocol`)
-----------------------------------------------------------------------------------------------------
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
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.crypto.keys import HEContext
from uaap.crypto.params import (
    CT_BYTES,
    CT_PER_CHUNK,
    FORMAT,
    MAX_ABS_SUM,
    POLY_MODULUS_DEGREE,
    SCALE_BITS,
    VALUES_PER_CT,
    CiphertextError,
)
from uaap.crypto.seal import decrypt_vector, encrypt_vector
from uaap.errors import ConfigError, KeyMaterialError
from uaap.protocol import HE_CHUNK_PREFIX, HE_FINGERPRINT, HE_HEADER, HE_TOTAL_WEIGHT

if TYPE_CHECKING:
    from flwr.app import Array, ArrayRecord


# ---- uint8 Arrays without copies -----------------------------------------------------------------------


_NPY_U8 = re.compile(rb"\{'descr': '\|u1', 'fortran_order': False, 'shape': \((\d+),\), \} *\n")


def _u8_array(data: np.ndarray | bytes) -> Array:
    """A 1-D uint8 Flower Array (np.save layout) built with one copy."""
    from flwr.app import Array

    raw = memoryview(data) if isinstance(data, bytes) else np.ascontiguousarray(data).view(np.uint8).reshape(-1).data
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
    return HE_FINGERPRINT in record


def record_fingerprint(record: ArrayRecord) -> str:
    """The fingerprint an encrypted record claims."""
    return bytes(_u8_view(record[HE_FINGERPRINT], HE_FINGERPRINT)).decode("ascii", errors="replace")


def total_weight(record: ArrayRecord) -> float:
    """The plaintext weight an encrypted record sums over (divide the decrypted sum by it)."""
    raw = _u8_view(record[HE_TOTAL_WEIGHT], HE_TOTAL_WEIGHT)
    if raw.size != 8:
        raise CiphertextError(f"{HE_TOTAL_WEIGHT} must hold one float64, has {raw.size} bytes")
    return float(raw.view("<f8")[0])


def build_record(header: dict[str, Any], chunks: list[np.ndarray], weight: float, fingerprint: str) -> ArrayRecord:
    """An encrypted record from its parts (no checks: the callers made or validated them)."""
    from flwr.app import ArrayRecord

    items: dict[str, Array] = {
        HE_FINGERPRINT: _u8_array(fingerprint.encode("ascii")),
        HE_HEADER: _u8_array(json.dumps(header, sort_keys=True).encode()),
        HE_TOTAL_WEIGHT: _u8_array(np.array([weight], dtype="<f8")),
    }
    for i, chunk in enumerate(chunks):
        items[f"{HE_CHUNK_PREFIX}{i:04d}"] = _u8_array(np.ascontiguousarray(chunk, dtype="<u8"))
    return ArrayRecord(items)


MAX_HEADER_BYTES = 1 << 16  # a header lists one shape per tensor: 64 KiB holds thousands of them
MAX_HEADER_DEPTH = 3  # {"shapes": [[d, ...], ...]}: object -> list -> list
MAX_VALUES = 1 << 27  # 134M parameters (2 GiB of ciphertext): the hard cap when the model's size is unknown
DTYPES = frozenset({"float16", "float32", "float64"})
HEADER_KEYS = frozenset({"format", "n_values", "n_ciphertexts", "shapes", "dtypes", "modulus"})


def _nesting(raw: bytes) -> int:
    """Deepest bracket nesting of a JSON text, counted without parsing it (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _dims(value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > 8:
        raise CiphertextError(f"a shape must be a list of at most 8 dimensions, got {value!r:.60}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_VALUES for d in value):
        raise CiphertextError(f"a shape's dimensions must be whole numbers in [0, {MAX_VALUES}], got {value!r:.60}")
    return tuple(value)


def read_header(record: ArrayRecord) -> dict[str, Any]:
    """The record's header, checked for size, nesting and types before and after parsing (no context needed)."""
    raw = bytes(_u8_view(record[HE_HEADER], HE_HEADER))
    if len(raw) > MAX_HEADER_BYTES:
        raise CiphertextError(f"{HE_HEADER} has {len(raw)} bytes; at most {MAX_HEADER_BYTES} are accepted")
    if _nesting(raw) > MAX_HEADER_DEPTH:
        raise CiphertextError(f"{HE_HEADER} nests deeper than {MAX_HEADER_DEPTH} levels")
    try:
        header = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise CiphertextError(f"unreadable {HE_HEADER} ({exc})") from exc
    if not isinstance(header, dict) or set(header) != HEADER_KEYS:
        raise CiphertextError(f"{HE_HEADER} must be an object with exactly the keys {sorted(HEADER_KEYS)}")
    if header["format"] != FORMAT:
        raise CiphertextError(f"ciphertext format {header['format']!r:.40} is not {FORMAT}")
    shapes, dtypes = header["shapes"], header["dtypes"]
    if not isinstance(shapes, list) or not isinstance(dtypes, list) or len(shapes) != len(dtypes) or len(shapes) > 4096:
        raise CiphertextError(f"{HE_HEADER}: shapes and dtypes must be lists of the same length (at most 4096)")
    header["shapes"] = [_dims(s) for s in shapes]
    if not all(isinstance(d, str) and d in DTYPES for d in dtypes):
        raise CiphertextError(f"{HE_HEADER}: dtypes must be among {sorted(DTYPES)}")
    n_values, n_ct = header["n_values"], header["n_ciphertexts"]
    whole = all(isinstance(n, int) and not isinstance(n, bool) for n in (n_values, n_ct))
    if not whole or not 0 < n_values <= MAX_VALUES:
        raise CiphertextError(f"{HE_HEADER}: n_values={n_values!r:.30} must be a whole number in [1, {MAX_VALUES}]")
    if sum(int(np.prod(s)) for s in header["shapes"]) != n_values or n_ct != -(-n_values // VALUES_PER_CT):
        raise CiphertextError(f"header says {n_values} values in {n_ct} ciphertexts for shapes {header['shapes']}")
    return header


def record_shapes(record: ArrayRecord) -> list[tuple[int, ...]]:
    """The tensor shapes an encrypted record declares (the server reads its own global model's this way)."""
    return list(read_header(record)["shapes"])


def parse_record(
    record: ArrayRecord,
    hctx: HEContext,
    *,
    check_range: bool = True,
    shapes: list[tuple[int, ...]] | None = None,
) -> Encrypted:
    """Validate an encrypted record against ``hctx`` (fingerprint, layout, coefficient range) and view it.

    ``shapes`` is the model this side expects (its own model's tensors): the header must declare exactly
    those, so a sender cannot choose the size of what is read. Every check runs before anything is
    allocated in proportion to what the sender declares; a record with keys beyond the format is refused.
    """
    if not is_encrypted(record):
        raise CiphertextError("the record holds plaintext arrays, not UAAP ciphertext (is secure-aggregation on?)")
    theirs = record_fingerprint(record)
    if theirs != hctx.fingerprint:
        raise KeyMaterialError(
            f"ciphertext fingerprint {theirs[:16]!r} differs from this side's context fingerprint {hctx.short}: "
            "the sender uses another federation's keys; give it the key files from the same `uaap keys init`"
        )
    header = read_header(record)
    modulus = header["modulus"]
    if not isinstance(modulus, str) or not modulus.isdigit() or int(modulus) != hctx.modulus:
        raise CiphertextError(f"ciphertext modulus does not match this context's ({FORMAT})")
    if shapes is not None and header["shapes"] != [tuple(s) for s in shapes]:
        raise CiphertextError(f"record encrypts tensors of shapes {header['shapes']}; this model's are {list(shapes)}")
    n_ct = int(header["n_ciphertexts"])
    n_chunks = -(-n_ct // CT_PER_CHUNK)
    names = sorted(k for k in record if k.startswith(HE_CHUNK_PREFIX))
    extra = sorted(set(record) - {HE_FINGERPRINT, HE_HEADER, HE_TOTAL_WEIGHT, *names})
    if extra:
        raise CiphertextError(f"record carries entries beyond the {FORMAT} format: {extra[:5]}")
    if len(names) != n_chunks or names != [f"{HE_CHUNK_PREFIX}{i:04d}" for i in range(n_chunks)]:
        raise CiphertextError(f"expected {n_chunks} chunks {HE_CHUNK_PREFIX}0000.., got {len(names)}")
    chunks = []
    for i, name in enumerate(names):
        raw = _u8_view(record[name], name)
        k = min(CT_PER_CHUNK, n_ct - i * CT_PER_CHUNK)
        if raw.size != k * CT_BYTES:
            raise CiphertextError(f"{name} has {raw.size} bytes; {k} ciphertexts need {k * CT_BYTES}")
        coeffs = raw.view("<u8").reshape(k, 2, POLY_MODULUS_DEGREE)
        if check_range and int(coeffs.max()) >= hctx.modulus:
            raise CiphertextError(f"{name} has coefficients >= q: not a ciphertext of this context")
        chunks.append(coeffs)
    weight = total_weight(record)
    if not np.isfinite(weight) or weight <= 0:
        raise CiphertextError(f"{HE_TOTAL_WEIGHT}={weight!r} must be a positive finite number")
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
    return build_record(header, chunks, float(weight), hctx.fingerprint)


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
        digest.update(np.ascontiguousarray(chunk).data)
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
    enc = parse_record(record, hctx, shapes=None if like is None else [tuple(np.shape(w)) for w in like])
    flat = _decrypted(enc, hctx) / enc.weight
    shapes = [tuple(s) for s in enc.header["shapes"]]
    dtypes = enc.header["dtypes"]
    out, pos = [], 0
    for shape, dtype in zip(shapes, dtypes, strict=True):
        size = int(np.prod(shape))
        out.append(flat[pos : pos + size].reshape(shape).astype(dtype))
        pos += size
    return out
