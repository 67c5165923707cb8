"""Flower's robust aggregators and server optimisers, wrapped by build_strategy, against independent references;
the combinations that cannot work refused with their reason; stragglers dropped or kept as the policy says."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from strategies import build_strategy
from strategies.wrapper import innermost, layers
from tests.flower_helpers import FakeGrid, reply_from, train_metrics
from uaap.config import RunConfig
from uaap.errors import ConfigError

SHAPES = {"w": (4, 3), "b": (3,)}
NODES = [1, 2, 3, 4, 5, 6, 7]
N_EXAMPLES = [10.0, 30.0, 20.0, 10.0, 40.0, 25.0, 15.0]


def _updates(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Seven updates: five honest ones near each other, two far away (an attacker's)."""
    rng = np.random.default_rng(seed)
    base = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    out = [{k: (v + 0.1 * rng.normal(size=v.shape)).astype(np.float32) for k, v in base.items()} for _ in range(5)]
    out += [{k: (-8.0 * v + rng.normal(size=v.shape)).astype(np.float32) for k, v in base.items()} for _ in range(2)]
    return out


def _aggregate(cfg: RunConfig, updates: list[dict[str, np.ndarray]], flags: list[int] | None = None) -> tuple:
    """One round of the whole stack over hand-made replies (the server's loop, without clients)."""
    strategy = build_strategy(cfg, num_nodes=len(updates), n_classes=3)
    glob = ArrayRecord({k: Array(np.zeros(s, dtype=np.float32)) for k, s in SHAPES.items()})
    list(strategy.configure_train(1, glob, ConfigRecord({}), FakeGrid(NODES[: len(updates)])))
    replies = [
        reply_from(
            node,
            RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v) for k, v in update.items()}),
                    "metrics": MetricRecord(train_metrics(n, straggler=(flags or [0] * len(updates))[i])),
                }
            ),
        )
        for i, (node, update, n) in enumerate(zip(NODES, updates, N_EXAMPLES, strict=False))
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    return strategy, arrays, metrics


def _cfg(strategy: str, **extra: object) -> RunConfig:
    return RunConfig(strategy=strategy, num_clients=7, min_clients=2, min_contributors=1, **extra)


