"""Federated HPO: real Flower simulations inside Ray Tune trials on one Ray cluster (tiny sizes)."""

from __future__ import annotations

import pytest

from uaap.config import RunConfig
from uaap.errors import ConfigError


def test_space_and_settings():
    from simulations.tuning import TuneFederatedSettings, apply, clients_per_round, default_params

    base = RunConfig(num_clients=5, min_clients=2, fraction_train=0.6)
    assert default_params(base) == ("learning_rate", "local_epochs", "proximal_mu", "clients_per_round")
    assert "dp_clip_norm" in default_params(base.replace(dp_local=True))
    assert "proximal_mu" not in default_params(base.replace(strategy="fedavg"))
    assert clients_per_round(base) == 3
    assert apply(base, {"clients_per_round": 4, "learning_rate": 0.2}).fraction_train == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="learning-rate"):
        apply(base, {"learning_rate": -1.0})
    with pytest.raises(ConfigError, match="cannot tune 'momentum'"):
        TuneFederatedSettings(params=("momentum",))
    with pytest.raises(ConfigError, match="time budget"):
        TuneFederatedSettings(time_budget_s=0)
    assert TuneFederatedSettings(metric="r2").metric == "r2"  # a regression search optimises R2 (or an error)
    with pytest.raises(ConfigError, match="metric='auc' is not supported; choose one of: accuracy, f1_macro, loss, r2"):
        TuneFederatedSettings(metric="auc")


@pytest.mark.slow
def test_federated_search_runs_real_simulations_and_releases_ray(tmp_path, monkeypatch):
    import mlflow
    import ray
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    from simulations.tuning import TuneFederatedSettings, actor_pool_size, tune_federated
    from uaap import workspace
    from uaap.cluster import connect
    from uaap.tracking import tracking_uri

    monkeypatch.setenv("UAAP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    connect(num_cpus=2)
    try:
        # Our reservation is Flower's own pool size (the no-deadlock condition).
        assert actor_pool_size(1.0) == pool_size_from_resources({"num_cpus": 1.0}) == 2
        base = RunConfig(
            dataset="digits", num_clients=3, min_clients=2, num_rounds=1, local_epochs=1, partition="iid", seed=3
        )
        settings = TuneFederatedSettings(num_trials=2, time_budget_s=400, search="random", params=("learning_rate",))
        result = tune_federated(base, settings)
        assert result.resources_released  # every CPU free again: placement groups and client actors gone
        assert ray.is_initialized()  # attached to our Ray: not shut down by the search
    finally:
        ray.shutdown()
    board = result.leaderboard
    assert len(board) == 2 and all(r["status"] == "completed" for r in board)
    default = result.default
    assert default is not None and default["params"] == {"learning_rate": base.learning_rate}
    for row in board:
        # Independent source: the simulation's own metrics.jsonl (written by the server loop).
        rd = workspace.existing_run(row["sim_run_id"])
        last = [e for e in rd.events("round") if e["round"] > 0][-1]
        assert row["score"] == pytest.approx(last["central"]["accuracy"])
        assert rd.read_config().learning_rate == pytest.approx(row["params"]["learning_rate"])
        assert rd.events("end")[-1]["status"] == "completed"
    assert result.best["score"] == max(r["score"] for r in board)
    client = mlflow.MlflowClient(tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name("uaap").experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get("uaap.trial_of") == result.run_dir.run_id]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["uaap.sim_run_id"] for c in children} == {r["sim_run_id"] for r in board}
