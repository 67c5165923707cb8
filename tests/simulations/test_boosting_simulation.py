"""Federated XGBoost end to end: in this process (tests.LocalGrid: the real ClientApp, Flower's FedXgbBagging and
FedXgbCyclic under our round loop) for accuracy against central XGBoost on the same test split, resume, MLflow and
export; on Flower's Ray backend (``uaap simulate``) with a lying client; and the runs the family cannot do, refused
before they start. The tests share one workspace: a fresh MLflow database costs ~7 s to create here.

The 5-client comparison on breast_cancer and digits with more rounds is ``benchmarks/boosting.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from server.federation import run_federation
from tests.flower_helpers import LocalGrid
from uaap import workspace
from uaap.config import RunConfig
from uaap.data import federated
from uaap.errors import ConfigError
from uaap.models import boosting


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One workspace for this module's runs (run ids differ), so MLflow's schema is created once."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("xgb-home")
        mp.setenv("UAAP_HOME", str(path))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield path


pytestmark = pytest.mark.mutation_scope("strategies.boosting.")

CFG = RunConfig(
    model="xgboost", dataset="breast_cancer", num_clients=5, min_clients=5, num_rounds=3, experiment="tests-xgb"
)


def _final(rd: workspace.RunDir) -> bytes:
    ckpt = rd.latest_checkpoint()
    assert ckpt is not None
    return ckpt.arrays[boosting.KEY].tobytes()


def _central_accuracy(cfg: RunConfig, boosting_rounds: int) -> float:
    """Plain XGBoost on the clients' pooled training rows, same settings, tested on the server's test split."""
    import xgboost as xgb

    clients, test = federated(cfg, cfg.num_clients)
    X = np.concatenate([c.train.X for c in clients])
    y = np.concatenate([c.train.y for c in clients])
    settings = boosting.settings(cfg, test.n_features, test.n_classes)
    booster = xgb.train(settings.params(), xgb.DMatrix(X, label=y), num_boost_round=boosting_rounds)
    p = booster.predict(xgb.DMatrix(test.X))
    return float(((p > 0.5).astype(int) == test.y).mean())


def _mlflow(run_id: str, key: str) -> tuple[list[int], list[str]]:
    """The steps MLflow holds of metric ``key`` for the run, and the run's artifacts."""
    from uaap.tracking import Tracker

    tracker = Tracker(CFG.experiment, run_id, kind="federated")
    steps = sorted(m.step for m in tracker._client.get_metric_history(tracker.mlflow_run_id, key))
    return steps, [a.path for a in tracker._client.list_artifacts(tracker.mlflow_run_id)]


def test_bagging_and_cyclic_come_within_two_points_of_central_xgboost_resume_and_export(home: Path) -> None:
    assert CFG.strategy == "fedxgb-bagging" and CFG.partition == "dirichlet", "xgboost's default: bagging, non-IID"
    bagging = run_federation(LocalGrid(5), CFG.replace(run_id="bag"), num_partitions=5)
    cyclic = run_federation(
        LocalGrid(5), CFG.replace(run_id="cyc", strategy="fedxgb-cyclic", num_rounds=10), num_partitions=5
    )
    for rd, rounds in ((bagging, 3 * 5), (cyclic, 10)):  # boosting rounds the global model holds
        assert boosting.count_trees(_final(rd)) == rounds
        central = _central_accuracy(CFG, rounds)
        fed = rd.events("round")[-1]["central"]["accuracy"]
        assert fed >= central - 0.02, f"{rd.run_id}: federated {fed:.4f} vs central {central:.4f}"
        assert fed > 0.9
        steps, artifacts = _mlflow(rd.run_id, "central_accuracy")
        assert steps == list(range(rounds // (5 if rd is bagging else 1) + 1)) and artifacts == ["model.skops"]

    # resumed: a 2-round run continued to 3 rounds holds exactly the uninterrupted run's booster
    short = run_federation(LocalGrid(5), CFG.replace(run_id="resumed", num_rounds=2), num_partitions=5)
    resumed = run_federation(LocalGrid(5), short.read_config().replace(num_rounds=3), num_partitions=5)
    assert [s["resumed"] for s in resumed.events("start")] == [False, True]
    assert _final(resumed) == _final(bagging)

    from edge import export_model

    results = export_model("bag", "onnx,c")
    assert {r.format: r.status for r in results} == {"onnx": "ok", "c": "ok"}
    for r in results:
        assert r.manifest["parity"]["argmax_agreement"] == 1.0 and r.manifest["parity"]["max_abs_diff"] < 1e-4


def test_what_xgboost_cannot_do_is_refused_before_a_run_starts_naming_what_exists() -> None:
    assert RunConfig(model="xgboost").strategy == "fedxgb-bagging", "no strategy named: the family's own"
    expected = "takes strategy fedxgb-bagging or fedxgb-cyclic or fedhist, not strategy='fedprox'"
    with pytest.raises(ConfigError, match=expected):
        RunConfig(model="xgboost", strategy="fedprox").check_family("federated")
    with pytest.raises(ConfigError, match="secure-aggregation='ckks'.*Families with secure aggregation: logreg"):
        RunConfig(model="xgboost", secure_aggregation="ckks")
    with pytest.raises(ConfigError, match=r"no differential privacy \(--dp-local true\); families with DP: logreg"):
        RunConfig(model="xgboost", dp_local=True)
    with pytest.raises(ConfigError, match=r"no differential privacy \(--dp-central true\)"):
        RunConfig(model="xgboost", dp_central=True)
    with pytest.raises(ConfigError, match="model='mlp' .* not strategy='fedxgb-cyclic'"):
        RunConfig(model="mlp", strategy="fedxgb-cyclic").check_family("federated")
    RunConfig(model="xgboost").check_family("central")  # uaap train fits the same booster on the pooled rows


@pytest.mark.slow
def test_xgboost_runs_on_ray_rejects_a_lying_client_and_leaves_the_model_it_evaluated(home: Path) -> None:
    import ray

    from simulations.runner import simulate
    from tests.simulations import lying_booster_clients

    ray.cloudpickle.register_pickle_by_value(lying_booster_clients)  # the test module is not installed in the workers
    cfg = RunConfig(
        model="xgboost", dataset="breast_cancer", num_clients=2, min_clients=2, min_contributors=1, num_rounds=2,
        experiment="tests-xgb-ray", seed=3,
    )  # fmt: skip
    rd = simulate(cfg, client_app=lying_booster_clients.app)
    rounds = {e["round"]: e for e in rd.events("round")}
    assert sorted(rounds) == [0, 1, 2] and rd.events("end")[-1]["status"] == "completed"
    assert [rounds[r]["train"]["rejected-replies"] for r in (1, 2)] == [1, 1], "the liar, each round; never fatal"
    assert all("objective 'reg:logistic'" in e["reason"] for e in rd.events("rejected"))
    assert rounds[2]["central"]["accuracy"] > 0.85 > rounds[0]["central"]["accuracy"]

    estimator, meta = workspace.load_estimator(rd.path / workspace.ESTIMATOR_FILE)
    _, test = federated(rd.read_config(), 2)
    accuracy = float(np.mean(estimator.predict(test.X) == test.y))
    assert accuracy == pytest.approx(rounds[2]["central"]["accuracy"]), "the saved model is the one evaluated"
    assert meta["family"] == "xgboost" and meta["trees"] == 2, "2 rounds x the honest client's tree"
