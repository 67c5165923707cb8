"""MLflow tracking stays in the workspace: store and artifacts, wherever the command runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from uaap import tracking


def test_artifacts_land_in_the_workspace_not_the_working_directory(
    uaap_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tracker = tracking.Tracker("artifacts-test", "run-a", kind="central")
    model = tmp_path / "model.npz"
    model.write_bytes(b"weights")
    tracker.log_artifact(str(model))
    tracker.finish()
    stored = list((uaap_home / "mlartifacts").rglob("model.npz"))
    assert len(stored) == 1 and stored[0].read_bytes() == b"weights"
    assert list(elsewhere.iterdir()) == [], "nothing may be written where the command runs (./mlruns)"


def test_artifact_root_follows_a_sqlite_store_and_leaves_servers_alone(tmp_path: Path) -> None:
    assert tracking.artifact_root(f"sqlite:///{tmp_path}/team/mlflow.db") == (tmp_path / "team/mlartifacts").as_uri()
    assert tracking.artifact_root("http://mlflow.internal:5000") is None
    assert tracking.artifact_root("postgresql+psycopg2://u@db/mlflow") is None
