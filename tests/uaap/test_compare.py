"""The comparator reads real UAAP runs from MLflow (central training, tracked federated/DP runs, a search
with child runs) and shows each run's final test metric as recorded in the run's own metrics.jsonl."""

from __future__ import annotations

import numpy as np
import pytest

from uaap.config import RunConfig
from uaap.errors import WorkspaceError


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two central runs (real training), a DP federated run and an AutoML search as the trackers log them."""
    from uaap.automl.tracking import SearchTracker
    from uaap.centralized import train_central
    from uaap.tracking import Tracker

    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("compare-home")
    mp.setenv("UAAP_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    a = train_central(RunConfig(dataset="digits", model="logreg", learning_rate=0.05, run_id="central-a"), epochs=2)
    b = train_central(RunConfig(dataset="digits", model="mlp", learning_rate=0.01, run_id="central-b"), epochs=1)
    # A federated DP run as server.federation logs it (same Tracker, same keys).
    cfg = RunConfig(dataset="digits", dp_local=True, dp_target_epsilon=3.0, run_id="fed-dp")
    fed = Tracker(cfg.experiment, cfg.run_id, kind="federated")
    fed.log_params(cfg.to_flower())
    curve = [0.3, 0.6, 0.75]
    for rnd, acc in enumerate(curve, 1):
        fed.log_metrics({"central_accuracy": acc, "privacy_epsilon": 0.9 * rnd}, step=rnd)
    fed.finish()
    # An AutoML search: parent with the winner's test accuracy, plus a child trial run (must be left out).
    search = SearchTracker("uaap", "automl-x", kind="automl", child_kind="automl-trial")
    search.parent.log_params({"dataset": "breast_cancer", "best_family": "logreg"})
    search.parent.log_metrics({"test_accuracy": 0.97}, step=1)
    child = search.start_child("automl-x/t1", {"family": "logreg"})
    search.log_child(child, {"cv_score": 0.5}, step=1)
    search.finish_child(child, "FINISHED")
    search.parent.finish()
    yield {"home": home, "a": a, "b": b}
    mp.undo()


def test_collects_top_level_runs_with_their_final_test_metric(runs):
    from uaap.compare import collect_runs

    rows = {r.run_id: r for r in collect_runs()}
    assert set(rows) == {"central-a", "central-b", "fed-dp", "automl-x"}  # the child trial is not a run
    # Independent source: each central run's own metrics.jsonl (written by the trainer, not MLflow).
    for key in ("a", "b"):
        rd = runs[key].run_dir
        expected = rd.events("end")[-1]["central"]["accuracy"]
        row = rows[rd.run_id]
        assert row.kind == "central" and row.value == pytest.approx(expected)
        epochs = [e["epoch"] for e in rd.events("epoch")]
        assert row.steps == max(epochs) and len(row.curve) == len(epochs)
    fed = rows["fed-dp"]
    assert fed.value == pytest.approx(0.75) and fed.epsilon == pytest.approx(2.7)
    assert fed.privacy == "DP-SGD eps<=3" and [v for _, v in fed.curve] == [0.3, 0.6, 0.75]
    assert rows["automl-x"].value == pytest.approx(0.97) and "logreg" in rows["automl-x"].label


def test_filters_and_unknown_runs(runs):
    from uaap.compare import collect_runs

    assert {r.run_id for r in collect_runs(kinds=("central",))} == {"central-a", "central-b"}
    assert {r.run_id for r in collect_runs(dataset="breast_cancer")} == {"automl-x"}
    assert [r.run_id for r in collect_runs(("fed-dp",))] == ["fed-dp"]
    with pytest.raises(WorkspaceError, match="nope"):
        collect_runs(("nope",))
    with pytest.raises(WorkspaceError, match="experiments: uaap"):
        collect_runs(experiment="missing")


def test_plot_and_cli(runs, tmp_path, capsys):
    import matplotlib.image

    from uaap.cli import main
    from uaap.compare import collect_runs, compare_plot, sort_rows

    rows = collect_runs()
    ordered = sort_rows(rows)
    values = [r.value for r in ordered if r.dataset == "digits"]
    assert values == sorted(values, reverse=True)
    png = compare_plot(rows, tmp_path / "cmp.png")
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 1000
    assert np.std(image[..., :3]) > 0.05  # something was drawn
    assert main(["compare", "--out", str(tmp_path / "cli.png")]) == 0
    out = capsys.readouterr().out
    assert "central-a" in out and "DP-SGD eps<=3" in out and "fed-dp" in out
    assert (tmp_path / "cli.png").stat().st_size > 10_000


def test_an_encrypted_runs_validation_accuracy_is_labelled_as_such(tmp_path, monkeypatch, capsys):
    """Under HE the server evaluates nothing: the value is the clients' validation accuracy, and says so."""
    from uaap.cli import main
    from uaap.compare import TEST, VALIDATION, collect_runs
    from uaap.tracking import Tracker

    monkeypatch.setenv("UAAP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for run_id, key, value in (("he", "fed_accuracy", 0.9652), ("plain", "central_accuracy", 0.9694)):
        cfg = RunConfig(run_id=run_id, secure_aggregation="ckks" if run_id == "he" else "none")
        tracker = Tracker(cfg.experiment, run_id, kind="federated")
        tracker.log_params(cfg.to_flower())
        tracker.log_metrics({key: value}, step=1)
        tracker.finish()
    rows = {r.run_id: r for r in collect_runs()}
    assert rows["he"].measured_on == VALIDATION and rows["plain"].measured_on == TEST
    assert main(["compare", "--out", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out
    assert "held-out test" not in out and "clients' validation" in out and "test split" in out
