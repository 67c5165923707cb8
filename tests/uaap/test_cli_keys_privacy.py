"""``uaap keys decrypt-model`` and ``uaap privacy report`` end to end through the CLI, with each refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uaap import crypto, workspace
from uaap.cli import main
from uaap.config import RunConfig
from uaap.models import build_model, get_weights
from uaap.privacy.accountant import epsilon_of
from uaap.privacy.ledger import Budget, Ledger, Release


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[crypto.KeyFiles, crypto.KeyFiles]:
    base = tmp_path_factory.mktemp("cli-keys")
    return crypto.generate_keys(base / "fed"), crypto.generate_keys(base / "other")


def _run(run_id: str, arrays: dict[str, np.ndarray] | None, round_: int = 3) -> workspace.RunDir:
    rd = workspace.run_dir(run_id)
    rd.write_config(RunConfig(run_id=run_id, model="mlp", dataset="digits"))
    if arrays is not None:
        rd.save_checkpoint(workspace.Checkpoint(round_, arrays, {}))
    return rd


def test_decrypt_model_writes_the_averaged_plaintext_model(uaap_home, keys, capsys) -> None:
    fed, _ = keys
    weights = get_weights(build_model("mlp", 64, 10, seed=4))
    record = crypto.encrypt_weights(weights, 5.0, crypto.load_context(fed.secret))  # 5 w, total weight 5
    rd = _run("he-run", {k: v.numpy() for k, v in record.items()})
    assert main(["keys", "decrypt-model", "he-run", "--secret-context", str(fed.secret)]) == 0
    assert str(rd.model_file) in capsys.readouterr().out
    model, meta = workspace.load_model(rd.model_file)
    assert meta["decrypted_from_round"] == 3 and meta["he_fingerprint"] == fed.fingerprint
    for got, want in zip(get_weights(model), weights, strict=True):
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5


def test_decrypt_model_refuses_with_the_reason(uaap_home, keys, capsys) -> None:
    fed, other = keys
    weights = get_weights(build_model("mlp", 64, 10, seed=4))
    record = crypto.encrypt_weights(weights, 1.0, crypto.load_context(fed.secret))
    _run("he-run", {k: v.numpy() for k, v in record.items()})
    _run("fresh", None)
    _run("plain", {f"w{i}": w for i, w in enumerate(weights)})
    cases = [
        (["fresh", fed.secret], "run 'fresh' has no checkpoint yet; nothing to decrypt"),
        (["plain", fed.secret], "run 'plain' is not encrypted; its plaintext model is "),
        (["he-run", fed.public], f"{fed.public} is a public context; decrypting needs secret.ckks"),
        (["he-run", other.secret], f"encrypted under key fingerprint {fed.fingerprint[:16]}, but {other.secret} has"),
        (["no-such-run", fed.secret], "no-such-run"),
    ]
    for (run_id, context), message in cases:
        assert main(["keys", "decrypt-model", run_id, "--secret-context", str(context)]) == 2
        err = capsys.readouterr().err
        assert message in " ".join(err.split()), err
    assert not workspace.run_dir("he-run").model_file.exists(), "a refusal writes no model"


def test_privacy_report_prints_each_rounds_epsilon_from_the_ledger(uaap_home, capsys) -> None:
    eps = [epsilon_of([(1.0, 0.5, k)], 1e-5) for k in (1, 2)]
    local = epsilon_of([(2.0, 0.05, 10)], 1e-5)
    ledger = Ledger()
    ledger.set_budget(Budget("dp-run", 10.0, 1e-5, "rdp", "user+example"))
    ledger.record(
        [
            Release("dp-run", 1, "*", "user", "central-gaussian", 1.0, 0.5, 1, 1e-5, eps[0]),
            Release("dp-run", 1, "node-7", "example", "dp-sgd", 2.0, 0.05, 10, 1e-5, local),
            Release("dp-run", 2, "*", "user", "central-gaussian", 1.0, 0.5, 1, 1e-5, eps[1]),
        ]
    )
    assert main(["privacy", "report", "dp-run"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert rows["1"] == ["1", "1.00", "0.500", f"{eps[0]:.3f}", "1", f"{local:.3f}", f"{10 * eps[0]:.0f}%"]
    assert rows["2"] == ["2", "1.00", "0.500", f"{eps[1]:.3f}", "-", f"{local:.3f}", f"{10 * eps[1]:.0f}%"]
    assert f"user-level epsilon {eps[1]:.3f}" in out and "max-epsilon=10" in out
    client = next(line.split() for line in out.splitlines() if line.startswith("node-7"))
    assert client == ["node-7", "2.000", "0.0500", "1", "10", f"{local:.3f}"]
    assert main(["privacy", "report", "no-dp"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "run 'no-dp' has no privacy ledger entries" in err and "runs with DP: dp-run" in err


def test_the_ledger_url_flag_reads_another_ledger(uaap_home, tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    Ledger(url).set_budget(Budget("far", 1.0, 1e-5, "rdp", "user"))
    assert main(["privacy", "report", "far"]) == 2  # not in the workspace's ledger
    capsys.readouterr()
    assert main(["privacy", "report", "far", "--ledger", url]) == 0
    out = capsys.readouterr().out
    assert "privacy budget of far" in out and "levels=user, max-epsilon=1." in " ".join(out.split())
    assert not [line for line in out.splitlines() if line.strip()[:1].isdigit()], "no release, no round row"
