"""Build the configured strategy stack from a run configuration, and order replies reproducibly."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.config import RunConfig
from uaap.protocol import CLIENT_INFO, PARTITION_ID, as_int

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.serverapp.strategy import Strategy


def build_strategy(cfg: RunConfig, num_nodes: int | None = None) -> Strategy:
    """Flower's FedAvg or FedProx, wrapped as the run asks.

    From the inside out: reply validation (malformed plaintext never reaches FedAvg), secure
    aggregation when ``secure-aggregation = "ckks"``, central DP noise when ``dp-central`` is on, and
    privacy accounting (ledger, budget stop) when any DP is on.
    """
    from flwr.serverapp.strategy import FedAvg, FedProx

    from strategies.secure import wrap_secure
    from strategies.validation import ValidateReplies

    common: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_clients,
        "min_evaluate_nodes": min(cfg.min_clients, 1 if cfg.fraction_evaluate == 0 else cfg.min_clients),
        "min_available_nodes": cfg.min_clients if num_nodes is None else min(cfg.min_clients, num_nodes),
    }
    inner = FedProx(proximal_mu=cfg.proximal_mu, **common) if cfg.strategy == "fedprox" else FedAvg(**common)
    return wrap_privacy(cfg, wrap_secure(cfg, ValidateReplies(inner, cfg.run_id)))


def wrap_privacy(cfg: RunConfig, strategy: Strategy, *, rng: np.random.Generator | None = None) -> Strategy:
    """``strategy`` under central DP noise (``dp-central``) and privacy accounting (any DP), else unchanged."""
    from strategies.dp_accounting import PrivacyAccounting
    from strategies.dp_noise import CentralDPNoise

    if not (cfg.dp_central or cfg.dp_local):
        return strategy
    if cfg.dp_central:
        strategy = CentralDPNoise(
            strategy,
            noise_multiplier=cfg.dp_noise_multiplier,
            clipping_norm=cfg.dp_central_clip_norm,
            sample_rate=cfg.fraction_train,
            rng=rng,
        )
    return PrivacyAccounting(
        strategy,
        run_id=cfg.run_id,
        delta=cfg.dp_delta,
        accountant=cfg.dp_accountant,
        max_epsilon=cfg.max_epsilon,
        dp_local=cfg.dp_local,
    )


def sort_replies(replies: Iterable[Message]) -> list[Message]:
    """Order replies by the client's partition id (then node id) so sums are reproducible.

    Replies arrive in completion order; floating-point sums depend on order, so a fixed order
    makes aggregation bit-reproducible across runs with the same seeds.
    """

    def key(msg: Message) -> tuple[int, int]:
        pid = -1
        if not msg.has_error() and CLIENT_INFO in msg.content.config_records:
            with contextlib.suppress(ValueError):
                pid = as_int(msg.content.config_records[CLIENT_INFO].get(PARTITION_ID, -1), PARTITION_ID)
        return (pid, msg.metadata.src_node_id)

    return sorted(replies, key=key)
