"""A run that did nothing is not completed: failed rounds, failed runs and their causes in the run's events."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.federation import run_federation
from tests.flower_helpers import LocalGrid
from uaap import workspace
from uaap.config import RunConfig
from uaap.errors import DataError, RunFailedError

CFG = RunConfig(num_clients=2, min_clients=2, num_rounds=2, local_epochs=1, experiment="tests-failed", seed=3)


def test_rounds_without_an_accepted_result_fail_the_run(uaap_home: Path) -> None:
    grid = LocalGrid(2, silent=frozenset({1, 2}))  # nobody ever answers
    with pytest.raises(RunFailedError, match="no client result was accepted in any of its 2 round"):
        run_federation(grid, CFG.replace(run_id="silent", round_timeout=0.3), num_partitions=2)
    rd = workspace.run_dir("silent")
    rounds = [e for e in rd.events("round") if e["round"] > 0]
    assert [(e["round"], e["failed"], e["replies"]) for e in rounds] == [(1, True, 0), (2, True, 0)]
    end = rd.events("end")[-1]
    assert end["status"] == "failed" and "0 of 2 replied" in end["reason"]
    assert not rd.model_file.exists(), "a run that learned nothing publishes no model"


def test_one_failed_round_among_good_ones_keeps_the_run(uaap_home: Path) -> None:
    class FlakyGrid(LocalGrid):
        """Nobody answers in round 1; everybody afterwards."""

        def push_messages(self, messages: list) -> list[str]:
            self.silent = frozenset(self.nodes) if len(self.pushed) < 2 else frozenset()
            return super().push_messages(messages)

    rd = run_federation(FlakyGrid(2), CFG.replace(run_id="flaky", round_timeout=0.3), num_partitions=2)
    rounds = [e for e in rd.events("round") if e["round"] > 0]
    assert [e["failed"] for e in rounds] == [True, False]
    assert rd.events("end")[-1]["status"] == "completed"


def test_a_failure_before_the_first_round_ends_the_run_with_its_cause(uaap_home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    cfg = CFG.replace(run_id="no-data", dataset="csv", data_path=str(missing), target="label")
    with pytest.raises(DataError):
        run_federation(LocalGrid(2), cfg, num_partitions=2)
    end = workspace.run_dir("no-data").events("end")[-1]
    assert end["status"] == "failed" and "nowhere.csv" in end["reason"], end
