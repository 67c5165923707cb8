"""The torch networks of the registry (families whose federation averages weights), built by name.

No BatchNorm anywhere: every network here is DP-SGD (Opacus) compatible as built, so clients and
the server always hold the same architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from uaap.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

SVM_WEIGHT_DECAY = 1e-3  # the linear SVM's L2 penalty (lambda/2 ||w||^2 per step, through the optimizer)


def _logreg(n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None) -> nn.Module:
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(n_features, n_classes))


def _svm(n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None) -> nn.Module:
    """A linear SVM: one linear layer of class scores, trained on the multi-class hinge loss (Weston-Watkins).

    The soft margin comes from the optimizer's weight decay (:data:`SVM_WEIGHT_DECAY`), which acts after
    DP-SGD's clipping and noise, so it costs no privacy. Scores go through softmax where probabilities are
    asked for: their argmax is the SVM's decision, their values are not calibrated probabilities.
    """
    from torch import nn

    net = nn.Sequential(nn.Flatten(), nn.Linear(n_features, n_classes))
    # plain attributes (Module.__setattr__ is typed for tensors and modules only), read by uaap.training before
    # Opacus wraps the model
    object.__setattr__(net, "uaap_loss", "hinge")
    object.__setattr__(net, "uaap_weight_decay", SVM_WEIGHT_DECAY)
    return net


def _mlp(n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None) -> nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Flatten(), nn.Linear(n_features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, n_classes)
    )


def _cnn(n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None) -> nn.Module:
    from torch import nn

    if image_shape is None:
        raise ConfigError(
            "model='cnn' needs image data (channels x height x width, e.g. digits 1x8x8); this data set is a "
            "table: use model='mlp' or 'logreg'"
        )
    c, h, w = image_shape
    return nn.Sequential(
        nn.Unflatten(1, image_shape),
        nn.Conv2d(c, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        # any height and width: an odd edge keeps its last row/column (even shapes export as they always did)
        nn.MaxPool2d(2, ceil_mode=bool(h % 2 or w % 2)),
        nn.Flatten(),
        nn.Linear(32 * ((h + 1) // 2) * ((w + 1) // 2), 64),
        nn.ReLU(),
        nn.Linear(64, n_classes),
    )


def _autoencoder(n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None) -> nn.Module:
    """An autoencoder for anomaly detection: rows squeezed through a bottleneck of a quarter of the features
    (2 to 16) and rebuilt; a row it rebuilds badly (high mean squared error) is unlike the normal training rows.

    Its output is the reconstruction (``n_features`` wide, whatever ``n_classes`` says); it trains on the MSE of
    output against input (``uaap_loss``), images included (rows are flattened).
    """
    from torch import nn

    hidden, code = min(64, max(8, n_features)), min(16, max(2, n_features // 4))
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(n_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, code),
        nn.ReLU(),
        nn.Linear(code, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_features),
    )
    object.__setattr__(net, "uaap_loss", "reconstruction")  # read by uaap.training.criterion_for
    return net


def _lstm(n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None) -> nn.Module:
    """An LSTM reading each row as a sequence of ``n_features`` steps (:mod:`uaap.models.sequence`)."""
    from uaap.models.sequence import RecurrentNet

    return RecurrentNet("lstm", n_features, n_classes)


def _gru(n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None) -> nn.Module:
    """A GRU reading each row as a sequence of ``n_features`` steps (:mod:`uaap.models.sequence`)."""
    from uaap.models.sequence import RecurrentNet

    return RecurrentNet("gru", n_features, n_classes)


def _embedding_bag(n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None) -> nn.Module:
    """A bag of hashed words (one token per input column) through ``nn.EmbeddingBag`` (:mod:`uaap.models.text`)."""
    from uaap.models.text import EmbeddingBagNet

    return EmbeddingBagNet(n_features, n_classes)


ModelFactory = Callable[[int, int, "tuple[int, int, int] | None"], "nn.Module"]
MODELS: dict[str, ModelFactory] = {
    "logreg": _logreg,
    "svm": _svm,
    "mlp": _mlp,
    "cnn": _cnn,
    "autoencoder": _autoencoder,
    "lstm": _lstm,
    "gru": _gru,
    "embedding_bag": _embedding_bag,
}


def build_model(
    name: str, n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None = None, seed: int = 0
) -> nn.Module:
    """Build a freshly initialised model by registry name; ``seed`` fixes the initial weights."""
    import torch

    if name not in MODELS:
        raise ConfigError(f"model={name!r} is not in the registry; choose one of: {', '.join(MODELS)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MODELS[name](n_features, n_classes, image_shape)
