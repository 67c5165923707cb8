"""A small layer list that torch registry models and linear estimators both reduce to.

TFLite (Keras rebuild), Core ML (MIL builder) and C emit from this one description, so each
exporter is a few lines per op instead of one converter per framework. Shapes follow torch
(NCHW, weights ``(out, in[, kh, kw])``); the last layer gives logits and softmax is implied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.errors import NotApplicable

NEURAL_FAMILIES = ("logreg", "svm", "mlp", "cnn", "logistic_regression", "linear_regression")


@dataclass(frozen=True)
class Layer:
    """One step: ``dense``, ``relu``, ``conv2d`` (stride 1, symmetric zero padding), ``maxpool2d`` or ``reshape``."""

    op: str
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    shape: tuple[int, ...] = ()
    padding: int = 0
    kernel: int = 0


def network(model: Any, family: str) -> list[Layer]:
    """The layer list of a torch ``nn.Sequential`` or a fitted scikit-learn ``LogisticRegression``."""
    if family in ("logistic_regression", "linear_regression"):
        return [_linear_estimator(model)]
    if family in ("logreg", "svm", "mlp", "cnn") or hasattr(model, "named_children"):
        return _torch_sequential(model)
    raise NotApplicable(f"model family {family!r} is not a neural or linear model; it has no layer form")


def _linear_estimator(est: Any) -> Layer:
    coef = np.asarray(est.coef_, dtype=np.float64)
    intercept = np.asarray(est.intercept_, dtype=np.float64)
    if coef.ndim == 1:  # a regressor (LinearRegression, Ridge): one output, no softmax
        return Layer("dense", coef.reshape(1, -1).astype(np.float32), intercept.reshape(1).astype(np.float32))
    if coef.shape[0] == 1:
        # Binary: p1 = sigmoid(z) = softmax([-z/2, z/2])[1] exactly, so every target keeps one softmax head.
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return Layer("dense", coef.astype(np.float32), intercept.astype(np.float32))


def _torch_sequential(model: Any) -> list[Layer]:
    from torch import nn

    layers: list[Layer] = []
    for name, module in model.named_children():
        if isinstance(module, nn.Flatten):
            layers.append(Layer("reshape", shape=(-1,)))
        elif isinstance(module, nn.Unflatten):
            layers.append(Layer("reshape", shape=tuple(int(s) for s in module.unflattened_size)))
        elif isinstance(module, nn.Linear):
            layers.append(Layer("dense", _np(module.weight), _np(module.bias)))
        elif isinstance(module, nn.ReLU):
            layers.append(Layer("relu"))
        elif isinstance(module, nn.Conv2d):
            ok = (
                module.stride == (1, 1)
                and module.dilation == (1, 1)
                and module.groups == 1
                and isinstance(module.padding, tuple)
                and module.padding[0] == module.padding[1]
                and module.kernel_size[0] == module.kernel_size[1]
            )
            if not ok:
                raise NotApplicable(f"layer {name!r} ({module}) is not a stride-1 square conv with symmetric padding")
            layers.append(
                Layer(
                    "conv2d",
                    _np(module.weight),
                    _np(module.bias),
                    padding=int(module.padding[0]),
                    kernel=int(module.kernel_size[0]),
                )
            )
        elif isinstance(module, nn.MaxPool2d):
            k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
            stride = module.stride if isinstance(module.stride, int) else module.stride[0]
            if stride != k or module.padding not in (0, (0, 0)):
                raise NotApplicable(f"layer {name!r} ({module}) is not a non-overlapping max pool")
            layers.append(Layer("maxpool2d", kernel=int(k)))
        else:
            raise NotApplicable(
                f"layer {name!r} ({type(module).__name__}) is not supported by the edge emitters; "
                "supported: Flatten, Unflatten, Linear, ReLU, Conv2d, MaxPool2d"
            )
    return layers


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def shapes(layers: list[Layer], n_features: int) -> list[tuple[int, ...]]:
    """Output shape (without batch) of every layer, starting from a flat row of ``n_features``."""
    shape: tuple[int, ...] = (n_features,)
    out = []
    for layer in layers:
        if layer.op == "reshape":
            shape = (int(np.prod(shape)),) if layer.shape == (-1,) else layer.shape
        elif layer.op == "dense":
            assert layer.weight is not None
            shape = (layer.weight.shape[0],)
        elif layer.op == "conv2d":
            assert layer.weight is not None
            _, h, w = shape
            k, p = layer.kernel, layer.padding
            shape = (layer.weight.shape[0], h + 2 * p - k + 1, w + 2 * p - k + 1)
        elif layer.op == "maxpool2d":
            c, h, w = shape
            shape = (c, h // layer.kernel, w // layer.kernel)
        out.append(shape)
    return out


def forward(layers: list[Layer], X: np.ndarray) -> np.ndarray:
    """NumPy float64 probabilities of the layer list (a framework-free reference)."""
    x = np.asarray(X, dtype=np.float64)
    for layer in layers:
        if layer.op == "reshape":
            x = x.reshape(len(x), *((-1,) if layer.shape == (-1,) else layer.shape))
        elif layer.op == "dense":
            x = x @ layer.weight.T.astype(np.float64) + layer.bias
        elif layer.op == "relu":
            x = np.maximum(x, 0.0)
        elif layer.op == "conv2d":
            x = conv2d(x, layer.weight.astype(np.float64), layer.bias.astype(np.float64), layer.padding)
        elif layer.op == "maxpool2d":
            n, c, h, w = x.shape
            k = layer.kernel
            x = x[:, :, : h // k * k, : w // k * k].reshape(n, c, h // k, k, w // k, k).max(axis=(3, 5))
    return softmax(x)


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, padding: int) -> np.ndarray:
    """Stride-1 NCHW convolution (cross-correlation, as torch and Core ML compute it)."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i : i + oh, j : j + ow]
    out = np.einsum("nckluv,ockl->nouv", cols, weight)
    return out + (bias.reshape(1, o, 1, 1) if bias is not None else 0)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax (float64)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
