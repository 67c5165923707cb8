"""Files in a shared folder cannot run code: estimators are skops data, pickles need an explicit trust flag."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

from uaap import workspace
from uaap.errors import WorkspaceError


class _Payload:
    """A pickle that runs a shell command when loaded (what a crafted model.joblib does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_is_refused_without_running(tmp_path: Path, uaap_home: Path, capsys):
    from uaap.cli import main

    marker = tmp_path / "owned"
    run = workspace.run_dir("shared-run")
    run.path.mkdir(parents=True, exist_ok=True)
    (run.path / "model.joblib").write_bytes(pickle.dumps(_Payload(marker)))
    assert main(["export", "shared-run", "--to", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "pickle" in err and "--trust-pickle" in err and not marker.exists()
    with pytest.raises(WorkspaceError, match="runs any code"):
        workspace.load_estimator(run.path / "model.joblib")
    assert not marker.exists()


def test_estimators_round_trip_as_skops_and_foreign_types_are_refused(tmp_path: Path):
    import skops.io as sio

    from uaap.automl.families import TorchMLPClassifier

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    for est in (LogisticRegression(max_iter=300).fit(x, y), TorchMLPClassifier(epochs=2, seed=1).fit(x, y)):
        path = workspace.save_estimator(tmp_path / f"{type(est).__name__}.skops", est, {"family": "x"})
        with open(path, "rb") as fh:
            assert b"posix" not in fh.read()
        loaded, meta = workspace.load_estimator(path)
        assert meta == {"family": "x"}
        np.testing.assert_array_equal(loaded.predict_proba(x), est.predict_proba(x))
    crafted = tmp_path / "crafted.skops"
    sio.dump({"format": "uaap-estimator/2", "estimator": os.system, "meta": {}}, crafted)
    with pytest.raises(WorkspaceError, match="outside scikit-learn.*posix.system"):
        workspace.load_estimator(crafted)
