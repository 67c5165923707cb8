"""Continual training (issue 15 item 5): a second phase starts from the first's final model on new data, and its
privacy ledger goes on from the first's accountants, checked against Opacus' RDPAccountant over both phases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from uaap import workspace
from uaap.config import RunConfig
from uaap.errors import ConfigError, WorkspaceError

pytestmark = pytest.mark.slow  # two Ray simulations, once for the module

PHASE1 = RunConfig(
    dataset="breast_cancer",
    model="logreg",
    num_clients=2,
    min_clients=2,
    num_rounds=1,
    local_epochs=1,
    fraction_train=1.0,
    dp_central=True,
    dp_noise_multiplier=1.0,
    dp_local=True,
    dp_target_epsilon=3.0,
    central_eval=True,
)
# new data: another draw of the rows (seed), more noise at the user level, more rounds
PHASE2 = PHASE1.replace(seed=7, dp_noise_multiplier=1.5, num_rounds=2)


def _rdp(history: list[Any], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [tuple(h) for h in history]
    return float(acc.get_epsilon(delta=delta))


@pytest.fixture(scope="module")
def phases(module_home: Path) -> tuple[workspace.RunDir, workspace.RunDir]:
    from simulations.runner import simulate

    first = simulate(PHASE1)
    second = simulate(PHASE2.replace(continue_from=first.run_id))
    return first, second


@pytest.mark.timeout(600)
def test_the_ledger_goes_on_across_phases(phases: tuple[workspace.RunDir, workspace.RunDir]) -> None:
    from uaap.privacy.ledger import Ledger

    first, second = phases
    assert second.events("end")[-1]["status"] == "completed"
    ledger = Ledger()
    delta = PHASE1.dp_delta
    # user level: 1 round at sigma 1, then 2 at sigma 1.5, all clients every round (q = 1)
    users = ledger.releases(second.run_id, level="user")
    assert [r.round for r in users] == [1, 2]
    both = _rdp([(1.0, 1.0, 1), (1.5, 1.0, 2)], delta)  # one accountant over both phases' releases
    print(f"continual ledger: user epsilon {users[-1].epsilon:.12g}, one accountant over both phases {both:.12g}")
    assert users[-1].epsilon == pytest.approx(both, rel=1e-12)
    assert users[-1].epsilon > ledger.releases(first.run_id, level="user")[-1].epsilon
    assert second.events("round")[-1]["privacy"]["user_epsilon"] == pytest.approx(users[-1].epsilon)
    # example level: the clients' own DP-SGD histories (their files) go on across phases. The ledger names a client
    # by its node id, drawn afresh in a new simulation, so the server charges each phase-2 client the steps it
    # reports now after the parent client history that makes its epsilon largest: an upper bound of its own
    histories = {}
    for part in ("partition-0", "partition-1"):
        one = json.loads((workspace.home() / "clients" / first.run_id / part / "dpsgd.json").read_text())["history"]
        two = json.loads((workspace.home() / "clients" / second.run_id / part / "dpsgd.json").read_text())["history"]
        assert two[: len(one)] == one and len(two) > len(one)  # the client's own accountant went on
        histories[part] = (one, two[len(one) :])
    parents = [one for one, _ in histories.values()]

    def charged(parent: list[Any], one: list[Any], now: list[Any]) -> float:  # the client's total steps all count
        extra = sum(h[2] for h in one) - sum(h[2] for h in parent)
        return _rdp(parent + now + ([[*now[-1][:2], extra]] if extra > 0 else []), delta)

    expected = {part: max(charged(p, one, now) for p in parents) for part, (one, now) in histories.items()}
    last = {r.client: r.epsilon for r in ledger.releases(second.run_id, level="example")}
    assert sorted(last.values()) == pytest.approx(sorted(expected.values()), rel=1e-12)
    own = {part: _rdp(one + now, delta) for part, (one, now) in histories.items()}  # each client's own accountant
    assert all(expected[part] >= own[part] - 1e-12 for part in own)
    assert min(own.values()) > max(r.epsilon for r in ledger.releases(first.run_id, level="example"))


def test_phase_two_starts_from_phase_one_weights(phases: tuple[workspace.RunDir, workspace.RunDir]) -> None:
    from flwr.app import Array, ArrayRecord

    from server.federation import central_evaluator, initial_arrays
    from uaap.tracking import RUN_TAG, _mlflow

    first, second = phases
    cfg2 = second.read_config()
    final = first.latest_checkpoint()
    assert final is not None and final.round == PHASE1.num_rounds
    evaluate_fn = central_evaluator(cfg2, cfg2.num_clients)
    parent = evaluate_fn(0, ArrayRecord({k: Array(v) for k, v in final.arrays.items()}))
    seeded = evaluate_fn(0, initial_arrays(cfg2))
    round0 = next(e for e in second.events("round") if e["round"] == 0)["central"]
    assert round0["loss"] == pytest.approx(float(parent["loss"]), abs=1e-12)
    assert abs(round0["loss"] - float(seeded["loss"])) > 1e-3  # a seeded start would have been told apart
    cont = second.events("continue")[-1]
    assert cont["parent"] == first.run_id and cont["parent_round"] == PHASE1.num_rounds and cont["privacy"]
    # lineage in MLflow: the param and the tags with the parent's totals
    client = _mlflow().MlflowClient()
    exp = client.get_experiment_by_name(cfg2.experiment)
    run = client.search_runs([exp.experiment_id], f"tags.`{RUN_TAG}` = '{second.run_id}'")[0]
    assert run.data.params["continue-from"] == first.run_id
    assert run.data.tags["uaap.parent_run"] == first.run_id
    assert float(run.data.tags["uaap.parent_user_epsilon"]) == pytest.approx(_rdp([(1.0, 1.0, 1)], 1e-5), rel=1e-5)


def test_a_parent_that_cannot_go_on_is_refused_by_name(phases: tuple[workspace.RunDir, workspace.RunDir]) -> None:
    from server.continual import check_shapes, load_parent
    from server.federation import initial_arrays

    first, _ = phases
    base = PHASE2.replace(continue_from=first.run_id)
    with pytest.raises(ConfigError, match=r"model='mlp' \(parent: 'logreg'\)"):
        load_parent(base.replace(model="mlp"))
    with pytest.raises(ConfigError, match="dataset='wine'"):
        load_parent(base.replace(dataset="wine"))
    with pytest.raises(ConfigError, match="dp-central on; keep it on"):
        load_parent(base.replace(dp_central=False))
    with pytest.raises(ConfigError, match="--dp-accountant rdp"):
        load_parent(base.replace(dp_accountant="prv"))
    with pytest.raises(WorkspaceError, match="'nope' does not exist"):
        load_parent(base.replace(continue_from="nope"))
    with pytest.raises(ConfigError, match="resume it with --resume"):
        load_parent(base.replace(run_id=first.run_id))
    parent = load_parent(base)
    assert parent is not None
    wine = {k: v.numpy() for k, v in initial_arrays(RunConfig(dataset="wine", model="logreg")).items()}
    with pytest.raises(ConfigError, match="has shape"):
        check_shapes(parent.run_id, wine, parent.arrays)


def test_monitor_says_when_drift_warrants_it(phases: tuple[workspace.RunDir, workspace.RunDir]) -> None:
    import shutil

    from uaap.monitor.continual import retrain_hint

    first, _ = phases
    assert retrain_hint(first.run_id, "new.csv", []) is None
    # a run on a bundled data set cannot read new rows: retrain
    assert "retrain on the new rows" in (retrain_hint(first.run_id, "new.csv", ["income", "plan"]) or "")
    # the same run on a table: the command that continues it, with its settings file
    table = workspace.run_dir("on-a-table")
    shutil.copytree(first.path, table.path)
    table.write_config(first.read_config().replace(dataset="csv", data_path="old.csv", target="label"))
    hint = retrain_hint("on-a-table", "new rows.csv", ["income", "plan"])
    assert hint == (
        "2 feature(s) drifted (income, plan): continue training on the new rows with `uaap simulate --config "
        f"{table.path / 'config.toml'} --continue-from on-a-table --data 'new rows.csv'`"
    )
