"""Files encrypted at rest (uaap.at_rest): keys from a file or the environment, authenticated AES-256-GCM."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

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
