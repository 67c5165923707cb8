"""The registry's torch MLP as scikit-learn-style estimators (a classifier and a regressor) for AutoML.

Both train the registry model (:mod:`uaap.models` ``'mlp'``) with :func:`uaap.training.local_train`, so a search's
MLP is the model ``uaap train`` and the federation train; ``__init__`` only stores parameters, ``fit`` returns self,
fitted state ends in ``_``, and pickled state holds arrays, never a torch object.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from uaap.errors import ConfigError


class TorchMLPClassifier:
    """The registry's torch MLP as a scikit-learn-style classifier (trained with :func:`uaap.training.local_train`).

    ``__init__`` only stores parameters; ``fit`` returns self; fitted state ends in ``_``.
    """

    def __init__(
        self,
        epochs: int = 30,
        batch_size: int = 32,
        learning_rate: float = 0.05,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        n_classes: int | None = None,
        model: str = "mlp",
        seed: int = 0,
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.momentum = momentum
        self.n_classes = n_classes
        self.model = model
        self.seed = seed
        self.image_shape = image_shape  # channels x height x width, for model="cnn"

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters (scikit-learn protocol)."""
        names = ("epochs", "batch_size", "learning_rate", "optimizer", "momentum", "n_classes", "model", "seed",
                 "image_shape")  # fmt: skip
        return {k: getattr(self, k) for k in names}

    def fit(self, X: np.ndarray, y: np.ndarray) -> TorchMLPClassifier:
        """Train a freshly seeded registry model on ``X``, ``y`` (one torch thread: one CPU per trial)."""
        from uaap.data import Dataset

        X = np.ascontiguousarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        n_classes = int(self.n_classes or int(y.max()) + 1)
        net = self._train(Dataset("automl", X, y, n_classes, _names(X)))
        self.model_ = net
        self.n_classes_ = n_classes
        self.classes_ = np.arange(n_classes)
        self.n_features_in_ = X.shape[1]
        return self

    def _train(self, data: Any) -> Any:
        """A freshly seeded registry model trained on ``data`` with one torch thread (one CPU per trial; the refit
        uses the same setting, so results match); refuses bad settings and a diverged loss."""
        import torch

        from uaap.models import build_model
        from uaap.training import TrainConfig, local_train

        if self.epochs < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ConfigError(
                f"mlp needs epochs >= 1, batch_size >= 1 and learning_rate > 0; got epochs={self.epochs}, "
                f"batch_size={self.batch_size}, learning_rate={self.learning_rate}"
            )
        net = build_model(self.model, data.n_features, data.n_classes, self.image_shape, seed=self.seed)
        cfg = TrainConfig(
            epochs=int(self.epochs),
            batch_size=int(self.batch_size),
            lr=float(self.learning_rate),
            optimizer=str(self.optimizer),
            momentum=float(self.momentum),
            seed=int(self.seed),
        )
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            result = local_train(net, data, cfg)
        finally:
            torch.set_num_threads(threads)
        if not np.isfinite(result.loss):
            raise ConfigError(
                f"mlp training diverged (loss {result.loss}) with learning_rate={self.learning_rate}; "
                "lower the learning rate"
            )
        return net

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (softmax of the logits)."""
        from uaap.training import predict_proba

        return predict_proba(self.model_, np.ascontiguousarray(X, dtype=np.float32))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable class."""
        return cast(np.ndarray, self.predict_proba(X).argmax(axis=1))  # numpy types argmax(axis=...) as Any

    def __getstate__(self) -> dict[str, Any]:
        """Parameters and, once fitted, the weights as arrays: an estimator file stores data, never a torch object."""
        state = self.get_params()
        if hasattr(self, "model_"):
            state |= {"weights_": self.weights(), "n_classes_": self.n_classes_, "n_features_in_": self.n_features_in_}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuild the fitted torch model from its weights (see :meth:`__getstate__`)."""
        weights = state.pop("weights_", None)
        self.__dict__.update(state)
        if weights is not None:
            from uaap.models import build_model, set_weights

            shape = getattr(self, "image_shape", None)  # absent from files written before it existed
            self.model_ = build_model(self.model, int(self.n_features_in_), int(self.n_classes_), shape, seed=self.seed)
            set_weights(self.model_, [np.asarray(w) for w in weights])
            self.classes_ = np.arange(int(self.n_classes_))

    def weights(self) -> list[np.ndarray]:
        """The fitted model's weights (``state_dict`` order), as :func:`uaap.workspace.save_model` stores them."""
        from uaap.models import get_weights

        return get_weights(self.model_)


class TorchMLPRegressor(TorchMLPClassifier):
    """The registry's torch MLP as a scikit-learn-style regressor: MSE on the targets standardised with the training
    rows' mean and std (:func:`uaap.data.target_scaling`), predictions mapped back to the target's units."""

    _estimator_type = "regressor"

    def __init__(
        self,
        epochs: int = 30,
        batch_size: int = 32,
        learning_rate: float = 0.05,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        n_classes: int | None = 1,
        model: str = "mlp",
        seed: int = 0,
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__(epochs, batch_size, learning_rate, optimizer, momentum, 1, model, seed, image_shape)

    def fit(self, X: np.ndarray, y: np.ndarray) -> TorchMLPRegressor:
        """Train a freshly seeded one-output registry model on ``X``, ``y`` (real-valued targets)."""
        from uaap.data import Dataset, target_scaling

        X = np.ascontiguousarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=np.float32)
        mean, std = target_scaling(y)
        net = self._train(Dataset("automl", X, y, 1, _names(X), task="regression", target_mean=mean, target_std=std))
        self.model_ = net
        self.n_classes_ = 1
        self.n_features_in_ = X.shape[1]
        self.target_mean_, self.target_std_ = mean, std
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Not defined for a regressor."""
        raise AttributeError("TorchMLPRegressor predicts values: use predict")

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions in the target's units."""
        from uaap.training import predict_values

        return predict_values(
            self.model_, np.ascontiguousarray(X, dtype=np.float32), self.target_mean_, self.target_std_
        )

    def __getstate__(self) -> dict[str, Any]:
        """As the classifier's, plus the target's scaling."""
        state = super().__getstate__()
        if hasattr(self, "model_"):
            state |= {"target_mean_": self.target_mean_, "target_std_": self.target_std_}
        return state


def _names(X: np.ndarray) -> tuple[str, ...]:
    return tuple(f"f{i}" for i in range(X.shape[1]))
