"""Federated XGBoost on Flower's Ray backend (``uaap simulate --model xgboost``): the real actors, no mocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uaap import workspace
from uaap.config import RunConfig
from uaap.data import federated


@pytest.mark.slow
def test_xgboost_runs_on_ray_rejects_a_lying_client_and_leaves_the_model_it_evaluated(uaap_home: Path) -> None:
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
