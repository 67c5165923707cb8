"""Build the configured strategy stack from a run configuration, and order replies reproducibly."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.config import RunConfig
from uaap.errors import ConfigError
from uaap.metrics import DEFAULT_ANOMALY_QUANTILE
from uaap.models.registry import SERVER_OPTIMIZERS

if TYPE_CHECKING:
    from flwr.app import Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import Strategy


def build_strategy(
    cfg: RunConfig,
    num_nodes: int | None = None,
    n_classes: int | None = None,
    task: str = "classification",
    n_features: int | None = None,
) -> Strategy:
    """The Flower strategy the run names (:func:`flower_strategy`), wrapped as the run asks.

    From the inside out: secure aggregation when ``secure-aggregation = "ckks"``, central DP noise when
    ``dp-central`` is on, dropping stragglers' replies under ``straggler-policy`` drop, privacy accounting
    (ledger, budget stop) when any DP is on, and reply validation outermost, so that no layer parses, accounts
    or sums a reply it has not accepted. Evaluation metrics are computed from the clients' summed counts
    (:func:`summed_metrics`), never averaged; ``n_classes`` (the server's model) fixes the size of the
    confusion matrices replies may carry; ``task="regression"`` makes evaluation replies carry regression sums
    instead (MSE, RMSE, MAE and R2 from their totals), and ``task="forecast"`` those and the horizon forecast's
    (MAE, RMSE, sMAPE and MASE of the series' held-out tails: :mod:`uaap.forecast.metrics`).
    """
    if cfg.strategy == "fedstats":  # K-Means, PCA: exact sums of the clients' statistics (strategies.statistics)
        from strategies.statistics import build_statistics_strategy

        return build_statistics_strategy(cfg, num_nodes)
    if cfg.strategy == "fedtrees":  # random forest: every client's trees kept (strategies.forest)
        from strategies.forest import build_trees_strategy

        if n_features is None or n_classes is None:
            raise ConfigError("a forest federation needs the data's n_features and n_classes to check trees")
        metrics_fn = functools.partial(summed_metrics, anomaly_quantile=cfg.anomaly_quantile)
        return build_trees_strategy(cfg, num_nodes, n_features, n_classes, task, metrics_fn)
    if cfg.strategy == "fedhist":  # trees grown by the server from summed histograms (strategies.histtrees)
        from strategies.histtrees import build_hist_strategy

        if n_features is None or n_classes is None:
            raise ConfigError("a histogram-tree federation needs the data's n_features and n_classes")
        return build_hist_strategy(cfg, num_nodes, n_features, n_classes, task, summed_metrics)
    if cfg.strategy.startswith("fedxgb-"):  # XGBoost through Flower's FedXgbBagging / FedXgbCyclic
        from strategies.boosting import build_boosting_strategy

        if n_features is None or n_classes is None:
            raise ConfigError("an XGBoost federation needs the data's n_features and n_classes to check boosters")
        return build_boosting_strategy(
            cfg, n_features=n_features, n_classes=n_classes, metrics=summed_metrics, num_nodes=num_nodes
        )
    from strategies.secure import SecureAggregation, wrap_secure
    from strategies.validation import ValidateReplies
    from strategies.wrapper import find_layer

    common: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_clients,
        "min_evaluate_nodes": min(cfg.min_clients, 1 if cfg.fraction_evaluate == 0 else cfg.min_clients),
        "min_available_nodes": cfg.min_clients if num_nodes is None else min(cfg.min_clients, num_nodes),
        "evaluate_metrics_aggr_fn": functools.partial(summed_metrics, anomaly_quantile=cfg.anomaly_quantile),
    }
    sampled = max(int((num_nodes or cfg.num_clients) * cfg.fraction_train), cfg.min_clients)
    inner = flower_strategy(cfg, common, sampled)
    if cfg.secagg:  # pairwise masking (strategies.secagg): its own stack, reply validation outermost
        from strategies.secagg import build_secagg_strategy

        return build_secagg_strategy(cfg, inner, n_classes, task)
    if cfg.strategy in SERVER_OPTIMIZERS:  # their moments go into the run's checkpoints, for a resume
        from strategies.optimizer_state import ServerOptimizerState

        inner = ServerOptimizerState(inner)
    stack = wrap_privacy(cfg, wrap_secure(cfg, inner))
    secure = find_layer(stack, SecureAggregation)
    return ValidateReplies(
        stack,
        cfg.run_id,
        dp_local=cfg.dp_local,
        central=cfg.dp_central,
        he_context=None if secure is None else secure.context,
        max_num_examples=cfg.max_num_examples,
        min_contributors=cfg.min_contributors,
        n_classes=n_classes,
        task=task,
    )


def flower_strategy(cfg: RunConfig, common: dict[str, Any], sampled: int) -> Strategy:
    """The Flower strategy ``cfg.strategy`` names (``flwr.serverapp.strategy``), as Flower ships it.

    ``common``: the sampling and metric settings every strategy takes; ``sampled``: clients per round, from
    which MultiKrum selects the ``n - f`` updates it averages. Combinations that cannot work (a robust or
    optimising server under CKKS or central DP) were refused by :meth:`RunConfig.check_strategy`.
    """
    from flwr.serverapp import strategy as fl

    eta = cfg.server_learning_rate
    f = cfg.byzantine_clients
    optimiser: dict[str, Any] = {"eta": eta} if eta > 0 else {}
    build: dict[str, Any] = {
        "fedavg": lambda: fl.FedAvg(**common),
        "fedprox": lambda: fl.FedProx(proximal_mu=cfg.proximal_mu, **common),
        "fedadam": lambda: fl.FedAdam(**common, **optimiser),
        "fedyogi": lambda: fl.FedYogi(**common, **optimiser),
        "fedadagrad": lambda: fl.FedAdagrad(**common, **optimiser),
        "fedavgm": lambda: fl.FedAvgM(
            **common, server_learning_rate=eta if eta > 0 else 1.0, server_momentum=cfg.server_momentum
        ),
        "fedmedian": lambda: fl.FedMedian(**common),
        "fedtrimmedavg": lambda: fl.FedTrimmedAvg(**common, beta=cfg.trim_fraction),
        "krum": lambda: fl.Krum(**common, num_malicious_nodes=f),
        "multikrum": lambda: fl.MultiKrum(**common, num_malicious_nodes=f, num_nodes_to_select=max(1, sampled - f)),
        "bulyan": lambda: fl.Bulyan(**common, num_malicious_nodes=f),
    }
    if cfg.strategy not in build:
        raise ConfigError(
            f"strategy={cfg.strategy!r} is not a strategy over parameters; choose one of: {', '.join(build)}"
        )
    strategy: Strategy = build[cfg.strategy]()
    return strategy


def summed_metrics(
    contents: list[RecordDict], weighted_by_key: str, *, anomaly_quantile: float = DEFAULT_ANOMALY_QUANTILE
) -> MetricRecord:
    """Flower's ``evaluate_metrics_aggr_fn``: sum the replies' counts, then compute the metrics once (anomaly
    detection: the threshold is ``anomaly_quantile`` of the summed normal error histogram)."""
    from flwr.app import MetricRecord

    from uaap.metrics import metrics_from_counts, sum_counts
    from uaap.protocol import NUM_EXAMPLES

    total = sum_counts(dict(next(iter(c.metric_records.values()))) for c in contents)
    metrics = metrics_from_counts(total, anomaly_quantile=anomaly_quantile)
    return MetricRecord({**metrics, NUM_EXAMPLES: int(total[NUM_EXAMPLES])})


def wrap_privacy(cfg: RunConfig, strategy: Strategy, *, rng: np.random.Generator | None = None) -> Strategy:
    """``strategy`` under central DP noise (``dp-central``) and privacy accounting (any DP), else unchanged.

    Under ``straggler-policy`` drop, :class:`strategies.stragglers.DropStragglers` goes between the two: the noise
    sums only the kept replies, and the accounting still sees every reply that reached the server.
    """
    from strategies.dp_accounting import PrivacyAccounting
    from strategies.dp_noise import CentralDPNoise
    from strategies.stragglers import DropStragglers

    drop = cfg.drops_stragglers and cfg.straggler_fraction > 0  # only simulated stragglers say they are
    if not (cfg.dp_central or cfg.dp_local):
        return DropStragglers(strategy) if drop else strategy
    if cfg.dp_central:
        strategy = CentralDPNoise(
            strategy,
            noise_multiplier=cfg.dp_noise_multiplier,
            clipping_norm=cfg.dp_central_clip_norm,
            sample_rate=cfg.fraction_train,
            rng=rng,
        )
    if drop:
        strategy = DropStragglers(strategy)
    return PrivacyAccounting(
        strategy,
        run_id=cfg.run_id,
        delta=cfg.dp_delta,
        accountant=cfg.dp_accountant,
        max_epsilon=cfg.max_epsilon,
        dp_local=cfg.dp_local,
    )


def sort_replies(replies: Iterable[Message]) -> list[Message]:
    """Order replies by a digest of what they carry (then node id) so sums are reproducible.

    Replies arrive in completion order, and floating-point sums depend on order. The digest is a function of
    the replies' contents only: the same updates are summed in the same order in every run (node ids are
    random per simulation), and no field a client fills in decides where its reply goes.
    """
    return sorted(replies, key=lambda msg: (content_digest(msg), int(msg.metadata.src_node_id)))


def content_digest(msg: Message) -> bytes:
    """BLAKE2b of a reply's arrays and metrics (empty for a lost client's error reply)."""
    if msg.has_error():
        return b""
    digest = hashlib.blake2b(digest_size=16)
    for name, record in sorted(msg.content.array_records.items()):
        digest.update(name.encode())
        for key, array in record.items():
            digest.update(key.encode())
            digest.update(array.data)
    for name, metrics in sorted(msg.content.metric_records.items()):
        digest.update(name.encode())
        digest.update(repr(sorted(metrics.items())).encode())
    return digest.digest()
