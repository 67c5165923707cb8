"""AutoML: folds, the torch MLP estimator, real Ray Tune searches (TPE/random/grid, ASHA), Ray Train XGBoost.

One Ray session serves the whole module (start-up dominates on small data). Scores are checked
against scikit-learn / XGBoost computed independently on the same folds.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from uaap.automl.cv import cross_validate, make_folds
from uaap.automl.families import TorchMLPClassifier, build_estimator, check_point, family_params
from uaap.config import RunConfig
from uaap.data import load_split
from uaap.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore")


# ---- no Ray ---------------------------------------------------------------------------------------


def test_folds_partition_rows_and_respect_the_method():
    y = np.array([0] * 30 + [1] * 10)
    for method in ("stratified", "kfold"):
        folds = make_folds(y, method, 5, seed=1)
        held_out = np.concatenate([te for _, te in folds])
        assert sorted(held_out.tolist()) == list(range(len(y)))  # every row validated exactly once
        for tr, te in folds:
            assert not set(tr) & set(te)
    strat = make_folds(y, "stratified", 5, seed=1)
    assert all(np.bincount(y[te]).tolist() == [6, 2] for _, te in strat)
    for tr, te in make_folds(y, "timeseries", 4):
        assert tr.max() < te.min()  # the past predicts the future
    with pytest.raises(Exception, match="rarest class"):
        make_folds(np.array([0] * 20 + [1] * 3), "stratified", 5)


def test_cross_validate_matches_sklearn_on_the_same_folds():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    split = load_split(RunConfig(dataset="breast_cancer"))
    folds = make_folds(split.train.y, "stratified", 4, seed=3)
    ours = cross_validate(
        lambda: build_estimator("logreg", {"C": 0.5}, n_classes=2, seed=0),
        split.train.X,
        split.train.y,
        folds,
        2,
        "accuracy",
    )
    ref = cross_val_score(
        LogisticRegression(C=0.5, max_iter=2000, random_state=0), split.train.X, split.train.y, cv=folds
    )
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_torch_mlp_estimator_is_the_registry_model_trained_by_local_train():
    from uaap.models import build_model, get_weights
    from uaap.training import TrainConfig, evaluate, local_train

    split = load_split(RunConfig(dataset="digits"))
    est = TorchMLPClassifier(epochs=1, batch_size=32, learning_rate=0.05, n_classes=10, seed=7).fit(
        split.train.X, split.train.y
    )
    ref = build_model("mlp", split.train.n_features, 10, seed=7)
    local_train(ref, split.train, TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=7))
    for a, b in zip(est.weights(), get_weights(ref), strict=True):
        np.testing.assert_array_equal(a, b)
    proba = est.predict_proba(split.test.X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert float(np.mean(est.predict(split.test.X) == split.test.y)) == pytest.approx(
        evaluate(ref, split.test)["accuracy"]
    )


def test_the_linear_svm_family_is_the_registry_svm_trained_by_local_train_and_searched_on_request():
    from uaap.automl.families import build_estimator, task_families
    from uaap.models import build_model, get_weights
    from uaap.training import TrainConfig, local_train

    split = load_split(RunConfig(dataset="breast_cancer"))
    params = {"epochs": 2, "batch_size": 32, "learning_rate": 0.05, "optimizer": "sgd"}
    est = build_estimator("svm", params, n_classes=2, seed=3).fit(split.train.X, split.train.y)
    ref = build_model("svm", split.train.n_features, 2, seed=3)
    local_train(ref, split.train, TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=3))
    for a, b in zip(est.weights(), get_weights(ref), strict=True):
        np.testing.assert_array_equal(a, b)  # the hinge loss and the SVM's margin term, as the federation trains
    assert "svm" not in task_families((), regression=False) and task_families(("svm",), regression=False) == ("svm",)
    with pytest.raises(ConfigError, match="'svm' does not fit a regression target"):
        task_families(("svm",), regression=True)


def test_timeseries_keeps_row_order_and_csv_input_works(tmp_path):
    import pandas as pd

    from uaap.automl.search import load_data
    from uaap.data import load_bundled

    raw = load_bundled("wine")
    split = load_data(RunConfig(dataset="wine", test_fraction=0.25), "timeseries")
    assert len(split.test.y) == 45 and np.array_equal(split.test.y, raw.y[-45:])  # the future is held out
    assert np.array_equal(split.train.y, raw.y[:-45])
    frame = pd.DataFrame(raw.X, columns=list(raw.feature_names)).assign(label=np.array(["a", "b", "c"])[raw.y])
    frame.to_csv(tmp_path / "wine.csv", index=False)
    csv = load_data(RunConfig(dataset="csv", data_path=str(tmp_path / "wine.csv"), target="label"), "stratified")
    assert csv.train.n_features == 13 and csv.train.n_classes == 3 and len(csv.train.y) + len(csv.test.y) == 178


def test_points_and_settings_are_validated_before_ray_starts():
    from uaap.automl.search import AutoMLSettings

    assert family_params(check_point({"family": "logreg", "logreg__C": 2.0})) == ("logreg", {"C": 2.0})
    with pytest.raises(ConfigError, match="not a logreg parameter"):
        check_point({"family": "logreg", "logreg__gamma": 1})
    with pytest.raises(ConfigError, match="choose from"):
        AutoMLSettings(families=("resnet",))
    with pytest.raises(ConfigError, match="time budget"):
        AutoMLSettings(time_budget_s=None, num_trials=0)
    with pytest.raises(ConfigError, match="scheduler"):
        AutoMLSettings(scheduler="pbt")


# ---- real Ray Tune ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """One local Ray for the module, and one workspace; Ray is stopped at the end."""
    import ray

    from uaap.cluster import connect

    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("automl-home")
    mp.setenv("UAAP_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    connect(num_cpus=2)
    yield home
    ray.shutdown()
    mp.undo()


def _mlflow_runs(parent_run_id: str):
    import mlflow

    from uaap.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name("uaap")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = [r for r in runs if r.data.tags.get("uaap.run_id") == parent_run_id]
    children = [r for r in runs if r.data.tags.get("uaap.trial_of") == parent_run_id]
    return parent, children


@pytest.mark.slow
def test_failing_trial_is_reported_and_the_search_goes_on(ray_session):
    """A bad configuration (min_samples_leaf=0) fails its trial; the others finish; scores match sklearn."""
    from sklearn.model_selection import cross_val_score

    from uaap.automl.search import AutoMLSettings, run_automl
    from uaap.workspace import load_estimator

    bad = {"family": "random_forest", "random_forest__min_samples_leaf": 0, "random_forest__n_estimators": 50}
    settings = AutoMLSettings(
        search="random",
        scheduler="none",
        folds=3,
        families=("logreg", "random_forest"),
        time_budget_s=240,
        num_trials=5,
        points=(bad,),
        warm_start=False,
    )
    result = run_automl(RunConfig(dataset="breast_cancer", seed=5), settings)
    board = result.leaderboard
    errors = [r for r in board if r["status"] == "error"]
    assert len(board) == 5
    assert len(errors) == 1 and "min_samples_leaf" in errors[0]["error"]
    assert errors[0]["params"]["min_samples_leaf"] == 0
    assert sum(r["status"] == "completed" for r in board) == 4
    assert board[0]["status"] == "completed" and board[0]["score"] == max(
        r["score"] for r in board if r["status"] == "completed"
    )

    # Independent reference: the same candidate, same folds, scored by scikit-learn itself.
    split = load_split(RunConfig(dataset="breast_cancer", seed=5))
    folds = make_folds(split.train.y, "stratified", 3, seed=5)
    best = result.best
    ref = cross_val_score(
        build_estimator(best["family"], best["params"], n_classes=2, seed=5), split.train.X, split.train.y, cv=folds
    )
    assert best["score"] == pytest.approx(float(np.mean(ref)), abs=1e-12)

    # The saved model is the refitted winner, in the estimator format with the metadata the exporters need.
    est, meta = load_estimator(result.model_path)
    assert meta["family"] == best["family"] and meta["dataset"] == "breast_cancer"
    assert meta["n_features"] == 30 and meta["n_classes"] == 2 and len(meta["feature_names"]) == 30
    acc = float(np.mean(est.predict(split.test.X) == split.test.y))
    assert acc == pytest.approx(result.test_metrics["accuracy"])
    for name in ("default LogisticRegression", "default RandomForest"):
        assert len(result.baselines[name]["folds"]) == 3

    # MLflow: one parent, one child per trial (the failed one FAILED), all written by the driver.
    parent, children = _mlflow_runs(result.run_dir.run_id)
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert len(children) == 5
    assert all(c.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for c in children)
    assert sorted(c.info.status for c in children).count("FAILED") == 1
    lines = (result.run_dir.path / "leaderboard.csv").read_text().splitlines()
    assert len(lines) == 6 and lines[0].startswith("rank,trial,family,score")


@pytest.mark.slow
def test_tpe_with_asha_saves_a_torch_winner_like_uaap_train(ray_session):
    from uaap.automl.search import AutoMLSettings, run_automl
    from uaap.training import evaluate
    from uaap.workspace import load_model

    settings = AutoMLSettings(
        search="tpe", scheduler="asha", folds=3, families=("mlp",), time_budget_s=240, num_trials=4
    )
    result = run_automl(RunConfig(dataset="wine", seed=1), settings)
    assert result.best["family"] == "mlp"
    assert sum(r["status"] in ("completed", "stopped") for r in result.leaderboard) == 4
    assert all(r["folds"] == 3 for r in result.leaderboard if r["status"] == "completed")
    assert all(r["folds"] < 3 for r in result.leaderboard if r["status"] == "stopped")
    assert result.model_path == result.run_dir.model_file  # runs/<id>/model.npz
    model, meta = load_model(result.model_path)
    assert meta["model"] == "mlp" and meta["dataset"] == "wine" and meta["family"] == "mlp"
    split = load_split(RunConfig(dataset="wine", seed=1))
    assert evaluate(model, split.test)["accuracy"] == pytest.approx(result.test_metrics["accuracy"])


@pytest.mark.slow
def test_cli_grid_search_prints_leaderboard_and_baselines(ray_session, capsys):
    from uaap.cli import main

    point = json.dumps({"family": "logreg", "logreg__C": 0.05})
    rc = main(
        ["automl", "--dataset", "wine", "--search", "grid", "--families", "logreg", "--folds", "3"]
        + ["--trials", "3", "--scheduler", "none", "--point", point, "--run-id", "automl-cli"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "default LogisticRegression" in out and "default RandomForest" in out and "leaderboard" in out
    assert "family defaults: logreg" in out and "trial   1" not in out  # a summary, not one line per trial
    board = json.loads((Path(ray_session) / "runs" / "automl-cli" / "leaderboard.json").read_text())
    # the point first, then the family's default configuration (always a trial), then the grid
    assert len(board) == 3 and {r["params"]["C"] for r in board} == {0.05, 1.0, 0.01}


@pytest.mark.slow
def test_xgboost_winner_is_trained_on_ray_train_with_two_workers(ray_session):
    """``automl --families xgboost --workers 2``: the refit runs on two Ray Train workers that grow one booster."""
    import mlflow
    from xgboost import XGBClassifier

    from uaap.automl.search import AutoMLSettings, run_automl
    from uaap.tracking import tracking_uri
    from uaap.workspace import load_estimator

    settings = AutoMLSettings(
        search="random", scheduler="none", folds=2, families=("xgboost",), num_trials=1, workers=2, report_every=25
    )
    result = run_automl(RunConfig(dataset="breast_cancer"), settings)
    assert result.best["family"] == "xgboost" and result.best["params"]["n_estimators"] == 100  # warm start
    est, meta = load_estimator(result.model_path)
    assert meta["family"] == "xgboost" and isinstance(est, XGBClassifier)
    split = load_split(RunConfig(dataset="breast_cancer"))
    pred = est.predict(split.test.X)
    # The driver logged every 25th round of the booster's own all-reduced test error.
    client = mlflow.MlflowClient(tracking_uri())
    parent = client.get_run(_mlflow_runs(result.run_dir.run_id)[0][0].info.run_id)
    history = client.get_metric_history(parent.info.run_id, "xgb_test-error")
    assert sorted(int(m.step) for m in history) == [25, 50, 75, 100]
    final_error = [m.value for m in history if m.step == 100][0]
    assert 1.0 - float(np.mean(pred == split.test.y)) == pytest.approx(final_error, abs=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = {**result.best["params"], "tree_method": "hist", "n_jobs": 1, "random_state": 42}
        local = XGBClassifier(**params).fit(split.train.X, split.train.y)
    assert float(np.mean(pred == local.predict(split.test.X))) >= 0.95  # the same model up to sketching
    assert result.test_metrics["accuracy"] == pytest.approx(float(np.mean(pred == split.test.y)))


@pytest.mark.slow
def test_a_search_over_lightgbm_catboost_and_the_kernel_svm_scores_each_on_the_same_folds(ray_session):
    """The central-only families in a real search: each family's default is a trial, and its score is what
    scikit-learn's cross_val_score gives the same estimator on the same folds."""
    from sklearn.model_selection import cross_val_score

    from uaap.automl.search import AutoMLSettings, run_automl

    families = ("lightgbm", "catboost", "kernel_svm")
    settings = AutoMLSettings(search="random", scheduler="none", folds=2, families=families, num_trials=3)
    result = run_automl(RunConfig(dataset="breast_cancer", seed=3), settings)
    board = result.leaderboard
    assert sorted(r["family"] for r in board) == sorted(families) and {r["status"] for r in board} == {"completed"}
    assert set(result.defaults) == set(families) and result.test_metrics["accuracy"] > 0.9
    split = load_split(RunConfig(dataset="breast_cancer", seed=3))
    folds = make_folds(split.train.y, "stratified", 2, seed=3)
    for row in board:
        est = build_estimator(row["family"], row["params"], n_classes=2, seed=3)
        scores = cross_val_score(est, split.train.X, split.train.y, cv=folds)
        assert row["score"] == pytest.approx(float(np.mean(scores)), abs=1e-12)


