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
