"""The one local train/evaluate loop, shared by federated clients and central training.

FedProx adds ``mu/2 * ||w - w_global||^2`` to the local objective. We add its gradient,
``mu * (w - w_global)``, directly to ``p.grad`` right before the parameter update instead of adding
the term to the loss: under Opacus the DP optimizer rebuilds ``p.grad`` from clipped per-sample
gradients, which would silently drop a loss-side term. One code path serves both cases.

Classification trains with cross-entropy on the labels; regression (``Dataset.task``) with MSE on the targets
standardised by the Dataset's ``target_mean``/``target_std``, so the same learning rates work for any target
unit. :func:`predict` maps the model's output back, and every metric is in the target's own units.

Anomaly detection (``task="anomaly"``, an autoencoder) trains on the MSE of the reconstruction against the input
(the targets are the rows themselves) in the same loop, so FedProx, DP-SGD and its accountant apply unchanged; a
row's score is its reconstruction error (:func:`reconstruction_errors`), flagged above a threshold chosen on
validation data (:mod:`uaap.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from uaap.config import RunConfig
from uaap.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from uaap.data import Dataset


@dataclass(frozen=True)
class TrainConfig:
    """Local optimisation settings (one client, one round; or one central job)."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    proximal_mu: float = 0.0
    max_steps: int | None = None
    seed: int = 0

    @classmethod
    def from_run(cls, cfg: RunConfig, **overrides: Any) -> TrainConfig:
        """Local settings implied by a run configuration."""
        values: dict[str, Any] = {
            "epochs": cfg.local_epochs,
            "batch_size": cfg.batch_size,
            "lr": cfg.learning_rate,
            "optimizer": cfg.optimizer,
            "momentum": cfg.momentum,
            "proximal_mu": cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0,
            "seed": cfg.seed,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class TrainResult:
    """What one call of :func:`local_train` did."""

    num_examples: int
    steps: int
    loss: float


class PrivacyEngineLike(Protocol):
    """What :func:`local_train` needs from a DP-SGD session (see ``uaap.privacy``)."""

    def make_private(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Any]
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader[Any]]:
        """Return DP versions of model, optimizer and loader."""
        ...


class DPOptimizerLike(Protocol):
    """The part of Opacus' ``DPOptimizer`` UAAP calls (Opacus ships no type hints)."""

    original_optimizer: torch.optim.Optimizer
    step_hook: Callable[[Any], None]  # the accountant's hook, attached by ``PrivacyEngine.make_private``

    def pre_step(self) -> bool | None:
        """Clip and noise the per-sample gradients; falsy when the step is skipped."""
        ...

    def attach_step_hook(self, fn: Callable[[Any], None]) -> None:
        """Run ``fn(optimizer)`` after clipping and noising, before the update (replaces the hook)."""
        ...


def training_targets(data: Dataset) -> np.ndarray:
    """What the loss compares the model's output with: labels, standardised targets of shape (n, 1), or (anomaly
    detection) the rows themselves."""
    if data.task == "anomaly":
        return data.X
    if not data.regression:
        return data.y
    return ((np.asarray(data.y, dtype=np.float64) - data.target_mean) / data.target_std).astype(np.float32)[:, None]


def make_loader(data: Dataset, batch_size: int, seed: int, shuffle: bool = True) -> DataLoader[Any]:
    """A seeded torch DataLoader over a dataset (targets as the loss takes them: :func:`training_targets`)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    dataset = TensorDataset(torch.from_numpy(data.X), torch.from_numpy(np.ascontiguousarray(training_targets(data))))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam, as configured; a model's own L2 penalty (the SVM's) as weight decay."""
    import torch

    decay = float(getattr(model, "uaap_weight_decay", 0.0))
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=decay)
    raise ConfigError(f"optimizer={cfg.optimizer!r} is not supported; choose one of: sgd, adam")


def criterion_for(model: nn.Module, data: Dataset) -> nn.Module:
    """The training loss: MSE for regression and for an autoencoder's reconstruction, the multi-class hinge loss
    for an SVM, else cross-entropy."""
    import torch

    if getattr(model, "uaap_loss", "") == "reconstruction" or data.task == "anomaly":
        if getattr(model, "uaap_loss", "") != "reconstruction" or data.task != "anomaly":
            raise ConfigError(
                f"task={data.task!r} with a {getattr(model, 'uaap_loss', '') or 'label'}-trained model: anomaly "
                "detection is model=autoencoder with task=anomaly, both or neither"
            )
        return torch.nn.MSELoss()
    if data.regression:
        return torch.nn.MSELoss()
    if getattr(model, "uaap_loss", "") == "hinge":
        return torch.nn.MultiMarginLoss()
    return torch.nn.CrossEntropyLoss()


def add_proximal_gradient(model: nn.Module, global_params: Sequence[torch.Tensor], mu: float) -> None:
    """Add ``mu * (w - w_global)``, the gradient of ``mu/2 ||w - w_global||^2``, to every ``p.grad``."""
    import torch

    if mu == 0.0:
        return
    with torch.no_grad():
        for p, g in zip(model.parameters(), global_params, strict=True):
            prox = (p.detach() - g) * mu
            if p.grad is None:
                p.grad = prox.clone()
            else:
                p.grad.add_(prox)


