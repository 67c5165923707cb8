"""Weights as numpy arrays, to and from torch modules and Flower's records, flat or shaped."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from uaap.errors import ConfigError

if TYPE_CHECKING:
    from flwr.app import ArrayRecord
    from torch import nn


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
