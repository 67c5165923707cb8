"""One estimator contract for every family: ``estimator(family, task)`` and ``fit`` / ``predict`` / ``evaluate``.

Each family of the registry (:mod:`uaap.models.registry`) is a scikit-learn-compatible estimator: ``__init__``
stores parameters, ``fit`` returns self, fitted state ends in ``_``, ``predict`` (and ``predict_proba`` for a
classifier, ``transform`` for a decomposition), and ``evaluate(X, y) -> dict`` with the task's metrics. A
classifier's and a regressor's metrics come from the same summable counts the federated clients send
(:mod:`uaap.metrics`), so a central number and a federated one mean the same thing; clustering reports inertia,
silhouette and (with labels) the adjusted Rand index, decomposition the explained variance.

The torch families are the registry's networks trained by :func:`uaap.training.local_train`
(:class:`uaap.automl.torch_mlp.TorchMLPClassifier`); the tree families are scikit-learn's and XGBoost's own
estimators with :class:`Evaluates` mixed in; K-Means and PCA are :mod:`uaap.models.kmeans` and :mod:`uaap.models.pca`.
This module imports scikit-learn and XGBoost: import it where an estimator is built, not at package import.
``central_estimator(cfg, n_classes)`` builds the family a run config names with that run's settings (``uaap train``):
a central forest grows ``trees-per-client x num-clients`` trees, as many as one federated round keeps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xgboost
from sklearn import ensemble

from uaap.automl.torch_mlp import TorchMLPClassifier, TorchMLPRegressor
from uaap.config import RunConfig
from uaap.errors import ConfigError
from uaap.models.evaluation import Evaluates as Evaluates  # re-exported: defined there, below uaap.models.central
from uaap.models.evaluation import evaluate_counts as evaluate_counts


class RandomForestClassifier(Evaluates, ensemble.RandomForestClassifier):  # type: ignore[misc]  # sklearn: untyped
    """scikit-learn's random forest classifier, with :meth:`Evaluates.evaluate`."""


class RandomForestRegressor(Evaluates, ensemble.RandomForestRegressor):  # type: ignore[misc]
    """scikit-learn's random forest regressor, with :meth:`Evaluates.evaluate`."""


class XGBClassifier(Evaluates, xgboost.XGBClassifier):
    """XGBoost's classifier, with :meth:`Evaluates.evaluate`."""


class XGBRegressor(Evaluates, xgboost.XGBRegressor):
    """XGBoost's regressor, with :meth:`Evaluates.evaluate`."""


class IsolationForestDetector(ensemble.IsolationForest):  # type: ignore[misc]  # sklearn: untyped
    """scikit-learn's isolation forest as UAAP's anomaly detector: fit on normal rows; a row is flagged when its
    anomaly score (2 ** -mean path length / c(n), higher when isolated sooner) lies above ``threshold_``.

    ``fit`` sets ``threshold_`` to the default quantile of the training rows' scores (they are normal); a caller with
    validation rows sets it from theirs (``uaap train`` does), as the federation does from the clients' histograms.
    """

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> IsolationForestDetector:
        """Grow the trees on ``X`` (normal rows) and place the threshold at the default quantile of their scores."""
        from uaap.metrics import anomaly_counts, anomaly_from_counts
        from uaap.protocol import THRESHOLD

        super().fit(X, sample_weight=sample_weight)
        scores = self.anomaly_score(X)
        self.threshold_ = anomaly_from_counts(anomaly_counts(np.zeros(len(scores)), scores))[THRESHOLD]
        return self

    def anomaly_score(self, X: Any) -> np.ndarray:
        """Each row's anomaly score in (0, 1]."""
        return np.asarray(-self.score_samples(np.asarray(X, dtype=np.float32)), dtype=np.float64)

    def flag(self, X: Any) -> np.ndarray:
        """1 for an anomaly (score above ``threshold_``), else 0."""
        from uaap.metrics import anomaly_flags

        return anomaly_flags(self.anomaly_score(X), float(self.threshold_))

    def evaluate(self, X: Any, y: Any) -> dict[str, float]:
        """Threshold, mean score, accuracy, precision, recall, F1 and ROC AUC of the flags against labels ``y``."""
        from uaap.metrics import anomaly_counts, anomaly_from_counts

        counts = anomaly_counts(np.asarray(y), self.anomaly_score(X))
        return anomaly_from_counts(counts, threshold=float(self.threshold_))


