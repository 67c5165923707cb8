"""uaap.crypto, exact behaviour at the edges: key files byte for byte, the context cache, the wire header's bounds,
record refusals word for word, multi-chunk plaintext addition, the SEAL layer's guards.

Each test here kills mutants (tests/mutate.py) that the behaviour tests of tests/uaap/test_crypto.py let through.
Functions whose output is checked are called inside the test (not in a shared fixture), so that mutmut sees which
test reaches them.
"""

from __future__ import annotations

import calendar
import json
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from uaap import crypto
from uaap.crypto.wire import _u8_array
from uaap.errors import ConfigError, KeyMaterialError
from uaap.protocol import HE_CHUNK_PREFIX, HE_FINGERPRINT, HE_TOTAL_WEIGHT

CHUNK0 = f"{HE_CHUNK_PREFIX}0000"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> crypto.KeyFiles:
    return crypto.generate_keys(tmp_path_factory.mktemp("keys") / "fed")


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> crypto.KeyFiles:
    return crypto.generate_keys(tmp_path_factory.mktemp("keys") / "other")


@pytest.fixture
def far_timezone() -> Iterator[None]:
    """Local time 5:30 ahead of UTC, so a time stamp taken in local time shows."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def _copy(record: Any, **entries: Any) -> Any:
    """A copy of an ArrayRecord with some entries replaced (None removes one)."""
    out = type(record)({k: record[k] for k in record})
    for key, value in entries.items():
        name = key.replace("_", "-")
        if value is None:
            del out[name]
        else:
            out[name] = value
    return out


# ---- key files -------------------------------------------------------------------------------------------


def test_key_files_are_canonical_json_stamped_in_utc_and_hold_only_the_keys_used(
    tmp_path: Path, far_timezone: None
) -> None:
    import tenseal as ts

    before = time.time()
    files = crypto.generate_keys(tmp_path / "k")
    after = time.time()
    for path, secret in ((files.secret, True), (files.public, False)):
        data = path.read_bytes()
        assert data.startswith(b"UAAP-CKKS/1\n")
        line = data[len(b"UAAP-CKKS/1\n") : data.index(b"\n", 12)]
        header = json.loads(line)
        created = header["created"]
        stamp = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))  # read as UTC
        assert before - 1 <= stamp <= after + 1, f"{created} is not the UTC time of creation"
        expected = {
            "coeff_mod_bit_sizes": [60, 60],
            "created": created,
            "fingerprint": files.fingerprint,
            "format": "uaap-ckks/2",
            "poly_modulus_degree": 8192,
            "scale_bits": 40,
            "scheme": "ckks",
            "secret_key": secret,
            "security": "128-bit (HE standard, tc128)",
        }
        assert header == expected
        # canonical: keys sorted, json.dumps' default separators (an independent rendering of the same dict)
        assert line.decode() == "{" + ", ".join(f'"{k}": {json.dumps(v)}' for k, v in sorted(expected.items())) + "}"
        ctx = ts.context_from(data[len(line) + 13 :])
        assert ctx.has_public_key() and ctx.has_secret_key() is secret
        assert not ctx.has_relin_keys() and not ctx.has_galois_keys(), "no key material the protocol never uses"


def test_a_context_without_a_public_key_is_refused_word_for_word(keys: crypto.KeyFiles, tmp_path: Path) -> None:
    import tenseal as ts

    from uaap.crypto.keys import _wrap

    header, body = crypto.read_key_file(keys.secret)
    bare = ts.context_from(body)
    raw = bare.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    with pytest.raises(KeyMaterialError) as err:
        _wrap(ts.context_from(raw))
    assert str(err.value) == "CKKS context (in memory) has no public key; recreate it with `uaap keys init`"
    path = tmp_path / "nopub.ckks"
    path.write_bytes(b"UAAP-CKKS/1\n" + json.dumps(header).encode() + b"\n" + raw)
    with pytest.raises(KeyMaterialError) as err:
        crypto.load_context(path)
    assert str(err.value) == f"CKKS context {path} has no public key; recreate it with `uaap keys init`"


def test_missing_and_foreign_key_files_are_refused_word_for_word(tmp_path: Path) -> None:
    missing = tmp_path / "missing.ckks"
    for call in (crypto.load_context, crypto.read_key_file):
        with pytest.raises(KeyMaterialError) as err:
            call(missing)
        assert str(err.value) == (
            f"CKKS context file '{missing}' does not exist; create keys with `uaap keys init --out DIR`"
        )
    foreign = tmp_path / "foreign.ckks"
    foreign.write_bytes(b"SEAL\x00\x01")
    with pytest.raises(KeyMaterialError) as err:
        crypto.read_key_file(foreign)
    assert str(err.value) == (
        f"{foreign} is not a UAAP CKKS context file (no b'UAAP-CKKS/1\\n' header); use `uaap keys init`"
    )


def test_inspect_shows_an_empty_creation_time_for_files_that_have_none(keys: crypto.KeyFiles, tmp_path: Path) -> None:
    header, body = crypto.read_key_file(keys.public)
    del header["created"]
    old = tmp_path / "old.ckks"
    old.write_bytes(b"UAAP-CKKS/1\n" + json.dumps(header).encode() + b"\n" + body)
    info = crypto.inspect_context(old)
    assert info["created"] == "" and info["fingerprint"] == keys.fingerprint


def test_a_context_file_replaced_in_place_is_loaded_again(
    keys: crypto.KeyFiles, other_keys: crypto.KeyFiles, tmp_path: Path
) -> None:
    # Keys rotated with `uaap keys init --force` under a running process: the cache is keyed by mtime and size,
    # so a new file is read even when only one of the two changed.
    def pad(data: bytes, extra: int) -> bytes:
        """The same key file with ``extra`` spaces after its JSON header (still the same header)."""
        end = data.index(b"\n", 12)
        return data[:end] + b" " * extra + data[end:]

    a, b = keys.public.read_bytes(), other_keys.public.read_bytes()
    mine, theirs = pad(a, max(0, len(b) - len(a))), pad(b, max(0, len(a) - len(b)))
    assert len(mine) == len(theirs)
    path = tmp_path / "public.ckks"
    path.write_bytes(mine)
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    assert crypto.load_context(path).fingerprint == keys.fingerprint
    path.write_bytes(theirs)  # same size, newer
    os.utime(path, ns=(1_000_000_001_000_000_000, 1_000_000_001_000_000_000))
    assert crypto.load_context(path).fingerprint == other_keys.fingerprint
    path.write_bytes(pad(mine, 1))  # one byte longer, same mtime
    os.utime(path, ns=(1_000_000_001_000_000_000, 1_000_000_001_000_000_000))
    assert crypto.load_context(path).fingerprint == keys.fingerprint


# ---- the wire header ---------------------------------------------------------------------------------------


def _with_header(record: Any, raw: bytes) -> Any:
    return _copy(record, he_header=_u8_array(raw))


def _header(**changes: Any) -> dict[str, Any]:
    base = {
        "format": "uaap-ckks/2",
        "n_values": 5,
        "n_ciphertexts": 1,
        "shapes": [[5]],
        "dtypes": ["float32"],
        "modulus": "7",
    }
    return base | changes


@pytest.fixture(scope="module")
def five(keys: crypto.KeyFiles) -> Any:
    return crypto.encrypt_weights([np.ones(5, np.float32)], 1.0, crypto.load_context(keys.secret))


def test_read_header_accepts_exactly_the_bounds_it_names(five: Any) -> None:
    from uaap.crypto.wire import MAX_HEADER_BYTES, MAX_VALUES, read_header

    for n in (1, MAX_VALUES):  # the smallest and the largest model
        h = _header(n_values=n, n_ciphertexts=-(-n // 8192), shapes=[[n]])
        assert read_header(_with_header(five, json.dumps(h).encode()))["n_values"] == n
    many = _header(n_values=4096, shapes=[[1]] * 4096, dtypes=["float16"] * 4096)  # the most tensors
    assert len(read_header(_with_header(five, json.dumps(many, separators=(",", ":")).encode()))["shapes"]) == 4096
    raw = json.dumps(_header()).encode()
    padded = raw + b" " * (MAX_HEADER_BYTES - len(raw))  # the largest header
    assert len(padded) == 1 << 16 and read_header(_with_header(five, padded))["n_values"] == 5
    with pytest.raises(crypto.CiphertextError) as err:
        read_header(_with_header(five, padded + b" "))
    assert str(err.value) == "he-header has 65537 bytes; at most 65536 are accepted"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (_header(format="uaap-ckks/1"), "ciphertext format 'uaap-ckks/1' is not uaap-ckks/2"),
        (_header(format="x" * 100), "ciphertext format 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx is not uaap-ckks/2"),
        (_header(dtypes=["float32", "float32"]),
         "he-header: shapes and dtypes must be lists of the same length (at most 4096)"),
        (_header(shapes="x"), "he-header: shapes and dtypes must be lists of the same length (at most 4096)"),
        (_header(dtypes="f"), "he-header: shapes and dtypes must be lists of the same length (at most 4096)"),
        (_header(n_values=4097, shapes=[[1]] * 4097, dtypes=["float16"] * 4097),
         "he-header: shapes and dtypes must be lists of the same length (at most 4096)"),
        (_header(dtypes=["int8"]), "he-header: dtypes must be among ['float16', 'float32', 'float64']"),
        (_header(dtypes=[8]), "he-header: dtypes must be among ['float16', 'float32', 'float64']"),
        (_header(n_values=5.0), "he-header: n_values=5.0 must be a whole number in [1, 134217728]"),
        (_header(n_values=True, shapes=[[1]]), "he-header: n_values=True must be a whole number in [1, 134217728]"),
        (_header(n_ciphertexts=1.0), "he-header: n_values=5 must be a whole number in [1, 134217728]"),
        (_header(n_values=0, n_ciphertexts=0, shapes=[[0]]),
         "he-header: n_values=0 must be a whole number in [1, 134217728]"),
        (_header(n_values=2**27 + 1, n_ciphertexts=16385, shapes=[[2**26], [2**26 + 1]], dtypes=["float32"] * 2),
         "he-header: n_values=134217729 must be a whole number in [1, 134217728]"),
        (_header(n_ciphertexts=2), "header says 5 values in 2 ciphertexts for shapes [(5,)]"),
        (_header(n_values=6), "header says 6 values in 1 ciphertexts for shapes [(5,)]"),
    ],
)  # fmt: skip
def test_read_header_refuses_word_for_word(five: Any, header: dict[str, Any], message: str) -> None:
    from uaap.crypto.wire import read_header

    with pytest.raises(crypto.CiphertextError) as err:
        read_header(_with_header(five, json.dumps(header, separators=(",", ":")).encode()))
    assert str(err.value) == message


def test_an_unreadable_header_or_a_header_array_of_another_dtype_is_named(five: Any) -> None:
    from flwr.app import Array

    from uaap.crypto.wire import read_header

    with pytest.raises(crypto.CiphertextError) as err:
        read_header(_with_header(five, b"{not json"))
    assert str(err.value).startswith("unreadable he-header (Expecting property name enclosed in double quotes")
    with pytest.raises(crypto.CiphertextError) as err:
        read_header(_copy(five, he_header=Array(np.zeros(3, np.uint16))))
    assert str(err.value) == "he-header: expected a 1-D uint8 array, got uint16 of shape (3,)"


def test_header_nesting_counts_braces_and_closes_one_level_at_a_time() -> None:
    from uaap.crypto.wire import _nesting

    assert _nesting(b"{}{}{}{}") == 1, "a closing brace ends a level"
    assert _nesting(b"[[],[[]]]") == 3 and _nesting(b"{[],{[]}}") == 3, "each bracket closes exactly one level"
    assert _nesting(b"{~}{~}") == 1


def test_npy_payload_headers_are_peeked_at_in_at_most_4096_bytes() -> None:
    from flwr.app import Array

    from uaap.crypto.wire import _u8_view

    def v2(total: int) -> Array:
        """A version 2.0 npy payload whose magic, length and header take ``total`` bytes, then 3 bytes of data."""
        text = "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }"
        pad = total - 12 - len(text) - 1
        head = b"\x93NUMPY\x02\x00" + struct.pack("<I", len(text) + pad + 1) + (text + " " * pad + "\n").encode()
        assert len(head) == total
        return Array(dtype="uint8", shape=(3,), stype="numpy.ndarray", data=head + b"abc")

    assert bytes(_u8_view(v2(4096), "x")) == b"abc"
    with pytest.raises(crypto.CiphertextError, match=r"^x: not a NumPy array payload \("):
        _u8_view(v2(4097), "x")


# ---- records -----------------------------------------------------------------------------------------------


def test_parse_record_refuses_entries_chunks_and_coefficients_word_for_word(keys: crypto.KeyFiles, five: Any) -> None:
    from flwr.app import Array

    public = crypto.load_context(keys.public)
    q = public.modulus

    def refused(record: Any) -> str:
        with pytest.raises(crypto.CiphertextError) as err:
            crypto.parse_record(record, public)
        return str(err.value)

    extra = {f"x{i}": five[HE_TOTAL_WEIGHT] for i in range(6)}
    assert refused(_copy(five, **extra)) == (
        "record carries entries beyond the uaap-ckks/2 format: ['x0', 'x1', 'x2', 'x3', 'x4']"
    )
    renamed = _copy(five, **{CHUNK0: None}, **{f"{HE_CHUNK_PREFIX}0001": five[CHUNK0]})
    assert refused(renamed) == "expected 1 chunks he-ct-0000.., got 1"
    assert refused(_copy(five, **{CHUNK0: None})) == "expected 1 chunks he-ct-0000.., got 0"
    short = _u8_array(np.zeros(2 * 8192 - 1, dtype="<u8"))
    assert refused(_copy(five, **{CHUNK0: short})) == "he-ct-0000 has 131064 bytes; 1 ciphertexts need 131072"
    assert refused(_copy(five, **{CHUNK0: Array(np.zeros(4, np.int32))})) == (
        "he-ct-0000: expected a 1-D uint8 array, got int32 of shape (4,)"
    )
    at_q = np.zeros(2 * 8192, dtype="<u8")
    at_q[7] = q
    message = "he-ct-0000 has coefficients >= q: not a ciphertext of this context"
    assert refused(_copy(five, **{CHUNK0: _u8_array(at_q)})) == message
    at_q[7] = q - 1
    assert crypto.parse_record(_copy(five, **{CHUNK0: _u8_array(at_q)}), public).chunks[0].max() == q - 1
    assert refused(_copy(five, he_total_weight=_u8_array(np.array([1.0], "<f4")))) == (
        "he-total-weight must hold one float64, has 4 bytes"
    )
    assert refused(_copy(five, he_total_weight=Array(np.array([1.0])))) == (
        "he-total-weight: expected a 1-D uint8 array, got float64 of shape (1,)"
    )


def test_a_fingerprint_that_is_not_ascii_is_shown_replaced_and_a_bad_array_is_named(
    keys: crypto.KeyFiles, five: Any
) -> None:
    from flwr.app import Array

    public = crypto.load_context(keys.public)
    forged = _copy(five, he_fingerprint=_u8_array("é-key".encode()))
    assert crypto.record_fingerprint(forged) == "\ufffd\ufffd-key"
    with pytest.raises(KeyMaterialError) as err:
        crypto.parse_record(forged, public)
    assert str(err.value).startswith("ciphertext fingerprint '\ufffd\ufffd-key' differs from this side's")
    with pytest.raises(crypto.CiphertextError) as cerr:
        crypto.record_fingerprint(_copy(five, he_fingerprint=Array(np.zeros(2, np.int64))))
    assert str(cerr.value) == f"{HE_FINGERPRINT}: expected a 1-D uint8 array, got int64 of shape (2,)"


def test_the_decryption_cache_is_keyed_by_the_header_too(keys: crypto.KeyFiles) -> None:
    secret = crypto.load_context(keys.secret)
    record = crypto.encrypt_weights([np.arange(5, dtype=np.float32)], 1.0, secret)
    assert np.allclose(crypto.decrypt_sum(record, secret), [0, 1, 2, 3, 4], atol=1e-6)
    header = _header(n_values=4, shapes=[[4]], modulus=str(secret.modulus))
    fewer = _with_header(record, json.dumps(header).encode())  # the same ciphertext declared as 4 values
    assert np.allclose(crypto.decrypt_sum(fewer, secret), [0, 1, 2, 3], atol=1e-6)


def test_encrypt_weights_defaults_to_one_summand_and_an_empty_model_is_refused_downstream(
    keys: crypto.KeyFiles,
) -> None:
    secret = crypto.load_context(keys.secret)
    big = np.full(3, crypto.MAX_ABS_SUM * 0.7, dtype=np.float32)  # beyond the range of 2 summands, not of 1
    assert crypto.is_encrypted(crypto.encrypt_weights([big], 1.0, secret))
    empty = crypto.encrypt_weights([np.zeros(0, np.float32)], 1.0, secret)
    with pytest.raises(crypto.CiphertextError) as err:
        crypto.parse_record(empty, crypto.load_context(keys.public))
    assert str(err.value) == "he-header: n_values=0 must be a whole number in [1, 134217728]"


# ---- the server's plaintext addition -------------------------------------------------------------------------


def test_add_plain_spans_several_chunks_and_takes_a_context_path(keys: crypto.KeyFiles) -> None:
    secret = crypto.load_context(keys.secret)
    rng = np.random.default_rng(11)
    n = 129 * 8192 - 3  # 129 ciphertexts: chunks of 64, 64 and 1
    update = rng.normal(0, 1.0, n).astype(np.float32)
    record = crypto.encrypt_weights([update], 3.0, secret)
    assert sorted(k for k in record if k.startswith(HE_CHUNK_PREFIX))[-1] == f"{HE_CHUNK_PREFIX}0002"
    noise = rng.normal(0, 1.0, n)
    noisy = crypto.add_plain(record, noise, str(keys.public))  # the server passes its context's path
    assert crypto.total_weight(noisy) == 3.0
    got = crypto.decrypt_sum(noisy, secret)
    assert np.abs(got - (3.0 * update.astype(np.float64) + noise)).max() <= 1e-6


# ---- the SEAL layer ---------------------------------------------------------------------------------------------


def _seal_blob(body: bytes) -> bytes:
    return struct.pack("<HBBBBHQ", 0xA15E, 16, 4, 3, 0, 0, 16 + len(body)) + body


def _ct_body(size: int, degree: int, primes: int, data: int) -> bytes:
    """SEAL ciphertext metadata (97 bytes: parms_id, NTT flag, size, N, primes, scale, correction, array
    header) followed by ``data`` bytes of coefficients."""
    meta = bytes(32) + b"\x01" + struct.pack("<QQQdQ", size, degree, primes, 2.0**40, 1) + bytes(24)
    assert len(meta) == 97
    return meta + bytes(data)


def test_seal_ciphertext_metadata_is_checked_against_its_length_word_for_word() -> None:
    from uaap.crypto.seal import _split_seal

    meta, coeffs = _split_seal(_seal_blob(_ct_body(2, 4, 1, 64)))
    assert len(meta) == 97 and coeffs.shape == (2, 4)
    cases = [
        (bytes(96), "SEAL ciphertext shorter than its metadata"),
        (_ct_body(1, 1, 1, 0), "SEAL ciphertext of 97 bytes cannot hold 1 x 1 x 1"),
        (_ct_body(0, 4, 1, 64), "SEAL ciphertext of 161 bytes cannot hold 0 x 4 x 1"),
        (_ct_body(2, 4, 1, 63), "SEAL ciphertext of 160 bytes cannot hold 2 x 4 x 1"),
        (_ct_body(2**63 + 2, 4, 1, 64), "SEAL ciphertext of 161 bytes cannot hold 9223372036854775810 x 4 x 1"),
    ]
    for body, message in cases:
        with pytest.raises(crypto.CiphertextError) as err:
            _split_seal(_seal_blob(body))
        assert str(err.value) == message


def test_encoding_and_encryption_refuse_a_context_whose_level_is_not_the_expected_one(keys: crypto.KeyFiles) -> None:
    import dataclasses

    secret = crypto.load_context(keys.secret)
    plain = crypto.encode_vector(np.ones(8192 * 2 + 1), secret)
    assert plain.shape == (3, 8192) and plain.dtype == np.uint64, "one row per ciphertext, as documented"
    # the parms_id SEAL gives this context's fresh ciphertexts, one bit off: what another parameter set would give
    prefix = secret.seal_prefix
    forged = dataclasses.replace(secret, seal_prefix=bytes([prefix[0] ^ 1]) + prefix[1:])
    with pytest.raises(crypto.CiphertextError) as err:
        crypto.encode_vector(np.ones(3), forged)
    assert str(err.value) == "SEAL encoded a plaintext at an unexpected level"
    with pytest.raises(crypto.CiphertextError) as err:
        crypto.encrypt_vector(np.ones(3), forged)
    assert str(err.value) == "SEAL produced a ciphertext at an unexpected level or scale"


def test_keyless_contexts_name_themselves_when_they_refuse_to_encrypt_or_decrypt(keys: crypto.KeyFiles) -> None:
    import dataclasses

    public = crypto.load_context(keys.public)
    coeffs = np.zeros((1, 2, 8192), dtype=np.uint64)
    for ctx, name in ((public, str(keys.public.resolve())), (dataclasses.replace(public, path=""), public.short)):
        with pytest.raises(KeyMaterialError) as err:
            crypto.encrypt_vector(np.ones(3), ctx)
        assert str(err.value) == f"context {name} has no secret key; clients encrypt with secret.ckks"
        with pytest.raises(KeyMaterialError) as err:
            crypto.decrypt_vector(coeffs, 3, ctx)
        assert str(err.value) == (
            f"context {name} has no secret key and cannot decrypt; only data owners hold secret.ckks"
        )


def test_without_memfd_seal_objects_pass_through_a_private_temporary_file_removed_at_exit(
    keys: crypto.KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    import atexit
    from collections.abc import Callable

    import tenseal.sealapi as sealapi

    from uaap.crypto.seal import _seal_body, _SealFile

    at_exit: list[Callable[[], object]] = []
    monkeypatch.setattr(atexit, "register", at_exit.append)
    monkeypatch.delattr(os, "memfd_create")
    secret = crypto.load_context(keys.secret)
    plain = sealapi.Plaintext()
    secret.seal.encoder.encode([0.25] * 8, 2.0**40, plain)
    sealed = _SealFile()
    blob = sealed.save(plain)
    path = Path(sealed._path)
    assert path.is_file() and path.name.startswith("uaap-seal-") and path.stat().st_mode & 0o777 == 0o600
    back = sealed.load(sealapi.Plaintext(), secret.seal.context, blob)
    assert _seal_body(sealed.save(back)) == _seal_body(blob)
    assert len(at_exit) == 1, "one file per process, removed when it exits"
    os.close(sealed._fd)
    at_exit[0]()
    assert not path.exists()
    at_exit[0]()  # already gone: no error at exit


def test_configerror_is_raised_for_a_vector_of_the_wrong_size(keys: crypto.KeyFiles) -> None:
    secret, public = crypto.load_context(keys.secret), crypto.server_context(keys.public)
    acc = crypto.EncryptedSum(public)
    acc.add(crypto.encrypt_weights([np.ones(5, np.float32)], 1.0, secret))
    with pytest.raises(ConfigError) as err:
        acc.add_plain(np.zeros(4))
    assert str(err.value) == "plaintext vector has 4 values; the encrypted sum has 5"