def test_a_winner_that_a_default_beats_on_the_held_out_split_is_reported():
    """As measured on breast_cancer with --time-budget 120: mlp won CV 0.9824 and scored 0.9737 on the held-out
    split, where the default logistic regression scored 0.9825."""
    from uaap.automl.results import AutoMLResult
    from uaap.automl.search import verdict
    from uaap.workspace import RunDir

    def result(default_test: float) -> AutoMLResult:
        return AutoMLResult(
            run_dir=RunDir(Path("/nowhere/automl-x")),
            leaderboard=[],
            best={"family": "mlp", "score": 0.9824, "std": 0.0088},
            baselines={"default LogisticRegression": {"cv": 0.9758, "cv_std": 0.01, "folds": [], "test": 0.9825}},
            test_metrics={"accuracy": 0.9737},
            model_path=Path("/nowhere/model.npz"),
            metric="accuracy",
            mode="max",
            search_seconds=120.0,
            trials=500,
            errors=0,
            defaults={"logreg": {"params": {"C": 1.0}, "cv": 0.9780, "test": default_test}},
        )

    warning = verdict(result(0.9912))
    assert warning is not None and "scores 0.9737 on the held-out split, below the logreg default (0.9912)" in warning
    assert "--families logreg --no-warm-start --trials 1" in warning
    assert "scikit-learn's default LogisticRegression (0.9825)" in (verdict(result(0.95)) or "")
    winner = result(0.95)
    winner.test_metrics["accuracy"] = 0.99
    assert verdict(winner) is None


