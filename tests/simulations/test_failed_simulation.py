"""A simulation that did nothing fails loudly: every round without an accepted result, a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from uaap.config import RunConfig
from uaap.errors import RunFailedError


@pytest.mark.slow
def test_a_simulation_whose_clients_all_crash_fails_with_their_reason(uaap_home: Path) -> None:
    import ray.cloudpickle

    from simulations.runner import simulate
    from tests.simulations import broken_clients
    from uaap import workspace

    ray.cloudpickle.register_pickle_by_value(broken_clients)  # the test module is not installed in the workers
    cfg = RunConfig(run_id="all-crash", num_clients=2, num_rounds=2, local_epochs=1, experiment="tests-failed")
    with pytest.raises(RunFailedError, match="no client result was accepted") as err:
        simulate(cfg, client_app=broken_clients.app)
    assert "this client always crashes" in str(err.value)
    end = workspace.run_dir("all-crash").events("end")[-1]
    assert end["status"] == "failed"


def test_uaap_exits_1_when_a_run_fails_and_2_on_bad_input(
    uaap_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import simulations.commands
    from uaap.cli import main

    def failed(*args: object, **kwargs: object) -> None:
        raise RunFailedError("run x failed: no client result was accepted in any of its 2 round(s)")

    monkeypatch.setattr(simulations.commands, "simulate_with_progress", failed)
    assert main(["simulate", "--num-rounds", "2"]) == 1
    assert "uaap: error: run x failed" in capsys.readouterr().err
    assert main(["simulate", "--num-rounds", "0"]) == 2
