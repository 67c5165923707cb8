"""Build the configured strategy from a run configuration."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from uaap.config import RunConfig

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.serverapp.strategy import Strategy

PARTITION_KEY = "partition-id"
DENOMINATOR_KEY = "dp-denominator"  # central DP: q * N, sent with every training message (strategies.privacy)
CLIENT_INFO_KEY = "client-info"


def build_strategy(cfg: RunConfig, num_nodes: int | None = None) -> Strategy:
    """Flower's FedAvg or FedProx, wrapped as the run asks.

    From the inside out: reply validation (malformed plaintext never reaches FedAvg), secure
    aggregation when ``secure-aggregation = "ckks"``, central DP / privacy accounting when DP is on.
    """
    from flwr.serverapp.strategy import FedAvg, FedProx

    from strategies.privacy import wrap_privacy
    from strategies.secure import wrap_secure
    from strategies.validation import ValidateReplies

    common = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_clients,
        "min_evaluate_nodes": min(cfg.min_clients, 1 if cfg.fraction_evaluate == 0 else cfg.min_clients),
        "min_available_nodes": cfg.min_clients if num_nodes is None else min(cfg.min_clients, num_nodes),
    }
    inner = FedProx(proximal_mu=cfg.proximal_mu, **common) if cfg.strategy == "fedprox" else FedAvg(**common)
    return wrap_privacy(cfg, wrap_secure(cfg, ValidateReplies(inner, cfg.run_id)))


def sort_replies(replies: Iterable[Message]) -> list[Message]:
    """Order replies by the client's partition id (then node id) so sums are reproducible.

    Replies arrive in completion order; floating-point sums depend on order, so a fixed order
    makes aggregation bit-reproducible across runs with the same seeds.
    """

    def key(msg: Message) -> tuple[int, int]:
        pid = -1
        if not msg.has_error() and CLIENT_INFO_KEY in msg.content.config_records:
            pid = int(msg.content.config_records[CLIENT_INFO_KEY].get(PARTITION_KEY, -1))
        return (pid, msg.metadata.src_node_id)

    return sorted(replies, key=key)
