"""LightGBM, CatBoost and the kernel SVM, central only: ``uaap train`` fits what the library fits on the same split
with the same parameters, the saved model loads through skops' allow-list, ONNX exports match it (the other
formats say they do not apply), AutoML searches and scores the three, and the registry claims what is tested here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from uaap import workspace
from uaap.config import RunConfig
from uaap.data import load_split
from uaap.errors import ConfigError
from uaap.models import FAMILIES, check_combination

pytestmark = pytest.mark.filterwarnings("ignore")

# The boosting defaults (100 rounds of depth 4, shrinkage 0.3: LightGBM's diabetes model then has a split whose
# double threshold rounds up in float32, which the ONNX export must correct), the kernel SVM at C 2.
FLAGS = ["--svm-c", "2"]
CASES = [
    ("lightgbm", "breast_cancer"),
    ("lightgbm", "diabetes"),
    ("catboost", "digits"),
    ("catboost", "diabetes"),
    ("kernel_svm", "breast_cancer"),
    ("kernel_svm", "diabetes"),
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("central-families")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UAAP_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home


@pytest.fixture(scope="module")
def runs(home: Path) -> dict[tuple[str, str], workspace.RunDir]:
    """One `uaap train` run per case, shared by the tests below."""
    from uaap.cli import main

    out = {}
    for model, dataset in CASES:
        before = set(workspace.list_runs())
        assert main(["train", "--model", model, "--dataset", dataset, *FLAGS]) == 0
        (made,) = set(workspace.list_runs()) - before
        out[model, dataset] = workspace.run_dir(made)
    return out


def _library_estimator(model: str, regression: bool, seed: int) -> Any:
    """The family as its library builds it, written out here, not through uaap."""
    if model == "lightgbm":
        import lightgbm

        kind = lightgbm.LGBMRegressor if regression else lightgbm.LGBMClassifier
        return kind(
            n_estimators=100, max_depth=4, num_leaves=16, learning_rate=0.3, random_state=seed, n_jobs=1, verbose=-1
        )
    if model == "catboost":
        import catboost

        kind = catboost.CatBoostRegressor if regression else catboost.CatBoostClassifier
        return kind(
            iterations=100, depth=4, learning_rate=0.3, random_seed=seed, thread_count=1, verbose=False,
            allow_writing_files=False,
        )  # fmt: skip
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC, SVR

    return SVR(C=2.0) if regression else CalibratedClassifierCV(SVC(C=2.0), ensemble=False)


@pytest.mark.parametrize(("model", "dataset"), CASES)
def test_uaap_train_predicts_what_the_library_fits_on_the_same_split(
    runs: dict[tuple[str, str], workspace.RunDir], model: str, dataset: str
) -> None:
    from sklearn.metrics import r2_score

    rd = runs[model, dataset]
    ours, info = workspace.load_estimator(rd.path / workspace.ESTIMATOR_FILE)  # through the skops allow-list
    cfg = rd.read_config()
    split = load_split(cfg)
    regression = split.train.regression
    ref = _library_estimator(model, regression, cfg.seed).fit(split.train.X, split.train.y)
    X, y = split.test.X, split.test.y
    end = rd.events("end")[-1]["central"]
    assert info["family"] == model
    if regression:
        np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
        theirs = r2_score(y, ref.predict(X))
        assert end["r2"] == pytest.approx(theirs, abs=1e-9)
        print(f"{model} {dataset}: R2 {end['r2']:.4f}, the library's own {theirs:.4f}")
    else:
        np.testing.assert_array_equal(ours.predict_proba(X), ref.predict_proba(X))
        theirs = float(np.mean(ref.predict_proba(X).argmax(axis=1) == y))  # CatBoost's predict is a column
        assert end["accuracy"] == pytest.approx(theirs)
        print(f"{model} {dataset}: accuracy {end['accuracy']:.4f}, the library's own {theirs:.4f}")


@pytest.mark.parametrize(("model", "dataset"), CASES)
def test_onnx_export_matches_the_model_and_other_formats_do_not_apply(
    runs: dict[tuple[str, str], workspace.RunDir], home: Path, model: str, dataset: str
) -> None:
    from edge.pipeline import export_model

    assert FAMILIES[model].capabilities.export == ("onnx",)
    results = {r.format: r for r in export_model(str(runs[model, dataset].path), "all", out=home / model / dataset)}
    onnx = results.pop("onnx")
    assert onnx.status == "ok", onnx.reason
    parity = onnx.manifest["parity"]
    if parity.get("task") == "regression":
        assert parity["max_abs_diff_relative"] <= 1e-4
    else:
        assert parity["argmax_agreement"] == 1.0 and parity["max_abs_diff"] <= 1e-5
    assert onnx.manifest["model"]["family"] == model
    print(f"{model} {dataset}: ONNX max abs diff {parity['max_abs_diff']:.2e} on {parity['rows']} rows")
    for fmt, result in results.items():  # tflite, coreml, c
        assert result.status == "not applicable", (fmt, result.reason)
        assert model in result.reason


def test_the_registry_claims_central_only_and_refuses_a_federation() -> None:
    for model in ("lightgbm", "catboost", "kernel_svm"):
        caps = FAMILIES[model].capabilities
        assert caps.central and not caps.federated and caps.tasks == ("classification", "regression")
        assert not (caps.secure_aggregation or caps.dp or caps.strategies)
        check_combination(model, task="regression", where="central")
        with pytest.raises(ConfigError, match="trains only centrally"):
            check_combination(model, where="federated")
    with pytest.raises(Exception, match="svm_kernel|svm-kernel"):
        RunConfig(model="kernel_svm", svm_kernel="cubic")
    with pytest.raises(Exception, match="boost_rounds|boost-rounds"):
        RunConfig(model="lightgbm", boost_rounds=0)


def test_automl_offers_the_three_families_for_both_tasks_as_their_libraries_build_them() -> None:
    """What AutoML fits for a point is the library's estimator with those values (a real search over the three:
    tests/uaap/test_automl.py, in its Ray session)."""
    from sklearn.datasets import load_diabetes

    from uaap.automl.families import build_estimator, family_defaults, family_params, task_families

    X, y = load_diabetes(return_X_y=True)
    X = ((X - X.mean(0)) / X.std(0))[:200]
    y = y[:200]
    for regression in (False, True):
        families = task_families((), regression=regression)
        assert {"lightgbm", "catboost", "kernel_svm"} <= set(families)
    points = family_defaults(("lightgbm", "catboost", "kernel_svm"), X.shape[1], regression=True)
    assert [p["family"] for p in points] == ["lightgbm", "catboost", "kernel_svm"]
    for point in points:
        family, params = family_params(point)
        ours = build_estimator(family, params, n_classes=1, seed=0).fit(X, y)
        if family == "lightgbm":
            import lightgbm

            ref = lightgbm.LGBMRegressor(
                n_estimators=100, max_depth=5, num_leaves=32, learning_rate=0.1, min_child_samples=20,
                random_state=0, n_jobs=1, verbose=-1,
            )  # fmt: skip
        elif family == "catboost":
            import catboost

            ref = catboost.CatBoostRegressor(
                iterations=100, depth=6, learning_rate=0.1, l2_leaf_reg=3.0, random_seed=0, thread_count=1,
                verbose=False, allow_writing_files=False,
            )  # fmt: skip
        else:
            from sklearn.svm import SVR

            ref = SVR(C=1.0, gamma=0.1)  # 1 / n_features: "scale" on standardised rows
        np.testing.assert_array_equal(ours.predict(X), ref.fit(X, y).predict(X))
