"""Every family of the registry is one kind of estimator: fit returns self, predict, evaluate(X, y) -> the task's
metrics, each metric checked against scikit-learn's own function on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.metrics import (
    accuracy_score,
    adjusted_rand_score,
    f1_score,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
    silhouette_score,
)
from sklearn.model_selection import train_test_split

from uaap.errors import ConfigError
from uaap.models import FAMILIES
from uaap.models.estimators import estimator

# Small settings so that the whole registry fits in a few seconds; the families' own defaults otherwise.
FAST = {
    "torch": {"epochs": 3, "batch_size": 64},
    "random_forest": {"n_estimators": 10, "random_state": 0},
    "xgboost": {"n_estimators": 10, "max_depth": 3},
    "lightgbm": {"n_estimators": 10, "max_depth": 3, "verbose": -1},
    "catboost": {"iterations": 10, "depth": 3, "verbose": False, "allow_writing_files": False},
    "kmeans": {"n_clusters": 10},
    "pca": {"n_components": 5},
    "isolation_forest": {"n_estimators": 50, "random_state": 0},
    "autoencoder": {"epochs": 20},
    # recurrent families read a row as a sequence: digits' 64 pixels, diabetes' 10 values, 12 lags
    "lstm": {"epochs": 4, "batch_size": 32, "learning_rate": 0.01, "optimizer": "adam"},
    "gru": {"epochs": 4, "batch_size": 32, "learning_rate": 0.01, "optimizer": "adam"},
}
CASES = [(name, task) for name, fam in FAMILIES.items() for task in fam.capabilities.tasks]


def _data(task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if task == "anomaly":  # breast_cancer's rarer class (malignant) is the anomaly
        X, y = load_breast_cancer(return_X_y=True)
        X = (X - X.mean(0)) / X.std(0)
        return train_test_split(X.astype(np.float32), (y == 0).astype(np.int64), test_size=0.25, random_state=0)
    if task == "forecast":  # one-step targets of lag windows from generated series, scaled per series
        from uaap.forecast.series import generate, scale_of, windows

        parts = [windows(s.values, 12, scale_of(s.values)) for s in generate(6, 80, 12, seed=0)]
        X, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return train_test_split(X, y.astype(np.float64), test_size=0.25, random_state=0)
    if task == "regression":
        X, y = load_diabetes(return_X_y=True)
        X = (X - X.mean(0)) / X.std(0)
    else:
        X, y = load_digits(return_X_y=True)
        X = X / 16.0
    return train_test_split(X.astype(np.float32), y, test_size=0.25, random_state=0)


SEQUENCE = ("lstm", "gru")


def _windows() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sequence classification: noisy rising, falling and oscillating windows of 16 steps (labels 0, 1, 2)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    t = np.linspace(0, 1, 16)
    X = np.stack([t, 1 - t, 0.5 + 0.5 * np.sin(6 * np.pi * t)])[y] + rng.normal(0, 0.15, (400, 16))
    return train_test_split(X.astype(np.float32), y, test_size=0.25, random_state=0)


@pytest.mark.parametrize(("name", "task"), CASES)
def test_every_family_fits_predicts_and_evaluates_as_scikit_learn_measures_it(name: str, task: str) -> None:
    fam = FAMILIES[name]
    params = dict(FAST.get(name, FAST["torch"] if fam.capabilities.federated == "weights" else {}))
    if name == "cnn":
        params["image_shape"] = (1, 8, 8)
    X, Xt, y, yt = _windows() if name in SEQUENCE and task == "classification" else _data(task)
    est = estimator(name, task, **params)
    if task == "anomaly":  # a detector learns normal rows
        X, y = X[y == 0], y[y == 0]
    assert est.fit(X, y) is est, "fit returns self"
    got = est.evaluate(Xt, yt)
    if task == "classification":
        pred = est.predict(Xt)
        proba = est.predict_proba(Xt)
        np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
        assert np.array_equal(proba.argmax(1), pred)
        assert got["accuracy"] == pytest.approx(accuracy_score(yt, pred))
        assert got["f1_macro"] == pytest.approx(f1_score(yt, pred, average="macro"))
        assert got["accuracy"] > 0.6, f"{name}: {got['accuracy']:.3f}"
    elif task in ("regression", "forecast"):
        pred = est.predict(Xt)
        assert got["r2"] == pytest.approx(r2_score(yt, pred), abs=1e-9)
        assert got["r2"] > 0.1, f"{name}: {got['r2']:.3f}"
    elif task == "clustering":
        labels = est.predict(Xt)
        assert got["silhouette"] == pytest.approx(silhouette_score(Xt.astype(np.float64), labels))
        assert got["adjusted_rand"] == pytest.approx(adjusted_rand_score(yt, labels))
    elif task == "decomposition":
        Z = est.transform(Xt)
        back = est.inverse_transform(Z)
        centred = Xt - Xt.mean(0)  # against the fitted mean, not the test rows': recompute as evaluate does
        mean = est.mean_
        kept = 1.0 - ((Xt - back) ** 2).sum() / ((Xt - mean) ** 2).sum()
        assert got["explained_variance"] == pytest.approx(kept, rel=1e-6)
        assert centred.shape == Z.shape[:1] + Xt.shape[1:]
    elif task == "anomaly":
        flags = est.flag(Xt)
        assert got["precision"] == pytest.approx(precision_score(yt, flags))
        assert got["recall"] == pytest.approx(recall_score(yt, flags))
        assert got["f1"] == pytest.approx(f1_score(yt, flags))
        assert got["auc"] > 0.8 and abs(got["auc"] - roc_auc_score(yt, est.anomaly_score(Xt))) <= got["auc-error-bound"]
    else:  # a family whose task has no check here yet must get one
        pytest.fail(f"no contract check for task {task!r} of {name!r}")


def test_a_task_the_family_lacks_is_refused_naming_what_it_does():
    with pytest.raises(ConfigError, match="model='cnn' does not do regression; it does classification"):
        estimator("cnn", "regression")
