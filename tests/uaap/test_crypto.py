"""uaap.crypto with real TenSEAL: key files, wire format, encrypted sums, precision, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from uaap import crypto
from uaap.cli import main
from uaap.config import RunConfig
from uaap.crypto.wire import _u8_view
from uaap.errors import ConfigError, KeyMaterialError
from uaap.protocol import HE_CHUNK_PREFIX, HE_HEADER


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> crypto.KeyFiles:
    return crypto.generate_keys(tmp_path_factory.mktemp("keys") / "fed")


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> crypto.KeyFiles:
    return crypto.generate_keys(tmp_path_factory.mktemp("keys") / "other")


def _model(rng: np.random.Generator) -> list[np.ndarray]:
    """MLP-shaped float32 weights spanning more than one ciphertext (8192 values)."""
    return [rng.normal(0, 0.3, size=s).astype(np.float32) for s in [(64, 64), (64,), (64, 64), (10, 64), (10,)]]


def test_keys_init_writes_secret_0600_public_fingerprint_and_gitignore(keys: crypto.KeyFiles) -> None:
    assert os.stat(keys.secret).st_mode & 0o777 == 0o600
    assert "secret.ckks" in (keys.secret.parent / ".gitignore").read_text()
    assert keys.fingerprint_file.read_text().strip() == keys.fingerprint
    secret, public = crypto.load_context(keys.secret), crypto.load_context(keys.public)
    assert secret.has_secret_key and not public.has_secret_key
    assert secret.fingerprint == public.fingerprint == keys.fingerprint
    # independent check of the fingerprint: SHA-256 of the TenSEAL public serialisation
    import hashlib

    import tenseal as ts

    _, body = crypto.read_key_file(keys.public)
    ctx = ts.context_from(body)
    raw = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    assert hashlib.sha256(raw).hexdigest() == keys.fingerprint
    with pytest.raises(KeyMaterialError, match="already exists"):
        crypto.generate_keys(keys.secret.parent)


def test_cli_init_and_inspect_never_print_key_material(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "init", "--out", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    assert "public.ckks" in out and "0600" in out
    assert main(["keys", "inspect", str(tmp_path / "k" / "secret.ckks"), "--json"]) == 0
    shown = capsys.readouterr().out
    import json

    info = json.loads(shown)
    assert info["secret_key"] is True and info["poly_modulus_degree"] == 8192 and info["mode"] == "0o600"
    assert info["coeff_mod_bit_sizes"] == [60, 60] and info["log2_q"] <= 218
    assert len(shown) < 2000, "inspect must not dump the context"
    assert main(["keys", "inspect", str(tmp_path / "k" / "public.ckks")]) == 0
    assert "public (server)" in capsys.readouterr().out
    assert main(["keys", "inspect", str(tmp_path / "missing.ckks")]) == 2
    assert "uaap keys init" in capsys.readouterr().err


def test_a_tampered_context_file_is_refused(keys: crypto.KeyFiles, tmp_path: Path) -> None:
    header, body = crypto.read_key_file(keys.public)
    other = crypto.generate_keys(tmp_path / "x")
    _, other_body = crypto.read_key_file(other.public)
    forged = tmp_path / "forged.ckks"
    forged.write_bytes(keys.public.read_bytes().replace(body, other_body))  # header of one, context of another
    with pytest.raises(KeyMaterialError, match="corrupt or was altered"):
        crypto.load_context(forged)


def test_round_trip_precision_against_numpy(keys: crypto.KeyFiles) -> None:
    secret = crypto.load_context(keys.secret)
    rng = np.random.default_rng(0)
    weights = _model(rng)
    record = crypto.encrypt_weights(weights, 137.0, secret)
    assert crypto.is_encrypted(record) and crypto.total_weight(record) == 137.0
    assert all(record[k].dtype == "uint8" for k in record)
    back = crypto.decrypt_global(record, secret, like=weights)
    for got, ref in zip(back, weights, strict=True):
        assert got.dtype == ref.dtype and got.shape == ref.shape
        assert np.abs(got.astype(np.float64) - ref).max() <= 1e-6
    n_ct = -(-sum(w.size for w in weights) // crypto.VALUES_PER_CT)
    assert n_ct == 2 and crypto.parse_record(record, secret).header["n_ciphertexts"] == n_ct
    wire = sum(len(record[k].data) for k in record)
    per_value = wire / (n_ct * crypto.VALUES_PER_CT)  # the last ciphertext is part-filled
    assert 16.0 < per_value < 16.2, f"{per_value:.3f} bytes per value (16 = 2 x 8192 x 8 B / 8192)"


def test_repeated_decryption_is_cached_but_never_stale(keys: crypto.KeyFiles) -> None:
    from flwr.app import Array, ArrayRecord

    secret = crypto.load_context(keys.secret)
    weights = _model(np.random.default_rng(6))
    record = crypto.encrypt_weights(weights, 1.0, secret)
    first = crypto.decrypt_sum(record, secret)
    assert crypto.decrypt_sum(record, secret) is first and not first.flags.writeable
    # one NTT coefficient of the first ciphertext moved by +1: a different ciphertext must decrypt afresh
    coeffs = _u8_view(record[f"{HE_CHUNK_PREFIX}0000"], "x").copy()
    coeffs.view("<u8")[0] += np.uint64(1)
    changed = ArrayRecord({k: record[k] for k in record})
    changed[f"{HE_CHUNK_PREFIX}0000"] = Array(coeffs)
    second = crypto.decrypt_sum(changed, secret)
    assert second is not first and not np.array_equal(second[: crypto.VALUES_PER_CT], first[: crypto.VALUES_PER_CT])
    assert np.array_equal(second[crypto.VALUES_PER_CT :], first[crypto.VALUES_PER_CT :])  # the untouched ciphertext


def test_encrypted_sum_matches_weighted_numpy_sum_and_add_plain(keys: crypto.KeyFiles) -> None:
    secret, public = crypto.load_context(keys.secret), crypto.server_context(keys.public)
    rng = np.random.default_rng(1)
    clients = [(_model(rng), float(n)) for n in (40, 95, 17, 230)]
    acc = crypto.EncryptedSum(public)
    for weights, n in clients:
        acc.add(crypto.encrypt_weights(weights, n, secret, max_summands=4))
    total = acc.result()
    assert total is not None and crypto.total_weight(total) == sum(n for _, n in clients)
    ref = sum(n * np.concatenate([w.ravel().astype(np.float64) for w in ws]) for ws, n in clients)
    plain_sum = crypto.decrypt_sum(total, secret)
    assert np.abs(plain_sum - ref).max() <= 1e-6
    noise = rng.normal(0, 2.0, size=ref.size)
    noisy = crypto.add_plain(total, noise, public)  # central DP adds noise with the public context only
    assert crypto.total_weight(noisy) == crypto.total_weight(total)
    assert np.abs(crypto.decrypt_sum(noisy, secret) - (ref + noise)).max() <= 1e-6
    with pytest.raises(ConfigError, match="values"):
        crypto.add_plain(total, noise[:-1], public)


def test_server_side_cannot_decrypt(keys: crypto.KeyFiles) -> None:
    secret, public = crypto.load_context(keys.secret), crypto.load_context(keys.public)
    record = crypto.encrypt_weights(_model(np.random.default_rng(2)), 3.0, secret)
    assert not public.context.has_secret_key()
    with pytest.raises(KeyMaterialError, match="no secret key"):
        crypto.decrypt_global(record, public)
    # TenSEAL itself refuses too: the public context holds no secret key to decrypt with
    import tenseal as ts

    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector(public.context, [1.0, 2.0]).decrypt()
    with pytest.raises(KeyMaterialError, match="carries a secret key"):
        crypto.server_context(keys.secret)


def test_foreign_and_broken_ciphertexts_leave_the_sum_untouched(
    keys: crypto.KeyFiles, other_keys: crypto.KeyFiles
) -> None:
    from flwr.app import Array, ArrayRecord

    secret, public = crypto.load_context(keys.secret), crypto.server_context(keys.public)
    foreign = crypto.load_context(other_keys.secret)
    rng = np.random.default_rng(3)
    good = crypto.encrypt_weights(_model(rng), 5.0, secret)
    acc = crypto.EncryptedSum(public)
    acc.add(good)
    with pytest.raises(KeyMaterialError) as err:
        acc.add(crypto.encrypt_weights(_model(rng), 5.0, foreign))
    assert public.short in str(err.value) and foreign.short in str(err.value)
    broken = ArrayRecord({k: good[k] for k in good})
    broken[f"{HE_CHUNK_PREFIX}0000"] = Array(np.frombuffer(b"not a ciphertext", dtype=np.uint8).copy())
    with pytest.raises(crypto.CiphertextError):
        acc.add(broken)
    out_of_range = ArrayRecord({k: good[k] for k in good})
    coeffs = _u8_view(good[f"{HE_CHUNK_PREFIX}0000"], "x").copy()
    coeffs.view("<u8")[5] = np.uint64(2**64 - 1)
    out_of_range[f"{HE_CHUNK_PREFIX}0000"] = Array(coeffs)
    with pytest.raises(crypto.CiphertextError, match=">= q"):
        acc.add(out_of_range)
    with pytest.raises(crypto.CiphertextError, match="disagrees"):
        acc.add(good, weight=7.0)
    assert acc.count == 1 and acc.total == 5.0
    result = acc.result()
    assert result is not None
    ref = crypto.decrypt_global(good, secret)
    for got, want in zip(crypto.decrypt_global(result, secret), ref, strict=True):
        assert np.array_equal(got, want)


def test_range_guard_refuses_values_that_would_wrap(keys: crypto.KeyFiles) -> None:
    secret = crypto.load_context(keys.secret)
    with pytest.raises(ConfigError, match="CKKS range"):
        crypto.encrypt_weights([np.full(10, 30.0, dtype=np.float32)], 1000.0, secret, max_summands=10)
    with pytest.raises(ConfigError, match="positive"):
        crypto.encrypt_weights([np.ones(3, dtype=np.float32)], 0.0, secret)


def test_ciphertext_chunks_survive_a_checkpoint(keys: crypto.KeyFiles, uaap_home: Path) -> None:
    from flwr.app import Array, ArrayRecord

    from uaap import workspace

    secret = crypto.load_context(keys.secret)
    weights = [np.random.default_rng(4).normal(size=600_000).astype(np.float32)]  # > one 64-ciphertext chunk
    record = crypto.encrypt_weights(weights, 2.0, secret)
    assert len([k for k in record if k.startswith(HE_CHUNK_PREFIX)]) == 2
    rd = workspace.run_dir("run-he")
    rd.save_checkpoint(workspace.Checkpoint(3, {k: v.numpy() for k, v in record.items()}, {}))  # as the loop does
    ckpt = rd.latest_checkpoint()
    assert ckpt is not None
    back = ArrayRecord({k: Array(v) for k, v in ckpt.arrays.items()})  # as resume does
    assert crypto.is_encrypted(back) and crypto.total_weight(back) == 2.0
    assert np.abs(crypto.decrypt_global(back, secret)[0] - weights[0]).max() <= 1e-6


def test_simulation_keys_are_made_once_per_run(uaap_home: Path) -> None:
    cfg = RunConfig(secure_aggregation="ckks", run_id="run-sim")
    made = crypto.ensure_simulation_keys(cfg)
    assert Path(made.he_secret_context).parent == uaap_home.resolve() / "keys" / "run-sim"
    assert os.stat(made.he_secret_context).st_mode & 0o777 == 0o600
    again = crypto.ensure_simulation_keys(cfg)
    assert (
        crypto.load_context(again.he_public_context).fingerprint
        == crypto.load_context(made.he_public_context).fingerprint
    )
    assert crypto.ensure_simulation_keys(RunConfig()) == RunConfig()
    with pytest.raises(ConfigError, match="both"):
        crypto.ensure_simulation_keys(cfg.replace(he_public_context="x.ckks"))


def test_client_context_needs_the_secret_file(keys: crypto.KeyFiles) -> None:
    cfg = RunConfig(secure_aggregation="ckks")
    with pytest.raises(KeyMaterialError, match="no secret context"):
        crypto.client_context(cfg, {})
    with pytest.raises(KeyMaterialError, match="public context"):
        crypto.client_context(cfg.replace(he_secret_context=str(keys.public)), {})
    node = {"he-secret-context": str(keys.secret)}  # node config wins (deployment)
    assert crypto.client_context(cfg.replace(he_secret_context=str(keys.public)), node).has_secret_key


def test_many_summands_cross_the_lazy_reduction(keys: crypto.KeyFiles) -> None:
    secret, public = crypto.load_context(keys.secret), crypto.server_context(keys.public)
    rng = np.random.default_rng(5)
    updates = [rng.normal(0, 1.0, 50).astype(np.float32) for _ in range(33)]  # > 2 x 15 lazy additions
    acc = crypto.EncryptedSum(public)
    for u in updates:
        acc.add(crypto.encrypt_weights([u], 1.0, secret, max_summands=33))
    result = acc.result()
    assert result is not None and acc.count == 33
    assert np.abs(crypto.decrypt_sum(result, secret) - np.sum(updates, axis=0, dtype=np.float64)).max() <= 1e-6


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b'{"format": "uaap-ckks/2", "n_values": 2000000000000, "n_ciphertexts": 244140625, "shapes": '
         b'[[2000000000000]], "dtypes": ["float32"], "modulus": "1"}', "whole numbers in"),
        (b"[" * 5_000 + b"]" * 5_000, "nests deeper"),
        (b" " * 70_000, "at most 65536"),
        (b'{"format": "uaap-ckks/2", "n_values": 5, "n_ciphertexts": 1, "shapes": [[5]], "dtypes": ["float32"], '
         b'"modulus": "1", "extra": 1}', "exactly the keys"),
    ],
)  # fmt: skip
def test_hostile_headers_are_refused_before_anything_is_allocated(
    keys: crypto.KeyFiles, header: bytes, reason: str
) -> None:
    # Once, a 270-byte header declaring 2e12 values cost the server +219 MiB and 0.9 s, and a deeply nested one
    # raised RecursionError out of the round. Now each is refused by the same checks the clients use, with
    # a bounded allocation (measured with tracemalloc) and in milliseconds.
    import time
    import tracemalloc

    from uaap.crypto.wire import _u8_array

    public = crypto.load_context(keys.public)
    record = crypto.encrypt_weights([np.ones(5, dtype=np.float32)], 1.0, crypto.load_context(keys.secret))
    record[HE_HEADER] = _u8_array(header)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(crypto.CiphertextError, match=reason):
        crypto.parse_record(record, public, shapes=[(5,)])
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20, f"peak {peak / 2**20:.2f} MiB"
    assert seconds < 0.5
    with pytest.raises(crypto.CiphertextError, match="shapes"):  # a well-formed record of another model
        crypto.parse_record(crypto.encrypt_weights([np.ones(7, np.float32)], 1.0, crypto.load_context(keys.secret)),
                            public, shapes=[(5,)])  # fmt: skip


def test_simulation_keys_refuse_a_run_id_that_escapes_the_workspace(uaap_home: Path) -> None:
    from uaap.errors import WorkspaceError

    with pytest.raises(WorkspaceError, match="not a valid run id"):
        crypto.ensure_simulation_keys(RunConfig(secure_aggregation="ckks", run_id="../escaped"))
    assert not (uaap_home / "escaped").exists() and not (uaap_home / "keys").exists()


# ---- exact behaviour of the wire format and the server's sum (each kills mutants the tests above missed) ---


def test_header_nesting_is_counted_outside_strings_only() -> None:
    from uaap.crypto.wire import _nesting

    assert _nesting(b"") == 0 and _nesting(b"[]") == 1 and _nesting(b"{[]}") == 2 and _nesting(b"[][][]") == 1
    assert _nesting(b'{"a": "[[[{{{", "b": [[1]]}') == 3, "brackets inside strings do not count"
    assert _nesting(b'["\\"[[[", [2]]') == 2, "an escaped quote does not end the string"
    assert _nesting(b'["\\\\", [[3]]]') == 3, "an escaped backslash does not escape the closing quote"
    assert _nesting(b"#|~") == 0


def test_array_payloads_are_read_by_any_npy_header_and_refused_when_they_lie() -> None:
    import io

    from flwr.app import Array

    from uaap.crypto.wire import _u8_array, _u8_view

    data = np.arange(300, dtype=np.uint16).astype(np.uint8)
    assert np.array_equal(_u8_view(_u8_array(data), "x"), data)  # the fast path

    def payload(write, header: dict, body: bytes) -> Array:
        buf = io.BytesIO()
        write(buf, header)
        return Array(dtype="uint8", shape=(len(body),), stype="numpy.ndarray", data=buf.getvalue() + body)

    v1, v2 = np.lib.format.write_array_header_1_0, np.lib.format.write_array_header_2_0
    raw = bytes(range(256)) * 20  # long enough that a 4096-byte peek sees the header only
    ok = payload(v2, {"descr": "|u1", "fortran_order": False, "shape": (len(raw),)}, raw)
    assert bytes(_u8_view(ok, "x")) == raw, "a version 2.0 header is read by the general path"
    cases = [
        (payload(v1, {"descr": "<u2", "fortran_order": False, "shape": (3,)}, b"\0" * 6),
         "x: expected a 1-D uint8 array, got uint16 of shape (3,)"),
        (payload(v1, {"descr": "|u1", "fortran_order": False, "shape": (2, 3)}, b"\0" * 6),
         "x: expected a 1-D uint8 array, got uint8 of shape (2, 3)"),
        (payload(v1, {"descr": "|u1", "fortran_order": True, "shape": (6,)}, b"\0" * 6),
         "x: expected a 1-D uint8 array, got uint8 of shape (6,)"),
        (payload(v2, {"descr": "|u1", "fortran_order": False, "shape": (7,)}, b"\0" * 6),
         "x: payload has 6 bytes, header says 7"),
    ]  # fmt: skip
    for array, message in cases:
        with pytest.raises(crypto.CiphertextError) as err:
            _u8_view(array, "x")
        assert str(err.value) == message
    with pytest.raises(crypto.CiphertextError, match=r"^x: not a NumPy array payload \("):
        _u8_view(Array(dtype="uint8", shape=(4,), stype="numpy.ndarray", data=b"\x93NUMPY garbage"), "x")


def test_the_sum_checks_weights_tightly_shapes_first_and_names_both_layouts(keys: crypto.KeyFiles) -> None:
    secret, public = crypto.load_context(keys.secret), crypto.server_context(keys.public)
    five = crypto.encrypt_weights([np.ones(5, np.float32)], 1.0, secret)
    seven = crypto.encrypt_weights([np.ones(7, np.float32)], 1.0, secret)
    acc = crypto.EncryptedSum(public, shapes=[(5,)])
    with pytest.raises(crypto.CiphertextError, match=r"record encrypts tensors of shapes \[\(7,\)\]"):
        acc.add(seven)  # even as the first record
    for claimed in (1.0 + 1e-9, 1.0 + 1e-6, 1.5):  # np.isclose's default tolerances would let these through
        with pytest.raises(crypto.CiphertextError) as err:
            acc.add(five, weight=claimed)
        assert str(err.value) == f"reply metric he-weight={claimed} disagrees with its record's 1.0"
    acc.add(five, weight=1.0 + 1e-13)
    assert acc.count == 1
    loose = crypto.EncryptedSum(public)
    loose.add(five)
    with pytest.raises(crypto.CiphertextError) as err:
        loose.add(seven)
    assert str(err.value) == "reply encrypts 7 values [(7,)]; the others encrypt 5 values [(5,)]"


def test_lazy_reduction_is_exact_for_coefficients_just_below_q(keys: crypto.KeyFiles) -> None:
    # Ciphertexts whose every coefficient is q - 1 (valid: below q) are the worst case for the uint64 running
    # sum: 17 of them overflow 2**64 unless reduced in time. The sum must equal Python's exact modular sum.
    from flwr.app import Array, ArrayRecord

    from uaap.crypto.wire import _u8_array, parse_record

    public = crypto.server_context(keys.public)
    q = public.modulus
    base = crypto.encrypt_weights([np.ones(5, np.float32)], 1.0, crypto.load_context(keys.secret))
    top = ArrayRecord({k: base[k] for k in base})
    chunk = f"{HE_CHUNK_PREFIX}0000"
    top[chunk] = _u8_array(np.full(2 * 8192, q - 1, dtype="<u8"))
    assert isinstance(top[chunk], Array)
    for n in (14, 15, 16, 17, 31, 40):
        acc = crypto.EncryptedSum(public)
        for _ in range(n):
            acc.add(top)
        out = acc.result()
        assert out is not None
        got = parse_record(out, public).chunks[0]
        assert int(got.min()) == int(got.max()) == (n * (q - 1)) % q, n


def test_plaintext_addition_bounds_and_single_ciphertext_records(keys: crypto.KeyFiles) -> None:
    secret, public = crypto.load_context(keys.secret), crypto.server_context(keys.public)
    empty = crypto.EncryptedSum(public)
    with pytest.raises(crypto.CiphertextError) as err:
        empty.add_plain(np.zeros(3))
    assert str(err.value) == "the encrypted sum is empty: add a ciphertext before a plaintext"
    small = crypto.encrypt_weights([np.full(5, 0.5, np.float32)], 2.0, secret)  # one ciphertext
    acc = crypto.EncryptedSum(public)
    acc.add(small)
    with pytest.raises(ConfigError) as err:
        acc.add_plain(np.array([0.0, 0.0, crypto.MAX_ABS_SUM, 0.0, 0.0]))
    assert str(err.value) == "plaintext vector peaks at 2.621e+05, beyond the CKKS range 262144"
    acc.add_plain([1, 2, 3, 4, 5])  # a list of ints is a float64 vector
    acc.add_plain(np.array([0.25, 0.25, 0.25, 0.25, 2.0**18 - 1]))
    out = acc.result()
    assert out is not None
    expected = np.array([1.0, 2.0, 3.0, 4.0, 5.0]) + 1.0 + np.array([0.25, 0.25, 0.25, 0.25, 2.0**18 - 1])
    assert np.abs(crypto.decrypt_sum(out, secret) - expected).max() <= 1e-6


def test_key_files_say_exactly_what_they_hold(keys: crypto.KeyFiles) -> None:
    import re

    for path, secret in ((keys.secret, True), (keys.public, False)):
        header, _ = crypto.read_key_file(path)
        created = header.pop("created")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created), created
        assert header == {
            "format": crypto.FORMAT,
            "scheme": "ckks",
            "poly_modulus_degree": 8192,
            "coeff_mod_bit_sizes": [60, 60],
            "scale_bits": 40,
            "security": "128-bit (HE standard, tc128)",
            "secret_key": secret,
            "fingerprint": keys.fingerprint,
        }
    assert sorted(p.name for p in keys.secret.parent.iterdir()) == [
        ".gitignore", "fingerprint.txt", "public.ckks", "secret.ckks",
    ], "no temporary file is left behind"  # fmt: skip
    info = crypto.inspect_context(keys.public)
    assert info == {
        "file": str(keys.public),
        "kind": "public (server)",
        "secret_key": False,
        "public_key": True,
        "scheme": "ckks",
        "poly_modulus_degree": 8192,
        "coeff_mod_bit_sizes": [60, 60],
        "log2_q": 120,
        "security": "128-bit: log2 q <= 218 at N=8192 (HE standard)",
        "scale": "2**40",
        "values_per_ciphertext": 8192,
        "bytes_per_parameter": 16.0,
        "fingerprint": keys.fingerprint,
        "created": crypto.read_key_file(keys.public)[0]["created"],
        "mode": oct(keys.public.stat().st_mode & 0o777),
    }
    assert crypto.inspect_context(keys.secret)["kind"] == "secret (data owners only)"


def test_contexts_of_other_parameters_and_missing_paths_are_refused_word_for_word(keys: crypto.KeyFiles) -> None:
    import tenseal as ts

    from uaap.crypto.keys import _wrap

    other = ts.context(ts.SCHEME_TYPE.CKKS, 16384, coeff_mod_bit_sizes=[60, 60])
    with pytest.raises(KeyMaterialError) as err:
        _wrap(other)
    assert str(err.value) == (
        "CKKS context (in memory) has parameters (N=16384, data primes=1, scale=1.09951e+12); UAAP expects N=8192, "
        "coeff_mod_bit_sizes=[60, 60], scale 2**40: make keys with `uaap keys init`"
    )
    with pytest.raises(KeyMaterialError) as err:
        crypto.client_context(RunConfig(secure_aggregation="ckks"), None)
    assert str(err.value) == (
        "secure-aggregation='ckks' but this client has no secret context: pass --node-config "
        "'he-secret-context=\"DIR/secret.ckks\"' (or he-secret-context in the run config); make keys with "
        "`uaap keys init --out DIR`"
    )
    with pytest.raises(ConfigError) as err:
        crypto.ensure_simulation_keys(RunConfig(secure_aggregation="ckks"))
    assert str(err.value) == "simulation keys are stored per run: set run-id before calling ensure_simulation_keys"
    with pytest.raises(ConfigError) as err:
        crypto.ensure_simulation_keys(RunConfig(secure_aggregation="ckks", he_secret_context="s.ckks", run_id="r"))
    assert str(err.value) == (
        "give both he-public-context and he-secret-context (or neither, to let a simulation make keys); got "
        "he-public-context='', he-secret-context='s.ckks'"
    )


def test_seal_objects_pass_through_one_in_memory_file_per_process(keys: crypto.KeyFiles) -> None:
    import fcntl

    import tenseal.sealapi as sealapi

    from uaap.crypto.seal import _seal_body, _SealFile

    secret = crypto.load_context(keys.secret)
    plain = sealapi.Plaintext()
    secret.seal.encoder.encode([0.5] * 16, 2.0**40, plain)
    sealed = _SealFile()
    first = sealed.save(plain)
    fd = sealed._fd
    assert sealed._path == f"/proc/self/fd/{fd}", "a memfd, never a file on disk"
    assert os.readlink(sealed._path).startswith("/memfd:uaap-seal")
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, "not inherited by child processes"
    assert sealed.save(plain) == first and sealed._fd == fd, "one file per process, reused"
    back = sealed.load(sealapi.Plaintext(), secret.seal.context, first)
    assert _seal_body(sealed.save(back)) == _seal_body(first)


def test_seal_serialisations_are_read_by_their_compression_mode_and_refused_otherwise() -> None:
    import struct
    import zlib

    import zstandard

    from uaap.crypto.seal import _seal_body

    def blob(body: bytes, compr: int, *, magic: int = 0xA15E, hsize: int = 16, size: int | None = None) -> bytes:
        head = struct.pack("<HBBBBHQ", magic, hsize, 4, 3, compr, 0, 16 + len(body) if size is None else size)
        return head + body

    raw = bytes(range(200)) * 3
    assert _seal_body(blob(raw, 0)) == raw
    assert _seal_body(blob(zlib.compress(raw), 1)) == raw
    assert _seal_body(blob(zstandard.ZstdCompressor().compress(raw), 2)) == raw
    with pytest.raises(crypto.CiphertextError) as err:
        _seal_body(blob(raw, 3))
    assert str(err.value) == "unknown SEAL compression mode 3"
    for bad in (blob(raw, 0, magic=0xA15F), blob(raw, 0, hsize=17), blob(raw, 0, size=10)):
        with pytest.raises(crypto.CiphertextError) as err:
            _seal_body(bad)
        assert str(err.value) == "not a SEAL serialisation"


def test_header_dimensions_and_the_decryption_cache_bounds(keys: crypto.KeyFiles) -> None:
    from uaap.crypto.wire import MAX_VALUES, _dims

    assert _dims([1] * 8) == (1,) * 8 and _dims([0]) == (0,) and _dims([MAX_VALUES]) == (MAX_VALUES,)
    for bad, message in (
        ([1] * 9, "a shape must be a list of at most 8 dimensions, got [1, 1, 1, 1, 1, 1, 1, 1, 1]"),
        ((3,), "a shape must be a list of at most 8 dimensions, got (3,)"),
        ([MAX_VALUES + 1], f"a shape's dimensions must be whole numbers in [0, {MAX_VALUES}], got [{MAX_VALUES + 1}]"),
        ([-1], f"a shape's dimensions must be whole numbers in [0, {MAX_VALUES}], got [-1]"),
        ([True], f"a shape's dimensions must be whole numbers in [0, {MAX_VALUES}], got [True]"),
    ):
        with pytest.raises(crypto.CiphertextError) as err:
            _dims(bad)
        assert str(err.value) == message
    secret = crypto.load_context(keys.secret)
    a, b, c = (crypto.encrypt_weights([np.full(4, v, np.float32)], 1.0, secret) for v in (1.0, 2.0, 3.0))
    first_a = crypto.decrypt_sum(a, secret)
    crypto.decrypt_sum(b, secret)
    assert crypto.decrypt_sum(a, secret) is first_a, "the last two decryptions are kept"
    crypto.decrypt_sum(b, secret)
    crypto.decrypt_sum(c, secret)
    again = crypto.decrypt_sum(a, secret)
    assert again is not first_a and np.array_equal(again, first_a), "only two: the third evicts the oldest"


def test_parse_record_and_encrypt_weights_refuse_word_for_word(
    keys: crypto.KeyFiles, other_keys: crypto.KeyFiles
) -> None:
    import json

    from uaap.crypto.wire import _u8_array
    from uaap.protocol import HE_TOTAL_WEIGHT

    secret, public = crypto.load_context(keys.secret), crypto.load_context(keys.public)
    record = crypto.encrypt_weights([np.ones(5, dtype=np.float32)], 1.0, secret)

    def refused(**changes: object) -> str:
        header = json.loads(bytes(record[HE_HEADER].numpy()).decode()) | changes
        forged = type(record)({k: record[k] for k in record})
        forged[HE_HEADER] = _u8_array(json.dumps(header).encode())
        with pytest.raises(crypto.CiphertextError) as err:
            crypto.parse_record(forged, public)
        return str(err.value)

    for modulus in ("abc", 12345, str(public.modulus + 2)):
        assert refused(modulus=modulus) == "ciphertext modulus does not match this context's (uaap-ckks/2)"
    for weight in (0.0, -1.0, float("inf"), float("nan")):
        bad = type(record)({k: record[k] for k in record})
        bad[HE_TOTAL_WEIGHT] = _u8_array(np.array([weight], dtype="<f8"))
        with pytest.raises(crypto.CiphertextError) as err:
            crypto.parse_record(bad, public)
        assert str(err.value) == f"he-total-weight={weight!r} must be a positive finite number"
    foreign = crypto.encrypt_weights([np.ones(5, np.float32)], 1.0, crypto.load_context(other_keys.secret))
    with pytest.raises(KeyMaterialError) as err:
        crypto.parse_record(foreign, public)
    assert str(err.value) == (
        f"ciphertext fingerprint {other_keys.fingerprint[:16]!r} differs from this side's context fingerprint "
        f"{public.short}: the sender uses another federation's keys; give it the key files from the same "
        "`uaap keys init`"
    )
    with pytest.raises(crypto.CiphertextError, match=r"record encrypts tensors of shapes \[\(5,\)\]"):
        crypto.decrypt_global(record, secret, like=[np.ones(4)])
    top = np.full(3, crypto.MAX_ABS_SUM / 2, dtype=np.float32)
    assert crypto.is_encrypted(crypto.encrypt_weights([top * 0.999], 1.0, secret, max_summands=2))
    with pytest.raises(ConfigError) as err:
        crypto.encrypt_weights([top], 1.0, secret, max_summands=2)  # 2**17 x 2 clients reaches the range exactly
    assert str(err.value) == (
        "pre-weighted update peaks at |1.311e+05| x 2 clients, beyond the CKKS range 262144 (scale 2**40 in a "
        "60-bit prime): the model diverged, or num-examples is too large for this range; lower the learning rate "
        "or use fewer/larger weights"
    )
    assert crypto.is_encrypted(crypto.encrypt_weights([top * 1.4], 1.0, secret, max_summands=1))