def _flat(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([record[k].numpy().ravel() for k in SHAPES])


def _weighted_mean(updates: list[dict[str, np.ndarray]], weights: list[float]) -> np.ndarray:
    flat = np.stack([np.concatenate([u[k].astype(np.float64).ravel() for k in SHAPES]) for u in updates])
    return (np.asarray(weights)[:, None] * flat).sum(0) / sum(weights)


def _krum_scores(updates: list[dict[str, np.ndarray]], f: int) -> np.ndarray:
    """Blanchard et al.'s score: the sum of squared distances to the n - f - 2 nearest other updates."""
    flat = np.stack([np.concatenate([u[k].astype(np.float64).ravel() for k in SHAPES]) for u in updates])
    n = len(flat)
    scores = []
    for i in range(n):
        dists = sorted(float(np.sum((flat[i] - flat[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(dists[: n - f - 2]))
    return np.asarray(scores)


def test_robust_aggregates_equal_their_definitions_through_the_whole_stack() -> None:
    updates = _updates()
    flat = np.stack([np.concatenate([u[k].ravel() for k in SHAPES]) for u in updates])
    _, median, _ = _aggregate(_cfg("fedmedian"), updates)
    np.testing.assert_allclose(_flat(median), np.median(flat, axis=0), rtol=1e-6)

    _, trimmed, _ = _aggregate(_cfg("fedtrimmedavg", trim_fraction=0.2), updates)
    cut = int(0.2 * len(updates))  # scipy.stats.trim_mean: 1 of 7 from each end
    expected = np.sort(flat, axis=0)[cut : len(updates) - cut].mean(axis=0)
    np.testing.assert_allclose(_flat(trimmed), expected, rtol=1e-5)

    scores = _krum_scores(updates, f=2)
    _, krum, _ = _aggregate(_cfg("krum", byzantine_clients=2), updates)
    np.testing.assert_array_equal(_flat(krum), flat[int(np.argmin(scores))])
    assert int(np.argmin(scores)) < 5, "Krum picked an honest update"

    _, multi, _ = _aggregate(_cfg("multikrum", byzantine_clients=2), updates)  # averages the n - f = 5 best
    best = list(np.argsort(scores)[:5])
    assert sorted(best) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(
        _flat(multi), _weighted_mean([updates[i] for i in best], [N_EXAMPLES[i] for i in best]), rtol=1e-5
    )
    fedavg = _aggregate(_cfg("fedavg"), updates)[1]
    np.testing.assert_allclose(_flat(fedavg), _weighted_mean(updates, N_EXAMPLES), rtol=1e-5)
    honest = flat[:5].mean(0)
    assert np.linalg.norm(_flat(median) - honest) < 0.5 and np.linalg.norm(_flat(fedavg) - honest) > 5


def test_server_optimisers_are_flowers_with_the_runs_settings() -> None:
    from flwr.serverapp import strategy as fl

    built = {
        name: innermost(build_strategy(_cfg(name, server_learning_rate=0.3), num_nodes=7))
        for name in ("fedadam", "fedyogi", "fedadagrad", "fedavgm", "bulyan")
    }
    assert [type(s) for s in built.values()] == [fl.FedAdam, fl.FedYogi, fl.FedAdagrad, fl.FedAvgM, fl.Bulyan]
    assert built["fedadam"].eta == built["fedyogi"].eta == built["fedadagrad"].eta == 0.3
    assert built["fedavgm"].server_learning_rate == 0.3 and built["fedavgm"].server_momentum == 0.9
    assert innermost(build_strategy(_cfg("fedadam"))).eta == 0.1  # 0: Flower's own default
    assert innermost(build_strategy(_cfg("fedavgm"))).server_learning_rate == 1.0
    # FedAvgM's first step from zeros with momentum 0.9 is lr * the mean (its momentum buffer starts at the update)
    _, arrays, _ = _aggregate(_cfg("fedavgm", server_learning_rate=0.5), _updates())
    np.testing.assert_allclose(_flat(arrays), 0.5 * _weighted_mean(_updates(), N_EXAMPLES), rtol=1e-5)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "krum", "secure_aggregation": "ckks"},
         "strategy='krum' cannot run under secure-aggregation='ckks': the server only adds ciphertexts, which "
         "computes a weighted mean and nothing else; a robust aggregator needs each plaintext update. Use strategy "
         "fedavg or fedprox, or secure-aggregation none"),
        ({"strategy": "fedadam", "secure_aggregation": "ckks"},
         "a server optimiser multiplies the aggregate by its learning rate and momentum"),
        ({"strategy": "fedmedian", "dp_central": True},
         "strategy='fedmedian' cannot run with dp-central: central DP releases its own noisy mean"),
        ({"strategy": "fedavgm", "dp_central": True}, "strategy='fedavgm' cannot run with dp-central"),
        ({"strategy": "bulyan", "byzantine_clients": 2},
         "strategy='bulyan' with byzantine-clients=2 needs at least 11 clients per round (4f + 3); this run "
         "samples 10"),
        ({"strategy": "krum", "byzantine_clients": 4}, "needs more than 10 clients per round (2f + 2)"),
    ],
)  # fmt: skip
def test_combinations_that_cannot_work_are_refused_with_the_reason(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig(**settings)
    assert message in str(err.value)


def test_dp_sgd_composes_with_a_robust_aggregator_and_the_secure_layer_refuses_one_directly() -> None:
    from flwr.serverapp.strategy import FedMedian

    from strategies.secure import check_linear

    stack = build_strategy(RunConfig(strategy="fedmedian", dp_local=True, run_id=""))
    assert type(innermost(stack)) is FedMedian
    with pytest.raises(ConfigError, match="secure aggregation cannot run FedMedian"):
        check_linear(FedMedian())


def test_drop_aggregates_exactly_the_replies_of_clients_that_finished() -> None:
    from strategies.stragglers import DropStragglers

    updates, flags = _updates()[:5], [0, 1, 0, 1, 1]
    cfg = _cfg("fedavg", straggler_fraction=0.5)
    strategy, arrays, metrics = _aggregate(cfg, updates, flags)
    assert cfg.drops_stragglers and any(isinstance(x, DropStragglers) for x in layers(strategy))
    kept = [i for i, f in enumerate(flags) if not f]
    np.testing.assert_allclose(
        _flat(arrays), _weighted_mean([updates[i] for i in kept], [N_EXAMPLES[i] for i in kept]), rtol=1e-6
    )
    assert metrics["stragglers-dropped"] == 3
    # partial (and fedprox's auto): every reply, stragglers' partial work included
    for partial in (_cfg("fedavg", straggler_policy="partial"), _cfg("fedprox")):
        assert not partial.drops_stragglers
        np.testing.assert_allclose(
            _flat(_aggregate(partial, updates, flags)[1]), _weighted_mean(updates, N_EXAMPLES[:5]), rtol=1e-6
        )
    # fewer than min-contributors kept: withheld, though five replies were accepted
    assert _aggregate(cfg.replace(min_contributors=3), updates, flags)[1] is None
    # every reply a straggler: nothing to aggregate
    assert _aggregate(cfg, updates, [1] * 5)[1] is None


def test_dropped_stragglers_still_have_their_dp_sgd_release_accounted(uaap_home: object) -> None:
    from strategies.dp_accounting import PrivacyAccounting
    from strategies.wrapper import find_layer

    cfg = _cfg("fedavg", dp_local=True, run_id="drop-dp", straggler_policy="drop", straggler_fraction=0.5)
    release = {"dp-sigma": 1.0, "dp-q": 0.1, "dp-steps": 5, "dp-total-steps": 50, "dp-epsilon": 0.5}
    strategy = build_strategy(cfg, num_nodes=3, n_classes=3)
    glob = ArrayRecord({k: Array(np.zeros(s, dtype=np.float32)) for k, s in SHAPES.items()})
    list(strategy.configure_train(1, glob, ConfigRecord({}), FakeGrid([1, 2, 3])))
    replies: list[Message] = [
        reply_from(
            node,
            RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v) for k, v in u.items()}),
                    "metrics": MetricRecord(train_metrics(10.0, straggler=int(node != 1), **release)),
                }
            ),
        )
        for node, u in zip([1, 2, 3], _updates()[:3], strict=True)
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(_flat(arrays), _weighted_mean(_updates()[:1], [10.0]), rtol=1e-6)
    accounting = find_layer(strategy, PrivacyAccounting)
    assert accounting is not None
    assert metrics["stragglers-dropped"] == 2
    assert len(accounting.ledger.releases(run_id="drop-dp")) == 3  # the server saw all three releases


