"""Files encrypted at rest (uaap.at_rest): keys from a file or the environment, authenticated AES-256-GCM."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from uaap import at_rest


def test_round_trip_is_bit_identical_and_each_nonce_fresh() -> None:
    key = os.urandom(32)
    data = os.urandom(10_000) + b"\x00" * 7
    one, two = at_rest.encrypt(data, key, "model.onnx"), at_rest.encrypt(data, key, "model.onnx")
    assert one != two and data not in one  # a fresh nonce each time; no plaintext in the file
    assert at_rest.decrypt(one, key, "model.onnx") == data == at_rest.decrypt(two, key, "model.onnx")
    assert at_rest.decrypt(at_rest.encrypt(b"", key, "x"), key, "x") == b""


@pytest.mark.parametrize("where", [8, 8 + 12, -1])  # the header's end, the ciphertext, the tag
def test_any_changed_byte_another_name_or_key_is_refused(where: int) -> None:
    key = os.urandom(32)
    blob = bytearray(at_rest.encrypt(b"weights" * 100, key, "model.npz"))
    with pytest.raises(at_rest.AtRestError, match="failed authentication"):
        at_rest.decrypt(bytes(blob), key, "model.skops")
    with pytest.raises(at_rest.AtRestError, match="failed authentication"):
        at_rest.decrypt(bytes(blob), os.urandom(32), "model.npz")
    blob[where] ^= 0x80
    with pytest.raises(at_rest.AtRestError, match="'model.npz' failed authentication"):
        at_rest.decrypt(bytes(blob), key, "model.npz")
    with pytest.raises(at_rest.AtRestError, match="not an at-rest encrypted file"):
        at_rest.decrypt(b"plain bytes" * 10, key, "model.npz")


def test_key_file_is_0600_never_overwritten_and_refused_when_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "model.key"
    key = at_rest.load_key(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) == 32
    assert at_rest.load_key(path) == key
    with pytest.raises(at_rest.AtRestError, match="already exists"):
        at_rest.create_key_file(path)
    path.chmod(0o644)
    with pytest.raises(at_rest.AtRestError, match=r"mode 644\); run `chmod 600"):
        at_rest.load_key(path)
    with pytest.raises(at_rest.AtRestError, match="does not exist"):
        at_rest.load_key(tmp_path / "missing.key")


def test_key_from_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv(at_rest.KEY_ENV, base64.b64encode(key).decode())
    assert at_rest.load_key(tmp_path / "unused.key") == key
    monkeypatch.setenv(at_rest.KEY_ENV, key.hex())
    assert at_rest.load_key() == key
    monkeypatch.setenv(at_rest.KEY_ENV, "c2hvcnQ=")
    with pytest.raises(at_rest.AtRestError, match=r"\$UAAP_MODEL_KEY is not 32 bytes"):
        at_rest.load_key()
    assert at_rest.fingerprint(key) != at_rest.fingerprint(os.urandom(32)) and len(at_rest.fingerprint(key)) == 16


def test_an_encrypted_checkpoint_round_trips_and_a_changed_or_moved_one_is_refused(uaap_home: Path) -> None:
    from uaap import workspace

    rd = workspace.run_dir("enc")
    arrays = {"w": np.random.default_rng(0).normal(size=(3, 4)), "b": np.arange(4.0)}
    ckpt = workspace.Checkpoint(round=2, arrays=arrays, state={"privacy": {"steps": [1, 2]}})
    path = rd.save_checkpoint(ckpt, encrypt=True)
    blob = path.read_bytes()
    assert at_rest.is_encrypted(blob) and b"privacy" not in blob and arrays["w"].tobytes() not in blob
    key_file = at_rest.default_key_file()
    assert key_file == workspace.home() / "keys" / "model-at-rest.key"  # the two resolve the workspace alike
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # made on first use
    back = rd.latest_checkpoint()
    assert back is not None and back.round == 2 and back.state == ckpt.state
    assert all(np.array_equal(back.arrays[k], v) and back.arrays[k].dtype == v.dtype for k, v in arrays.items())

    # round 2's file under round 3's name (a rollback of the model) fails authentication, as a flipped byte does
    path.rename(path.with_name("round-0003.npz"))
    with pytest.raises(at_rest.AtRestError, match="'checkpoint:enc/round-0003.npz' failed authentication"):
        rd.latest_checkpoint()
    path.with_name("round-0003.npz").unlink()
    changed = bytearray(rd.save_checkpoint(ckpt, encrypt=True).read_bytes())
    changed[-20] ^= 1
    path.write_bytes(bytes(changed))
    with pytest.raises(at_rest.AtRestError, match="failed authentication"):
        rd.latest_checkpoint()
    # without its key the checkpoint cannot be read, and the error says where the key is looked for
    rd.save_checkpoint(ckpt, encrypt=True)
    key_file.unlink()
    with pytest.raises(at_rest.AtRestError, match=r"UAAP_MODEL_KEY is not set and key file .* does not exist"):
        rd.latest_checkpoint()
    # a plaintext checkpoint (the default) still reads without any key
    rd.save_checkpoint(workspace.Checkpoint(round=4, arrays=arrays, state={}))
    assert not at_rest.is_encrypted((rd.checkpoint_dir / "round-0004.npz").read_bytes())
    assert rd.latest_checkpoint().round == 4  # type: ignore[union-attr]
