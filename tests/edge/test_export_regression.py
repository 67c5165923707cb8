"""Regression models export and verify: predictions in the target's units, max abs diff <= 1e-4 x the target's
std on held-out rows spread over the target's range, the manifest reporting MSE/RMSE/MAE/R2 (real runtimes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge import verify
from edge.pipeline import export_one
from edge.source import fold_target_scaling, load_source
from uaap.config import RunConfig


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An MLP trained on friedman (standardised targets) and a Ridge regressor, saved as UAAP saves them."""
    from sklearn.linear_model import Ridge

    from edge import demo
    from uaap import workspace
    from uaap.data import load_split

    folder = tmp_path_factory.mktemp("regression_models")
    model, split = demo.train_torch("mlp", dataset="friedman", epochs=3)
    ridge = Ridge(alpha=1.0).fit(split.train.X, split.train.y)
    meta = {"family": "linear_regression", "dataset": "friedman", "task": "regression", "n_features": 10}
    assert load_split(RunConfig(dataset="friedman")).test.regression
    return {
        "mlp": demo.save_torch(folder / "mlp.npz", "mlp", model, split, "friedman"),
        "ridge": workspace.save_estimator(folder / "ridge.skops", ridge, meta | {"n_classes": 1}),
    }


def test_folding_the_target_scaling_into_the_last_layer_is_the_models_prediction(saved: dict[str, Path]) -> None:
    from uaap import workspace
    from uaap.data import load_split
    from uaap.training import predict, predict_values

    model, meta = workspace.load_model(saved["mlp"])
    test = load_split(RunConfig(dataset="friedman")).test
    assert meta["task"] == "regression" and meta["target_std"] == pytest.approx(test.target_std)
    folded = fold_target_scaling(model, meta["target_mean"], meta["target_std"])
    got = predict_values(folded, test.X, 0.0, 1.0)
    np.testing.assert_allclose(got, predict(model, test), rtol=0, atol=1e-5 * test.target_std)


def test_the_parity_sample_spans_the_targets_range(saved: dict[str, Path]) -> None:
    source = load_source(saved["mlp"], rows=40)
    full, sample = source.full_heldout.y, source.heldout.y
    assert len(sample) == 40 and len(full) == 200 and source.regression
    assert source.sample["method"] == "seeded random sample, spread over the target's range"
    # every tenth of the sorted held-out targets is represented: min/max and deciles line up
    edges = np.quantile(full, np.linspace(0, 1, 11))
    assert all(((sample >= lo) & (sample <= hi)).sum() >= 3 for lo, hi in zip(edges[:-1], edges[1:], strict=True))
    assert set(source.sample["target_quantiles"]) == {"q0", "q10", "q25", "q50", "q75", "q90", "q100"}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "formats"), [("mlp", ("onnx", "c", "tflite", "coreml")), ("ridge", ("onnx", "c"))])
def test_regression_exports_agree_with_the_source_model(saved: dict[str, Path], tmp_path: Path, name, formats) -> None:
    source = load_source(saved[name])
    reference = source.predict_proba(source.heldout.X)
    assert reference.shape == (len(source.heldout.y), 1) and np.ptp(reference) > 1.0, "a model that varies"
    for fmt in formats:
        result = export_one(source, fmt, tmp_path)
        assert result.status == "ok", f"{fmt}: {result.reason}"
        manifest = json.loads((tmp_path / fmt / "manifest.json").read_text())
        parity = manifest["parity"]
        assert parity["passed"] and parity["max_abs_diff_relative"] <= verify.REGRESSION_TOLERANCE, (fmt, parity)
        assert parity["max_abs_diff"] == pytest.approx(parity["max_abs_diff_relative"] * source.target_scale)
        assert parity["metrics_export"]["r2"] == pytest.approx(parity["metrics_source"]["r2"], abs=1e-4)
        assert set(parity["metrics_source_full_heldout"]) >= {"mse", "rmse", "mae", "r2"}
        assert parity["metrics_source_full_heldout"]["r2"] > 0.3, "a model worth exporting"
        assert manifest["output"]["name"] == "prediction" and manifest["output"]["shape"] == [None, 1]
        assert "accuracy_source_full_heldout" not in parity
    if "c" in formats:
        assert "uaap_predict(const float *x, float *y)" in (tmp_path / "c" / "model.h").read_text()


@pytest.mark.parametrize("family", ["decision_tree", "xgboost"])
def test_tree_regressors_export_to_onnx_and_say_where_to_go_for_c_and_core_ml(tmp_path: Path, family: str) -> None:
    from sklearn.tree import DecisionTreeRegressor
    from xgboost import XGBRegressor

    from uaap import workspace
    from uaap.data import load_split

    split = load_split(RunConfig(dataset="friedman"))
    est = (
        DecisionTreeRegressor(max_depth=3, random_state=0)
        if family == "decision_tree"
        else XGBRegressor(n_estimators=20, max_depth=3, n_jobs=1, random_state=0)
    ).fit(split.train.X, split.train.y)
    meta = {"dataset": "friedman", "n_features": 10, "n_classes": 1}  # no task: told by the estimator itself
    source = load_source(workspace.save_estimator(tmp_path / f"{family}.skops", est, meta))
    assert source.family == family and source.regression
    assert source.target_scale == pytest.approx(float(np.std(split.train.y.astype(np.float64))))
    for fmt in ("c", "coreml"):
        result = export_one(source, fmt, tmp_path)
        assert result.status == "not applicable" and "onnx" in result.reason
    result = export_one(source, "onnx", tmp_path)
    assert result.status == "ok", result.reason
    assert result.manifest["parity"]["max_abs_diff_relative"] <= verify.REGRESSION_TOLERANCE