@pytest.mark.parametrize("name", ["fedadam", "fedavgm"])
def test_a_resumed_server_optimiser_goes_on_with_its_moments(name: str) -> None:
    import json

    from strategies.optimizer_state import ServerOptimizerState
    from strategies.wrapper import Stateful, find_layer

    cfg = _cfg(name, server_learning_rate=0.5)

    def round_of(strategy: object, server_round: int, start: ArrayRecord, seed: int) -> ArrayRecord:
        list(strategy.configure_train(server_round, start, ConfigRecord({}), FakeGrid(NODES)))  # type: ignore[attr-defined]
        replies = [
            reply_from(node, RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in u.items()}),
                                         "metrics": MetricRecord(train_metrics(n))}))
            for node, u, n in zip(NODES, _updates(seed), N_EXAMPLES, strict=True)
        ]  # fmt: skip
        return strategy.aggregate_train(server_round, replies)[0]  # type: ignore[attr-defined]

    zeros = ArrayRecord({k: Array(np.zeros(s, dtype=np.float32)) for k, s in SHAPES.items()})
    running = build_strategy(cfg, num_nodes=7)
    after_one = round_of(running, 1, zeros, seed=1)
    layer = find_layer(running, ServerOptimizerState)
    assert isinstance(layer, Stateful)
    saved = json.loads(json.dumps(layer.state_dict()))  # what a checkpoint keeps
    resumed = build_strategy(cfg, num_nodes=7)
    find_layer(resumed, ServerOptimizerState).load_state_dict(saved)  # type: ignore[union-attr]
    fresh = build_strategy(cfg, num_nodes=7)  # a resume that forgot the moments
    two = [_flat(round_of(s, 2, after_one, seed=2)) for s in (running, resumed, fresh)]
    np.testing.assert_array_equal(two[1], two[0])
    assert not np.allclose(two[2], two[0]), "the moments change round 2: without them a resume differs"
