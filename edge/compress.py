"""Compression before export: magnitude pruning with fine-tuning, and distillation into a smaller model.

Both train with :func:`uaap.training.local_train` on the dataset's train split, so they use the same
loop (and seeds) as federated clients. Quantization (fp16/int8) happens in the format exporters.

* Pruning: global L1 magnitude pruning of every Linear/Conv2d weight to ``amount`` sparsity
  (``torch.nn.utils.prune``; the mask stays applied while fine-tuning), then made permanent. Zeroed
  weights only shrink a file that is compressed (zip) or stored sparse: both sizes are reported.
* Distillation: the student (a registry model, e.g. ``mlp``) is trained on soft targets
  ``alpha * onehot(y) + (1 - alpha) * softmax(teacher_logits / T)``; cross-entropy against these
  targets is exactly ``alpha * CE(y) + (1 - alpha) * CE(teacher_T)``, which ``local_train``'s
  ``CrossEntropyLoss`` computes for probability targets.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from edge.errors import ExportError, NotApplicable
from edge.source import Source

TORCH_ONLY = "pruning and distillation apply to torch registry models (logreg, svm, mlp, cnn), not {family!r}"


def _accuracy(source: Source, model: Any) -> float:
    """Accuracy of ``model`` on the whole held-out split (not only the parity sample)."""
    return source.accuracy(source.full_heldout, model)


def _train_config(epochs: int, seed: int) -> Any:
    from uaap.training import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=32, lr=0.02, optimizer="sgd", momentum=0.9, seed=seed)


def sparsity(model: Any) -> float:
    """Share of exactly-zero values among Linear/Conv2d weights."""
    from torch import nn

    zeros = total = 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    return zeros / max(total, 1)


def prune(source: Source, amount: float, epochs: int = 5, seed: int = 0) -> Source:
    """Prune ``amount`` of the weights globally by magnitude, fine-tune, and return the pruned source."""
    import torch.nn.utils.prune as tprune
    from torch import nn

    from uaap.models import build_model
    from uaap.training import local_train

    if source.kind != "torch":
        raise NotApplicable(TORCH_ONLY.format(family=source.family))
    if not 0.0 < amount < 1.0:
        raise ExportError(f"--prune {amount} is outside (0, 1); give the share of weights to remove, e.g. 0.5")
    if source.train is None:
        raise ExportError("pruning fine-tunes on the train split; export from a run or a model with a dataset")
    model = copy.deepcopy(source.model)
    targets = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    tprune.global_unstructured(targets, pruning_method=tprune.L1Unstructured, amount=amount)
    before = _accuracy(source, model)
    if epochs > 0:
        local_train(model, source.train, _train_config(epochs, seed))
    for module, name in targets:
        tprune.remove(module, name)
    # prune.remove re-registers each weight after its bias: reload into a fresh model so the
    # state_dict order (what save_model/load_model rely on) is the registry's again.
    fresh = build_model(source.family, source.n_features, source.n_classes, source.image_shape)
    fresh.load_state_dict(model.state_dict())
    model = fresh.eval()
    info = {
        "amount": amount,
        "sparsity": sparsity(model),
        "finetune_epochs": epochs,
        "accuracy_original": _accuracy(source, source.model),
        "accuracy_pruned_before_finetune": before,
        "accuracy_pruned": _accuracy(source, model),
    }
    return source.with_model(model, source.family, prune=info)


def distill(
    source: Source, student: str, epochs: int = 30, temperature: float = 2.0, alpha: float = 0.5, seed: int = 0
) -> Source:
    """Train registry model ``student`` to imitate the source (teacher) and return the student source."""
    import torch

    from uaap.data import Dataset
    from uaap.models import MODELS, build_model
    from uaap.training import local_train

    if source.kind != "torch":
        raise NotApplicable(TORCH_ONLY.format(family=source.family))
    if student not in MODELS:
        raise ExportError(f"--distill {student!r} is not a registry model; choose one of: {', '.join(MODELS)}")
    if source.train is None:
        raise ExportError("distillation trains on the train split; export from a run or a model with a dataset")
    train = source.train
    with torch.no_grad():
        logits = source.model(torch.from_numpy(train.X)).numpy().astype(np.float64)
    soft = np.exp((logits - logits.max(axis=1, keepdims=True)) / temperature)
    soft /= soft.sum(axis=1, keepdims=True)
    onehot = np.eye(source.n_classes)[train.y]
    targets = (alpha * onehot + (1 - alpha) * soft).astype(np.float32)
    data = Dataset(train.name, train.X, targets, train.n_classes, train.feature_names, train.image_shape)
    model = build_model(student, source.n_features, source.n_classes, source.image_shape, seed=seed)
    local_train(model, data, _train_config(epochs, seed))
    model.eval()
    info = {
        "teacher": source.family,
        "student": student,
        "epochs": epochs,
        "temperature": temperature,
        "alpha": alpha,
        "accuracy_teacher": _accuracy(source, source.model),
        "accuracy_student": _accuracy(source, model),
    }
    out = source.with_model(model, student, distill=info)
    out.meta = {**source.meta, "model": student}
    return out
