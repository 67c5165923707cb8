"""Small reference models to export: the registry torch models and AutoML-style estimators.

Used by the tests and ``benchmarks/edge.py``; each is trained in seconds on a bundled dataset and
saved the way UAAP saves models (``save_model`` / ``save_estimator``) with ``dataset`` in its metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from uaap.config import RunConfig

TORCH_MODELS = ("logreg", "svm", "mlp", "cnn")
ESTIMATORS = ("logistic_regression", "decision_tree", "random_forest", "xgboost")


def train_torch(name: str, dataset: str = "digits", epochs: int = 15, seed: int = 0) -> tuple[Any, Any]:
    """A registry model trained centrally with ``uaap.training.local_train``; returns (model, split)."""
    from uaap.data import load_split
    from uaap.models import build_model
    from uaap.training import TrainConfig, local_train

    split = load_split(RunConfig(dataset=dataset))
    model = build_model(name, split.train.n_features, split.train.n_classes, split.train.image_shape, seed=seed)
    local_train(model, split.train, TrainConfig(epochs=epochs, lr=0.05, batch_size=32, seed=seed))
    model.eval()
    return model, split


def save_torch(path: Path, name: str, model: Any, split: Any, dataset: str) -> Path:
    """Save like ``uaap train`` does."""
    from uaap import workspace
    from uaap.data import target_meta
    from uaap.models import get_weights

    return workspace.save_model(
        path,
        name,
        get_weights(model),
        n_features=split.train.n_features,
        n_classes=split.train.n_classes,
        image_shape=split.train.image_shape,
        extra={"dataset": dataset, **target_meta(split.train)},
    )


def fit_estimator(family: str, dataset: str = "digits", seed: int = 0) -> tuple[Any, Any]:
    """A small fitted estimator of ``family`` on the scaled train split; returns (estimator, split)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    from uaap.data import load_split

    split = load_split(RunConfig(dataset=dataset))
    if family == "logistic_regression":
        est: Any = LogisticRegression(max_iter=2000)
    elif family == "decision_tree":
        est = DecisionTreeClassifier(max_depth=4, random_state=seed)
    elif family == "random_forest":
        est = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=seed, n_jobs=1)
    elif family == "xgboost":
        from xgboost import XGBClassifier

        est = XGBClassifier(n_estimators=20, max_depth=3, learning_rate=0.3, n_jobs=1, random_state=seed)
    else:
        raise ValueError(f"unknown family {family!r}; choose one of {ESTIMATORS}")
    est.fit(split.train.X, split.train.y)
    return est, split


def save_est(path: Path, family: str, est: Any, split: Any, dataset: str) -> Path:
    """Save like AutoML does (``save_estimator`` with family/dataset metadata)."""
    from uaap import workspace

    meta = {
        "family": family,
        "dataset": dataset,
        "n_features": split.train.n_features,
        "n_classes": split.train.n_classes,
        "feature_names": list(split.train.feature_names),
    }
    return workspace.save_estimator(path, est, meta)


def accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose argmax is the label."""
    return float(np.mean(np.asarray(proba).argmax(axis=1) == y))
