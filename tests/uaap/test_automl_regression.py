"""AutoML for a regression target: families, metrics, folds over the target's range, a real Ray Tune search whose
winner is reported against each family's default on the held-out split, and the CLI down to `uaap export`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from uaap.automl.cv import check_metric, cross_validate, default_metric, make_folds, score
from uaap.automl.families import TorchMLPRegressor, build_estimator, family_defaults, task_families
from uaap.config import RunConfig
from uaap.data import load_split
from uaap.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore")


def test_regression_gets_its_own_families_metrics_and_defaults():
    assert default_metric(1) == "r2" and default_metric(3) == "accuracy"
    assert check_metric("rmse", 1) == "min" and check_metric("r2", 1) == "max"
    with pytest.raises(ConfigError, match="metric='accuracy' does not score a regression target; choose one of: r2"):
        check_metric("accuracy", 1)
    with pytest.raises(ConfigError, match="metric='r2' does not score a classification target"):
        check_metric("r2", 2)
    assert task_families((), regression=True) == (
        "ridge", "random_forest", "xgboost", "lightgbm", "catboost", "kernel_svm", "mlp"
    )  # fmt: skip
    with pytest.raises(ConfigError, match="'logreg' does not fit a regression target; choose from: ridge"):
        task_families(("logreg",), regression=True)
    with pytest.raises(ConfigError, match="'ridge' fits regression targets"):
        build_estimator("ridge", {}, n_classes=2)
    defaults = family_defaults(("ridge", "random_forest"), 10, regression=True)
    assert defaults == [
        {"family": "ridge", "ridge__alpha": 1.0},
        {
            "family": "random_forest",
            "random_forest__n_estimators": 100,
            "random_forest__max_depth": 32,
            "random_forest__max_features": 1.0,  # RandomForestRegressor's default: every feature
            "random_forest__min_samples_leaf": 1,
        },
    ]
    names = {
        f: type(build_estimator(f, {}, n_classes=1)).__name__ for f in ("ridge", "random_forest", "xgboost", "mlp")
    }
    assert names == {
        "ridge": "Ridge",
        "random_forest": "RandomForestRegressor",
        "xgboost": "XGBRegressor",
        "mlp": "TorchMLPRegressor",
    }


def test_cross_validated_r2_matches_sklearn_on_the_same_folds_spread_over_the_target():
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import cross_val_score

    split = load_split(RunConfig(dataset="diabetes"))
    folds = make_folds(split.train.y, "stratified", 4, seed=3)
    for _, te in folds:  # every fold holds low, middle and high targets
        assert np.quantile(split.train.y[te], 0.1) < np.median(split.train.y) < np.quantile(split.train.y[te], 0.9)
    ours = cross_validate(
        lambda: build_estimator("ridge", {"alpha": 0.5}, n_classes=1), split.train.X, split.train.y, folds, 1, "r2"
    )
    ref = cross_val_score(Ridge(alpha=0.5), split.train.X, split.train.y, cv=folds, scoring="r2")
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_torch_mlp_regressor_predicts_in_the_targets_units():
    from sklearn.metrics import r2_score

    split = load_split(RunConfig(dataset="diabetes"))
    est = TorchMLPRegressor(epochs=15, learning_rate=0.01, optimizer="adam", seed=2).fit(split.train.X, split.train.y)
    pred = est.predict(split.test.X)
    assert 50 < pred.mean() < 250 and r2_score(split.test.y, pred) > 0.2  # LinearRegression: 0.37 on this split
    assert score("r2", split.test.y, pred[:, None])["r2"] == pytest.approx(r2_score(split.test.y, pred), rel=1e-9)
    assert est.target_mean_ == pytest.approx(split.train.y.mean(), rel=1e-6)
    clone = TorchMLPRegressor(**est.get_params())
    clone.__setstate__(est.__getstate__())
    np.testing.assert_allclose(clone.predict(split.test.X), pred, rtol=1e-6)


@pytest.fixture(scope="module")
def ray_home(tmp_path_factory):
    import ray

    from uaap.cluster import connect

    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("automl-regression")
    mp.setenv("UAAP_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    connect(num_cpus=2)
    yield home
    ray.shutdown()
    mp.undo()


@pytest.mark.slow
def test_a_regression_search_reports_its_winner_against_every_default_on_held_out_r2(ray_home):
    from sklearn.metrics import r2_score

    from uaap.automl.search import AutoMLSettings, run_automl
    from uaap.workspace import load_estimator

    settings = AutoMLSettings(folds=3, families=("ridge", "random_forest"), num_trials=4, time_budget_s=120)
    result = run_automl(RunConfig(dataset="diabetes", seed=1), settings)
    assert result.metric == "r2" and result.mode == "max"
    assert set(result.defaults) == {"ridge", "random_forest"} and set(result.baselines) == {
        "default LinearRegression",
        "default RandomForest",
    }
    assert result.test_metrics["r2"] > 0.4 and {"rmse", "mae", "mse"} <= set(result.test_metrics)
    # the saved winner predicts the held-out split as reported
    est, meta = load_estimator(result.model_path)
    assert meta["task"] == "regression"
    test = load_split(RunConfig(dataset="diabetes", seed=1)).test
    pred = np.asarray(est.predict(test.X), dtype=np.float64)
    assert r2_score(test.y.astype(np.float64), pred) == pytest.approx(result.test_metrics["r2"], rel=1e-9)


@pytest.mark.slow
def test_cli_automl_then_export_on_a_regression_target(ray_home, capsys):
    from uaap.cli import main

    rc = main(
        ["automl", "--dataset", "diabetes", "--search", "grid", "--families", "ridge", "--folds", "3"]
        + ["--trials", "3", "--scheduler", "none", "--run-id", "automl-reg"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "default LinearRegression" in out and "CV r2" in out and "family defaults: ridge" in out
    assert main(["export", "automl-reg", "--to", "onnx,c"]) == 0, capsys.readouterr().out
    for fmt in ("onnx", "c"):
        manifest = json.loads((Path(ray_home) / "runs" / "automl-reg" / "exports" / fmt / "manifest.json").read_text())
        assert manifest["parity"]["passed"] and manifest["parity"]["max_abs_diff_relative"] <= 1e-4
        assert manifest["output"]["name"] == "prediction" and manifest["model"]["family"] == "linear_regression"
