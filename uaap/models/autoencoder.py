"""The autoencoder family as a scikit-learn-style anomaly detector (the estimator contract's ``autoencoder``).

The registry's network (:mod:`uaap.models.nets` ``"autoencoder"``) trained by :func:`uaap.training.local_train` on
normal rows, its anomaly score each row's mean squared reconstruction error (:func:`uaap.training
.reconstruction_errors`), a row flagged above ``threshold_``: the default quantile of the training rows' errors
after ``fit``, or what a caller chose on validation rows. Metrics come from the same summable histograms the
federated clients send (:func:`uaap.metrics.anomaly_counts`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from uaap.errors import ConfigError


class TorchAutoencoder:
    """An autoencoder anomaly detector: ``fit(X)`` on normal rows, ``anomaly_score``, ``flag``, ``evaluate``.

    ``__init__`` only stores parameters; ``fit`` returns self; fitted state ends in ``_``.
    """

    _estimator_type = "outlier_detector"

    def __init__(
        self,
        epochs: int = 20,
        batch_size: int = 32,
        learning_rate: float = 0.01,
        optimizer: str = "adam",
        seed: int = 0,
    ) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.seed = seed

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters (scikit-learn protocol)."""
        return {k: getattr(self, k) for k in ("epochs", "batch_size", "learning_rate", "optimizer", "seed")}

    def fit(self, X: Any, y: Any = None) -> TorchAutoencoder:
        """Train a freshly seeded autoencoder on ``X`` (normal rows); the threshold at the default quantile."""
        from uaap.data import Dataset
        from uaap.metrics import anomaly_counts, anomaly_from_counts
        from uaap.models import build_model
        from uaap.protocol import THRESHOLD
        from uaap.training import TrainConfig, local_train

        if self.epochs < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ConfigError(
                f"the autoencoder needs epochs >= 1, batch_size >= 1 and learning_rate > 0; got epochs={self.epochs}, "
                f"batch_size={self.batch_size}, learning_rate={self.learning_rate}"
            )
        X = np.ascontiguousarray(X, dtype=np.float32)
        names = tuple(f"f{i}" for i in range(X.shape[1]))
        data = Dataset("autoencoder", X, np.zeros(len(X), dtype=np.int64), 2, names, task="anomaly")
        self.model_ = build_model("autoencoder", X.shape[1], 2, seed=self.seed)
        cfg = TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.learning_rate,
                          optimizer=self.optimizer, seed=self.seed)  # fmt: skip
        local_train(self.model_, data, cfg)
        self.n_features_in_ = X.shape[1]
        errors = self.anomaly_score(X)
        self.threshold_ = anomaly_from_counts(anomaly_counts(np.zeros(len(errors)), errors))[THRESHOLD]
        return self

    def anomaly_score(self, X: Any) -> np.ndarray:
        """Each row's mean squared reconstruction error."""
        from uaap.training import reconstruction_errors

        return reconstruction_errors(self.model_, np.ascontiguousarray(X, dtype=np.float32))

    def flag(self, X: Any) -> np.ndarray:
        """1 for an anomaly (error above ``threshold_``), else 0."""
        from uaap.metrics import anomaly_flags

        return anomaly_flags(self.anomaly_score(X), float(self.threshold_))

    def evaluate(self, X: Any, y: Any) -> dict[str, float]:
        """Threshold, mean error, accuracy, precision, recall, F1 and ROC AUC of the flags against labels ``y``."""
        from uaap.metrics import anomaly_counts, anomaly_from_counts

        counts = anomaly_counts(np.asarray(y), self.anomaly_score(X))
        return anomaly_from_counts(counts, threshold=float(self.threshold_))
