"""Whether a DP setting leaves the model anything to learn: the noise against the largest signal it can carry.

Client-level (central) DP clips each client's update to norm C, sums the sampled clients' updates, adds
Gaussian noise N(0, (z C)^2 I) and divides by q N (the expected number of sampled clients). The clipped
average has norm at most C; the noise on it has norm about z C sqrt(d) / (q N) for d parameters. When the
ratio z sqrt(d) / (q N) exceeds 1, every round's noise outweighs any update the clients can make together and
the model does not learn (measured: 3 clients, z = 1, a 62-parameter logistic regression: accuracy at chance).
"""

from __future__ import annotations

import math

from uaap.config import RunConfig


def central_noise_ratio(noise_multiplier: float, clients_per_round: float, num_params: int) -> float:
    """Expected noise norm on the averaged update over the largest norm that average can have (C cancels)."""
    return noise_multiplier * math.sqrt(max(num_params, 1)) / max(clients_per_round, 1e-12)


def hopeless_noise_warning(cfg: RunConfig, num_params: int) -> str | None:
    """A warning when client-level DP noise leaves nothing to learn, with what would; None otherwise."""
    if not cfg.dp_central or cfg.dp_noise_multiplier <= 0:
        return None
    per_round = cfg.fraction_train * cfg.num_clients
    ratio = central_noise_ratio(cfg.dp_noise_multiplier, per_round, num_params)
    if ratio <= 1.0:
        return None
    needed = math.ceil(cfg.dp_noise_multiplier * math.sqrt(num_params))
    return (
        f"client-level DP noise is about {ratio:.1f}x the largest update the clients can make together "
        f"(noise multiplier {cfg.dp_noise_multiplier:g}, {num_params} parameters, {per_round:g} clients per round): "
        f"the model will not learn. It needs about {needed} clients per round at this noise multiplier, a smaller "
        "--dp-noise-multiplier (a larger epsilon), or example-level DP on the clients (--dp-local true)"
    )


def model_size(cfg: RunConfig, n_features: int, n_classes: int, image_shape: tuple[int, int, int] | None) -> int:
    """The number of trainable parameters of ``cfg.model`` for data of this shape (0 for a family without a
    network: statistics have no weights to noise, and such families refuse DP)."""
    from uaap.models import MODELS, build_model

    if cfg.model not in MODELS:
        return 0
    model = build_model(cfg.model, n_features, n_classes, image_shape)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