class TorchClassifier(Evaluates, TorchMLPClassifier):
    """A registry network (``model``: logreg, svm, mlp, cnn) trained by :func:`uaap.training.local_train`."""


class TorchRegressor(Evaluates, TorchMLPRegressor):
    """A registry network with one output, trained on standardised targets."""


CLASSES: dict[str, type] = {
    "random_forest/classification": RandomForestClassifier,
    "random_forest/regression": RandomForestRegressor,
    "xgboost/classification": XGBClassifier,
    "xgboost/regression": XGBRegressor,
    "torch/classification": TorchClassifier,
    "torch/regression": TorchRegressor,
}


def estimator(name: str, task: str = "classification", **params: Any) -> Any:
    """The unfitted estimator of family ``name`` for ``task`` (its own parameters in ``params``)."""
    from uaap.models.registry import family

    caps = family(name).capabilities
    if task not in caps.tasks:
        raise ConfigError(f"model={name!r} does not do {task}; it does {', '.join(caps.tasks)}")
    if name == "kmeans":
        from uaap.models.kmeans import FederatedKMeans

        return FederatedKMeans(**params)
    if name == "pca":
        from uaap.models.pca import FederatedPCA

        return FederatedPCA(**params)
    if name == "isolation_forest":
        return IsolationForestDetector(**params)
    if name == "autoencoder":
        from uaap.models.autoencoder import TorchAutoencoder

        return TorchAutoencoder(**params)
    if name in ("lightgbm", "catboost", "kernel_svm"):  # made on first use: their libraries are optional
        from uaap.models import central

        return central.estimator(name, task == "regression", **params)
    kind = "torch" if caps.federated == "weights" else name
    # a forecaster is a one-step regressor over lag windows (uaap.forecast.series cuts them)
    key = f"{kind}/{'regression' if task in ('regression', 'forecast') else 'classification'}"
    if key not in CLASSES:
        raise ConfigError(f"model={name!r} has no estimator for {task} yet")
    if kind == "torch":
        params = {"model": name, **params}
    return CLASSES[key](**params)


def central_estimator(cfg: RunConfig, n_classes: int) -> Any:
    """The unfitted estimator ``cfg.model`` names, with the run's settings (``n_classes`` 1: a regressor)."""
    task = "regression" if n_classes == 1 else "classification"
    if cfg.model == "random_forest":
        return estimator(
            "random_forest",
            task,
            n_estimators=cfg.trees_per_client * cfg.num_clients,
            max_depth=cfg.tree_max_depth,
            min_samples_leaf=cfg.tree_min_samples_leaf,
            random_state=cfg.seed,
            n_jobs=1,
        )
    if cfg.model == "xgboost":  # the federation's booster settings: boost-rounds trees of xgb-max-depth, xgb-eta
        return estimator(
            "xgboost", task, n_estimators=cfg.boost_rounds, max_depth=cfg.xgb_max_depth, learning_rate=cfg.xgb_eta,
            tree_method="hist", random_state=cfg.seed, n_jobs=1, verbosity=0,
        )  # fmt: skip
    if cfg.model == "isolation_forest":  # as many trees as one federated round keeps
        return estimator(
            "isolation_forest", "anomaly", n_estimators=cfg.trees_per_client * cfg.num_clients, max_samples=256,
            random_state=cfg.seed, n_jobs=1,
        )  # fmt: skip
    from uaap.models import central

    if cfg.model in central.FAMILIES:  # LightGBM, CatBoost, kernel SVM: the libraries' own estimators
        return central.from_run(cfg, n_classes)
    raise ConfigError(f"model={cfg.model!r} has no central estimator in uaap train yet")
