"""Both DP levels end to end in a real Ray simulation: ledger, MLflow, budget stop, resume."""

from __future__ import annotations

import json

import pytest

from uaap import workspace
from uaap.config import RunConfig
from uaap.privacy.accountant import epsilon_of
from uaap.privacy.ledger import Ledger

EPS = [epsilon_of([(1.0, 0.5, k)], 1e-5) for k in (1, 2, 3)]  # 3.894, 5.377, 6.482


@pytest.mark.timeout(900)
def test_budget_stop_then_resume_continues_both_accountants(uaap_home):
    from simulations.runner import simulate
    from uaap.tracking import RUN_TAG, _mlflow

    cfg = RunConfig(
        num_clients=3,
        num_rounds=3,
        min_clients=2,
        local_epochs=1,
        fraction_train=0.5,  # Poisson: each client joins a round with probability 0.5
        dp_local=True,
        dp_target_epsilon=3.0,  # example level, planned over the 3 rounds: never binding below 6
        dp_central=True,
        dp_noise_multiplier=1.0,
        max_epsilon=6.0,  # user level: round 3 would take 5.377 -> 6.482
        central_eval=True,
    )
    rd = simulate(cfg)
    end = rd.events("end")[-1]
    assert end["status"] == "stopped"
    assert "round 3" in end["reason"] and "max-epsilon=6" in end["reason"]
    ledger = Ledger()
    assert [r.epsilon for r in ledger.releases(rd.run_id, level="user")] == pytest.approx(EPS[:2])
    assert rd.latest_checkpoint().round == 2

    # resume the same run with a larger budget: round 3 only, both accountants continue
    rd2 = simulate(cfg.replace(run_id=rd.run_id, max_epsilon=7.0))
    assert rd2.path == rd.path and rd.events("end")[-1]["status"] == "completed"
    users = ledger.releases(rd.run_id, level="user")
    assert [r.round for r in users] == [1, 2, 3]
    assert [r.epsilon for r in users] == pytest.approx(EPS)
    rounds = {e["round"]: e for e in rd.events("round") if e["round"] > 0}
    assert [rounds[r]["privacy"]["epsilon"] for r in (1, 2, 3)] == pytest.approx(EPS)

    # example level: the ledger names clients by the node id Flower authenticated, and a resumed simulation
    # draws new ones; each client's own (restarted) accountant still reaches the ledger: its last release is
    # accounted with the steps the client reports in total, so its true epsilon is there, never less
    examples = ledger.releases(rd.run_id, level="example")
    assert examples, "some client must have been sampled in 3 rounds of 3 clients at q=0.5"
    assert all(r.client.startswith("node-") for r in examples)
    finals = []
    for path in sorted((workspace.home() / "clients" / rd.run_id).glob("*/dpsgd.json")):
        history = json.loads(path.read_text())["history"]
        sigma, q = history[0][0], history[0][1]
        finals.append(epsilon_of([(sigma, q, sum(h[2] for h in history))], 1e-5))
    assert finals and all(e <= cfg.dp_target_epsilon + 1e-9 for e in finals)
    recorded = [r.epsilon for r in examples]
    for final in finals:
        assert any(x == pytest.approx(final, rel=1e-9) for x in recorded), (final, recorded)
    assert max(recorded) == pytest.approx(max(finals))
    by_node: dict[str, list[float]] = {}
    for r in examples:
        by_node.setdefault(r.client, []).append(r.epsilon)
    assert all(eps == sorted(eps) for eps in by_node.values())

    # MLflow got the privacy_ metrics of every round
    client = _mlflow().MlflowClient()
    exp = client.get_experiment_by_name(cfg.experiment)
    run = client.search_runs([exp.experiment_id], f"tags.`{RUN_TAG}` = '{rd.run_id}'")[0]
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "privacy_epsilon"))
    assert [s for s, _ in history] == [1, 2, 3]
    assert [v for _, v in history] == pytest.approx(EPS)
