"""DP-SGD for stacks of linear layers without per-sample gradients (the registry's logreg, svm, mlp, autoencoder).

Opacus' hooks compute every example's gradient of every parameter, then its norm, then the clipped sum: for our
small networks at batch 16 that bookkeeping, not the arithmetic, is most of a step (measured: 4-5x a non-private
epoch of the MLP on digits). For a linear layer ``z = a W^T + b`` the gradient of example i's loss is
``g_i a_i^T`` (weight) and ``g_i`` (bias), with ``g_i = dl_i/dz_i``, so its squared norm is
``|g_i|^2 (|a_i|^2 + 1)`` and the clipped sum is one matrix product ``(c * g)^T a``: the per-example norms
("ghost norms", Goodfellow 2015; Li et al. 2022) and the clipped sum come from each layer's input and output
gradient alone, in a handful of tensor operations per step.

Everything else is Opacus' and unchanged: its Poisson data loader draws the batches, the clip factor is its
``min(1, C / (norm + 1e-6))``, the noise is its ``N(0, (sigma C)^2)`` drawn per parameter in parameter order from the
same generator, the sum is divided by its expected batch size, and its accountant's hook counts the step, so the
privacy accounting is the same and a step equals Opacus' to float rounding (``tests/uaap/test_privacy_fastdp.py``
compares them on the same batch and generator state). Models with any other layer (the CNN's convolutions) keep
Opacus' hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

CLIP_EPS = 1e-6  # Opacus' clip factor: C / (norm + 1e-6)


def supports(model: nn.Module) -> bool:
    """Whether ``model`` is a ``Sequential`` of linear layers and parameter-free element-wise layers."""
    from torch import nn

    free = (nn.Flatten, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.LeakyReLU, nn.GELU, nn.ELU)
    if not isinstance(model, nn.Sequential) or not any(isinstance(m, nn.Linear) for m in model):
        return False
    return all(isinstance(m, nn.Linear) or (isinstance(m, free) and not list(m.parameters())) for m in model)


class LinearStack:
    """Runs a supported ``Sequential`` and keeps, for each linear layer, its input and the gradient at its output."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers: list[Any] = []  # [linear module, input, output gradient] per linear layer, this batch

    def parameters(self) -> Any:
        """The model's parameters (FedProx reads them from what training holds)."""
        return self.model.parameters()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output; the linear layers' inputs are kept and their output gradients captured."""
        from torch import nn

        self.layers = []
        h = x
        for module in self.model:  # type: ignore[attr-defined]  # a Sequential (supports() checked it)
            if isinstance(module, nn.Linear):
                if h.dim() != 2:
                    raise ValueError(f"fast DP-SGD takes (batch, features) inputs at each linear layer; got {h.shape}")
                entry = [module, h.detach(), None]
                self.layers.append(entry)
                h = module(h)
                if h.requires_grad:
                    h.register_hook(lambda grad, e=entry: e.__setitem__(2, grad))
            else:
                h = module(h)
        return h

    def clipped_sum(self, max_grad_norm: float) -> list[torch.Tensor]:
        """Each parameter's sum over the batch of the per-example gradients clipped to ``max_grad_norm`` (in the
        model's parameter order). The captured gradients are of the batch-mean loss: times the batch size they are
        the per-example gradients, as Opacus scales them for ``loss_reduction="mean"``."""
        import torch

        n = len(self.layers[0][1])
        if n == 0:
            return [torch.zeros_like(p) for p in self.model.parameters()]
        grads = [(g if g is not None else torch.zeros(n, m.out_features)) * n for m, _, g in self.layers]
        squared = torch.zeros(n, dtype=grads[0].dtype)
        for (module, a, _), g in zip(self.layers, grads, strict=True):
            g2 = g.pow(2).sum(dim=1)
            squared += g2 * a.pow(2).sum(dim=1) + (g2 if module.bias is not None else 0.0)
        factor = (max_grad_norm / (squared.sqrt() + CLIP_EPS)).clamp(max=1.0)
        out: dict[int, torch.Tensor] = {}
        for (module, a, _), g in zip(self.layers, grads, strict=True):
            cg = g * factor[:, None]
            out[id(module.weight)] = cg.t() @ a
            if module.bias is not None:
                out[id(module.bias)] = cg.sum(dim=0)
        return [out[id(p)] for p in self.model.parameters()]


class FastDPOptimizer:
    """The optimizer side of fast DP-SGD, with the interface ``uaap.training`` uses of Opacus' ``DPOptimizer``:
    ``pre_step`` clips, noises and scales the gradients; ``original_optimizer`` then steps."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        stack: LinearStack,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        generator: torch.Generator,
    ) -> None:
        self.original_optimizer = optimizer
        self.stack = stack
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.generator = generator
        self.accumulated_iterations = 1
        self.step_hook: Callable[[Any], None] | None = None
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def attach_step_hook(self, fn: Callable[[Any], None]) -> None:
        """Run ``fn(self)`` after each noised step (the accountant's hook)."""
        self.step_hook = fn

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the wrapped optimizer's gradients."""
        self.original_optimizer.zero_grad(set_to_none)

    def pre_step(self) -> bool:
        """Replace each gradient by the clipped sum plus Gaussian noise, over the expected batch size."""
        import torch

        summed = self.stack.clipped_sum(self.max_grad_norm)
        std = self.noise_multiplier * self.max_grad_norm
        with torch.no_grad():
            for p, s in zip(self.params, summed, strict=True):
                noise = torch.normal(mean=0, std=std, size=s.shape, device=s.device, generator=self.generator)
                p.grad = ((s + noise) / (self.expected_batch_size * self.accumulated_iterations)).view_as(p)
        if self.step_hook is not None:
            self.step_hook(self)
        return True

    def step(self) -> None:
        """``pre_step`` then the wrapped optimizer's step."""
        if self.pre_step():
            self.original_optimizer.step()


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    generator: torch.Generator,
) -> tuple[LinearStack, FastDPOptimizer, Any]:
    """The model's stack, the fast DP optimizer and Opacus' Poisson loader (rows sampled with rate 1 / batches)."""
    from opacus.data_loader import DPDataLoader

    order = [id(p) for p in model.parameters()]
    if [id(p) for g in optimizer.param_groups for p in g["params"]] != order:
        raise ValueError("fast DP-SGD needs the optimizer over the model's parameters, in the model's order")
    sample_rate = 1.0 / len(loader)
    expected = int(len(loader.dataset) * sample_rate)
    dp_loader = DPDataLoader.from_data_loader(loader, generator=generator)
    stack = LinearStack(model)
    dp_optimizer = FastDPOptimizer(
        optimizer,
        stack,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected,
        generator=generator,
    )
    return stack, dp_optimizer, dp_loader