def test_every_family_default_is_a_trial_even_without_warm_start():
    from uaap.automl.families import family_defaults, warm_start_points

    defaults = family_defaults(("logreg", "mlp", "xgboost", "random_forest"), 30)
    assert [d["family"] for d in defaults] == ["logreg", "mlp", "xgboost", "random_forest"]
    assert {"family": "logreg", "logreg__C": 1.0} in defaults
    assert all(d in warm_start_points(("logreg", "mlp", "xgboost", "random_forest"), 30) for d in defaults)


@pytest.mark.slow
def test_cli_ensembles_score_beside_the_search_and_the_comparator_reads_their_gain(ray_session, capsys):
    """``uaap automl --ensembles``: voting and stacking over the two searched families are scored on the winner's
    held-out rows, recorded in the run folder and MLflow, and ``uaap compare`` shows their gain from there."""
    from uaap.cli import main
    from uaap.compare import collect_runs

    rc = main(
        ["automl", "--dataset", "breast_cancer", "--search", "random", "--families", "logreg,random_forest"]
        + ["--folds", "2", "--trials", "4", "--scheduler", "none", "--ensembles", "--run-id", "automl-ensembles"]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "ensembles of the best families, accuracy on the 114 held-out rows" in out, out[-3000:]
    [event] = [e for e in workspace_events("automl-ensembles") if e["kind"] == "ensembles"]
    assert sorted(event["members"]) == ["logreg", "random_forest"] and event["test_rows"] == 114
    best = event["singles"][event["best_single"]]
    assert event["gain"]["voting"] == pytest.approx(event["voting"] - best)
    (row,) = collect_runs(["automl-ensembles"])
    assert row.ensembles == pytest.approx(
        {"ensemble_voting_test": event["voting"], "ensemble_stacking_test": event["stacking"],
         "ensemble_voting_gain": event["gain"]["voting"], "ensemble_stacking_gain": event["gain"]["stacking"],
         "ensemble_best_single_test": best}
    )  # fmt: skip
    assert main(["compare", "automl-ensembles"]) == 0
    shown = capsys.readouterr().out
    assert f"{event['gain']['voting']:+.4f}" in shown and f"{event['gain']['stacking']:+.4f}" in shown


def workspace_events(run_id: str) -> list[dict]:
    from uaap import workspace

    return workspace.existing_run(run_id).events()