def local_train(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    *,
    global_params: Sequence[torch.Tensor] | None = None,
    privacy: PrivacyEngineLike | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data``.

    ``global_params`` (the round's starting weights) enable the FedProx term when
    ``cfg.proximal_mu > 0``; ``cfg.max_steps`` caps the optimizer steps (a straggler's partial
    work); ``privacy`` switches to DP-SGD. Returns examples seen, steps taken and mean loss.
    """
    import torch

    torch.manual_seed(cfg.seed)
    model.train()
    loader = make_loader(data, cfg.batch_size, cfg.seed)
    optimizer = make_optimizer(model, cfg)
    criterion = criterion_for(model, data)  # before Opacus wraps the model (the wrapper hides its attributes)
    if privacy is not None:
        model, optimizer, loader = privacy.make_private(model, optimizer, loader)
    if cfg.proximal_mu > 0.0 and global_params is None:
        global_params = [p.detach().clone() for p in model.parameters()]
    steps, seen, loss_sum = 0, 0, 0.0
    budget = cfg.max_steps if cfg.max_steps is not None else float("inf")
    for epoch in range(cfg.epochs):
        epoch_seen, epoch_loss = 0, 0.0
        for xb, yb in loader:
            if steps >= budget:
                break
            optimizer.zero_grad(set_to_none=True)
            if len(yb) == 0:  # Poisson sampling can draw an empty batch: still a (noise-only) step
                out_loss = None
                if privacy is not None:  # Opacus needs the (empty) per-sample gradients to clip and noise
                    model(xb).sum().backward()
            else:
                out_loss = criterion(model(xb), yb)
                out_loss.backward()
            _step(optimizer, model, global_params, cfg.proximal_mu)
            steps += 1
            if out_loss is not None:
                epoch_seen += len(yb)
                epoch_loss += float(out_loss.detach()) * len(yb)
        seen, loss_sum = seen + epoch_seen, loss_sum + epoch_loss
        if on_epoch is not None:
            on_epoch(epoch, epoch_loss / max(epoch_seen, 1))
        if steps >= budget:
            break
    return TrainResult(num_examples=len(data.y), steps=steps, loss=loss_sum / max(seen, 1))


def _step(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    global_params: Sequence[torch.Tensor] | None,
    mu: float,
) -> None:
    original = getattr(optimizer, "original_optimizer", None)
    if original is None:
        if global_params is not None:
            add_proximal_gradient(model, global_params, mu)
        optimizer.step()
        return
    # Opacus DPOptimizer: clip per-sample grads and add noise first, then add the proximal
    # gradient to the privatised grad, then update with the wrapped optimizer.
    if cast(DPOptimizerLike, optimizer).pre_step():
        if global_params is not None:
            add_proximal_gradient(model, global_params, mu)
        original.step()


def predict_proba(model: nn.Module, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities for ``X`` (float32 rows)."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            logits = model(torch.from_numpy(np.ascontiguousarray(X[start : start + batch_size])))
            outs.append(torch.softmax(logits, dim=1).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)


def predict_values(model: nn.Module, X: np.ndarray, mean: float, std: float, batch_size: int = 1024) -> np.ndarray:
    """A regression model's predictions for ``X`` in the target's units (float64): output * std + mean."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(X[start : start + batch_size]))).numpy())
    out = np.concatenate(outs).astype(np.float64).reshape(-1) if outs else np.zeros(0)
    return out * std + mean


def reconstruction_errors(model: nn.Module, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Each row's anomaly score: the mean squared error of an autoencoder's reconstruction (float64)."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(X[start : start + batch_size]))
            outs.append(((model(xb) - xb.flatten(1)) ** 2).mean(dim=1).numpy())
    return np.concatenate(outs).astype(np.float64) if outs else np.zeros(0)


def flag_anomalies(model: nn.Module, X: np.ndarray, threshold: float) -> np.ndarray:
    """1 for the rows whose reconstruction error exceeds ``threshold`` (a saved model's ``threshold``), else 0."""
    return (reconstruction_errors(model, X) > threshold).astype(np.int64)


def predict(model: nn.Module, data: Dataset) -> np.ndarray:
    """What ``model`` says about ``data``'s rows: class probabilities, targets in their own units, or (anomaly
    detection) reconstruction errors."""
    if data.task == "anomaly":
        return reconstruction_errors(model, data.X)
    if data.regression:
        return predict_values(model, data.X, data.target_mean, data.target_std)
    return predict_proba(model, data.X)


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Loss, accuracy, macro/weighted F1, precision, recall and (two classes) ROC AUC, from summable counts.

    The same code the server applies to the clients' summed counts (:mod:`uaap.metrics`), so central and
    federated numbers are comparable.
    """
    from uaap.metrics import classification_counts, metrics_from_counts

    return metrics_from_counts(classification_counts(y, proba))


def evaluate(
    model: nn.Module, data: Dataset, *, threshold: float | None = None, anomaly_quantile: float | None = None
) -> dict[str, float]:
    """Metrics of ``model`` on ``data`` (see :func:`classification_metrics`; regression: MSE, RMSE, MAE, R2).

    Anomaly detection flags rows above ``threshold`` (chosen on validation data), else above the
    ``anomaly_quantile`` of ``data``'s own normal rows' errors (a threshold chosen on the rows evaluated).
    """
    from uaap.metrics import DEFAULT_ANOMALY_QUANTILE, metrics_from_counts

    q = DEFAULT_ANOMALY_QUANTILE if anomaly_quantile is None else anomaly_quantile
    return metrics_from_counts(evaluate_counts(model, data), anomaly_quantile=q, threshold=threshold)


def evaluate_counts(model: nn.Module, data: Dataset) -> dict[str, Any]:
    """The summable counts behind :func:`evaluate` (what a client sends instead of its own ratios)."""
    from uaap.metrics import anomaly_counts, classification_counts, regression_counts

    if data.task == "anomaly":
        return anomaly_counts(data.y, reconstruction_errors(model, data.X))
    if data.regression:
        return regression_counts(data.y, predict(model, data), center=data.target_mean)
    return classification_counts(data.y, predict_proba(model, data.X))
