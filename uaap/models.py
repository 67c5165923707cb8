"""Model registry (by name) and weight conversion to and from Flower's records.

No BatchNorm anywhere: every model here is DP-SGD (Opacus) compatible as built, so clients and
the server always hold the same architecture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from uaap.errors import ConfigError

if TYPE_CHECKING:
    from flwr.app import ArrayRecord
    from torch import nn


def _logreg(n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None) -> nn.Module:
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(n_features, n_classes))


def _mlp(n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None) -> nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Flatten(), nn.Linear(n_features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, n_classes)
    )


def _cnn(n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None) -> nn.Module:
    from torch import nn

    if image_shape is None or image_shape[1] % 2 or image_shape[2] % 2:
        raise ConfigError(
            f"model='cnn' needs image data with even height and width (e.g. digits 1x8x8); got "
            f"image_shape={image_shape}: use model='mlp' or 'logreg' for tabular data"
        )
    c, h, w = image_shape
    return nn.Sequential(
        nn.Unflatten(1, image_shape),
        nn.Conv2d(c, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (h // 2) * (w // 2), 64),
        nn.ReLU(),
        nn.Linear(64, n_classes),
    )


ModelFactory = Callable[[int, int, "tuple[int, int, int] | None"], "nn.Module"]
MODELS: dict[str, ModelFactory] = {"logreg": _logreg, "mlp": _mlp, "cnn": _cnn}


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


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's parameters as float32 numpy arrays, in ``state_dict`` order."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load arrays (``state_dict`` order) into the model, checking every shape."""
    import torch

    state = model.state_dict()
    if len(weights) != len(state):
        raise ConfigError(f"got {len(weights)} weight arrays for a model with {len(state)} tensors")
    new = {}
    for (key, ref), arr in zip(state.items(), weights, strict=True):
        if tuple(arr.shape) != tuple(ref.shape):
            raise ConfigError(f"weight {key!r} has shape {tuple(arr.shape)}; the model expects {tuple(ref.shape)}")
        new[key] = torch.as_tensor(np.asarray(arr), dtype=ref.dtype)
    model.load_state_dict(new)


def to_record(weights: list[np.ndarray]) -> ArrayRecord:
    """Weights as a Flower ``ArrayRecord`` (keys keep the order)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({f"{i:04d}": Array(np.ascontiguousarray(w)) for i, w in enumerate(weights)})


def from_record(record: ArrayRecord) -> list[np.ndarray]:
    """Inverse of :func:`to_record`."""
    return [record[k].numpy() for k in record]


def flatten(weights: list[np.ndarray]) -> np.ndarray:
    """Concatenate arrays into one float64 vector."""
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights])


def unflatten(vector: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    """Split a flat vector back into arrays shaped (and typed) like ``like``."""
    sizes = [w.size for w in like]
    if vector.size != sum(sizes):
        raise ConfigError(f"flat vector has {vector.size} values; the model has {sum(sizes)} parameters")
    chunks = np.split(np.asarray(vector), np.cumsum(sizes)[:-1])
    return [c.reshape(w.shape).astype(w.dtype) for c, w in zip(chunks, like, strict=True)]


def count_parameters(weights: list[np.ndarray]) -> int:
    """Number of scalar parameters."""
    return int(sum(w.size for w in weights))
