"""FedStats (strategy fedstats) sums the statistics that rows could give and leaves out the replies that lie about
theirs; its totals are the pooled rows' statistics. Real Flower messages, no federation (tests.flower_helpers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import MetricRecord, RecordDict
from sklearn.datasets import load_wine
from sklearn.preprocessing import StandardScaler

from strategies.secure import SecureAggregation
from strategies.statistics import FedStats
from tests.flower_helpers import configure, reply_from
from uaap import crypto
from uaap.config import RunConfig
from uaap.errors import ConfigError
from uaap.models import from_record, to_record
from uaap.models.kmeans import local_statistics
from uaap.models.pca import local_statistics as pca_statistics
from uaap.models.summed import as_arrays, rounds_of
from uaap.protocol import ARRAYS, METRICS, NUM_EXAMPLES, STEPS, STRAGGLER, TRAIN_LOSS

X = StandardScaler().fit_transform(load_wine().data)
PARTS = np.array_split(X, 3)
Tamper = Callable[[dict[str, np.ndarray]], None]


def _round(
    model: str, liars: dict[str, Tamper], honest: int = 3, min_contributors: int = 1
) -> tuple[FedStats, dict[str, np.ndarray] | None, dict[str, np.ndarray]]:
    """One round of ``honest`` clients (nodes 1, 2, ...) and one liar per entry of ``liars`` (the next nodes): the
    strategy, the totals it returns (None: withheld) and the totals it sent."""
    cfg = RunConfig(model=model, strategy="fedstats", n_clusters=3, n_components=2, num_rounds=1)
    family = rounds_of(model)
    assert family is not None
    strategy = FedStats(family, min_contributors, min_train_nodes=1, min_available_nodes=1)
    initial = family.initial(cfg, X)
    sent = to_record([initial[name] for name in family.names])
    configure(strategy, 1, sent, list(range(1, 1 + honest + len(liars))))
    replies = []
    for node, part in enumerate([*PARTS[:honest], *[PARTS[0]] * len(liars)], start=1):
        stats, loss = family.local(cfg, part, as_arrays(family, from_record(sent)))
        if node > honest:
            list(liars.values())[node - honest - 1](stats)
        metrics = {NUM_EXAMPLES: len(part), TRAIN_LOSS: loss, STEPS: 0, STRAGGLER: 0}
        content = RecordDict({ARRAYS: to_record([stats[n] for n in family.names]), METRICS: MetricRecord(metrics)})
        replies.append(reply_from(node, content))
    arrays, summed = strategy.aggregate_train(1, replies)
    if arrays is None:
        return strategy, None, as_arrays(family, from_record(sent))
    assert summed is not None and summed[NUM_EXAMPLES] == sum(len(p) for p in PARTS[:honest])
    return strategy, as_arrays(family, from_record(arrays)), as_arrays(family, from_record(sent))


def _double_counts(stats: dict[str, np.ndarray]) -> None:
    stats["counts"] *= 2


def _move_centroid(stats: dict[str, np.ndarray]) -> None:
    stats["centroids"][0, 0] += 1.0


def test_kmeans_totals_are_the_pooled_statistics_without_the_liars() -> None:
    strategy, totals, sent = _round("kmeans", {"more rows": _double_counts, "other centroids": _move_centroid})
    assert totals is not None
    pooled = local_statistics(X, sent["centroids"])  # round 1's centroids
    np.testing.assert_allclose(totals["sums"], pooled.sums, atol=1e-12)
    assert np.array_equal(totals["counts"], pooled.counts) and totals["clients"].tolist() == [3.0]
    reasons = [reason for _, reason in strategy.last_rejected]
    assert [node for node, _ in strategy.last_rejected] == [4, 5]
    assert "adding up to num-examples=60" in reasons[0] and "not those of this round's totals" in reasons[1]


def _inflate_sum(stats: dict[str, np.ndarray]) -> None:
    stats["sum"] *= 100.0


def _claim_rows(stats: dict[str, np.ndarray]) -> None:
    stats["n"] += 1000.0


def test_pca_totals_are_the_pooled_statistics_without_the_liars() -> None:
    strategy, totals, _ = _round("pca", {"impossible sums": _inflate_sum, "more rows": _claim_rows})
    assert totals is not None
    pooled = pca_statistics(X)
    assert totals["n"].tolist() == [pooled.n]
    np.testing.assert_allclose(totals["sum"], pooled.sum, atol=1e-10)
    np.testing.assert_allclose(totals["xtx"], pooled.xtx, rtol=1e-12)
    reasons = [reason for _, reason in strategy.last_rejected]
    assert "sum^2 <= n * sum x^2" in reasons[0]
    assert "differs from num-examples=60" in reasons[1]


def test_secure_aggregation_takes_fedstats_because_its_aggregate_is_a_plain_sum(tmp_path: Path) -> None:
    keys = crypto.generate_keys(tmp_path / "keys")
    family = rounds_of("kmeans")
    assert family is not None
    secure = SecureAggregation(FedStats(family), crypto.server_context(keys.public))
    assert secure.encrypted and isinstance(secure.strategy, FedStats)

    class Averaging(FedStats):
        sums_replies = False  # an aggregate that is not a plain sum: a ciphertext sum cannot compute it

    with pytest.raises(ConfigError, match="secure aggregation cannot run Averaging"):
        SecureAggregation(Averaging(family), crypto.server_context(keys.public))


def test_a_lone_consistent_client_is_not_released_when_the_liars_are_left_out() -> None:
    """Reply validation counted 3 contributors; after the liars are left out one remains, below min-contributors."""
    strategy, totals, _ = _round("kmeans", {"a": _double_counts, "b": _move_centroid}, honest=1, min_contributors=2)
    assert totals is None and len(strategy.last_rejected) == 2
