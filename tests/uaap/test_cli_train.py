"""``uaap train`` in-process: the issue's target for central training of the demo model (digits, mlp)."""

from __future__ import annotations

from pathlib import Path

import pytest

from uaap import workspace
from uaap.cli import main
from uaap.config import RunConfig
from uaap.data import load_split
from uaap.training import evaluate

TARGET = 0.96  # issue 2: central training of the demo model reaches at least this test accuracy


@pytest.mark.slow
def test_uaap_train_reaches_the_target_accuracy_on_digits(uaap_home: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["train", "--epochs", "30", "--dataset", "digits", "--model", "mlp", "--experiment", "tests"])
    out = capsys.readouterr().out
    assert rc == 0, out
    (run_id,) = workspace.list_runs()
    rd = workspace.existing_run(run_id)
    epochs = rd.events("epoch")
    assert [e["epoch"] for e in epochs] == list(range(1, 31))
    final = rd.events("end")[-1]["central"]
    assert final["accuracy"] >= TARGET, f"test accuracy {final['accuracy']:.4f} misses the target {TARGET}"
    assert f"accuracy {final['accuracy']:.4f}" in out, "the command prints the final test metrics"

    model, meta = workspace.load_model(rd.model_file)
    cfg = rd.read_config()
    assert cfg == RunConfig(dataset="digits", model="mlp", experiment="tests", run_id=run_id)
    assert evaluate(model, load_split(cfg).test)["accuracy"] == pytest.approx(final["accuracy"], abs=1e-12)
    assert meta["model"] == "mlp"


def test_uaap_train_rejects_bad_values_with_a_clear_message(uaap_home: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--epochs", "0"]) == 2
    assert "epochs=0 must be at least 1" in capsys.readouterr().err
    assert main(["train", "--dataset", "synthetic"]) == 2
    assert "central training needs" in capsys.readouterr().err
    assert workspace.list_runs() == [], "nothing is written before the config is valid"
