"""The round loop's resume helpers, exactly: which layer gets which part of a checkpoint's state, the MLflow metrics
of a round line, and what a resumed run writes again (the committed round's line, the MLflow rows it lacks).

tests/server/test_federation.py kills a server between checkpoint and metrics and resumes it; these tests pin the
same helpers down value by value in milliseconds, so that each mutant of them (tests/mutate.py) is judged quickly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import FedAvg

from server.federation import _load_state, _recover, tracked_metrics
from strategies.wrapper import StrategyWrapper
from uaap import workspace


class _Layer(StrategyWrapper):
    """A wrapper with checkpointed state under ``state_key`` that remembers what it was given."""

    def __init__(self, strategy: Any, state_key: str) -> None:
        super().__init__(strategy)
        self.state_key = state_key
        self.loaded: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded.append(state)


class _Tracker:
    """MLflow's side of a run as the round loop sees it: which (metric, step) rows exist, what was logged."""

    def __init__(self, rows: set[tuple[str, int]]) -> None:
        self.rows = set(rows)
        self.logged: list[tuple[dict[str, float], int]] = []

    def has_step(self, key: str, step: int) -> bool:
        return (key, step) in self.rows

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((dict(metrics), step))
        self.rows |= {(k, step) for k in metrics}


def _rounds(rd: workspace.RunDir) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in ("kind", "time")} for e in rd.events("round")]


def test_each_stateful_layer_gets_its_own_part_and_old_checkpoints_feed_the_privacy_layer() -> None:
    def stack() -> tuple[_Layer, _Layer]:
        privacy = _Layer(FedAvg(), "privacy")
        return _Layer(privacy, "noise"), privacy

    outer, privacy = stack()
    _load_state(outer, {"noise": {"a": 1}, "privacy": {"b": 2}, "strategy": {"c": 3}, "round_log": {"round": 4}})
    assert outer.loaded == [{"a": 1}] and privacy.loaded == [{"b": 2}], "its own key wins over the old one"
    outer, privacy = stack()
    _load_state(outer, {"strategy": {"c": 3}})  # written before the DP wrappers were split
    assert privacy.loaded == [{"c": 3}] and outer.loaded == [], "only the privacy layer reads the old key"
    outer, privacy = stack()
    _load_state(outer, {"round_log": {"round": 1}})
    assert outer.loaded == [] and privacy.loaded == [], "a layer without state in the checkpoint starts fresh"


def test_a_round_line_becomes_mlflow_metrics_by_prefix() -> None:
    line = {
        "round": 3,
        "seconds": 2.5,
        "train": {"train-loss": 0.5},
        "evaluate": {"accuracy": 0.8},
        "central": {"accuracy": 0.7, "loss": 0.9},
        "privacy": {"epsilon": 1.5},
        "replies": 4,
        "failures": 1,
        "sampled": 5,
    }
    assert tracked_metrics(line) == {
        "train_train-loss": 0.5,
        "fed_accuracy": 0.8,
        "central_accuracy": 0.7,
        "central_loss": 0.9,
        "privacy_epsilon": 1.5,
        "round_seconds": 2.5,
        "clients": 4,
    }
    assert tracked_metrics({"round": 0, "central": {"accuracy": 0.1}}) == {"central_accuracy": 0.1}
    assert tracked_metrics({"round": 7}) == {}


def test_resume_writes_the_committed_round_once_and_only_the_mlflow_rows_missing(uaap_home: Path) -> None:
    rd = workspace.run_dir("resumed")
    rd.log_event("round", round=0, central={"accuracy": 0.5})
    rd.log_event("round", round=1, seconds=1.0, train={"train-loss": 1.0}, replies=2)
    rd.log_event("round", round=2)  # a line with nothing to track
    committed = {"round": 3, "seconds": 1.5, "train": {"train-loss": 0.8}, "replies": 2}
    tracker = _Tracker({("central_accuracy", 0)})  # MLflow has round 0's row; the queue lost round 1's
    _recover(rd, tracker, committed)
    assert _rounds(rd) == [
        {"round": 0, "central": {"accuracy": 0.5}},
        {"round": 1, "seconds": 1.0, "train": {"train-loss": 1.0}, "replies": 2},
        {"round": 2},
        committed,
    ]
    assert tracker.logged == [
        ({"train_train-loss": 1.0, "round_seconds": 1.0, "clients": 2}, 1),
        ({"train_train-loss": 0.8, "round_seconds": 1.5, "clients": 2}, 3),
    ]
    _recover(rd, tracker, committed)  # resumed again: everything is there
    assert len(_rounds(rd)) == 4 and len(tracker.logged) == 2
    _recover(rd, None, {"round": 4, "seconds": 0.5})  # no tracker: the line is still written
    assert _rounds(rd)[-1] == {"round": 4, "seconds": 0.5}
    _recover(rd, None, None)  # no committed round (a checkpoint from before round logs were kept)
    assert len(_rounds(rd)) == 5


def test_a_committed_round_already_written_is_not_written_again(uaap_home: Path) -> None:
    rd = workspace.run_dir("whole")
    rd.log_event("round", round=1, seconds=1.0, replies=2)
    rd.log_event("round", round=2, seconds=2.0, replies=2)
    tracker = _Tracker({("round_seconds", 1), ("round_seconds", 2)})
    _recover(rd, tracker, {"round": 1, "seconds": 9.0, "replies": 1})
    assert _rounds(rd) == [{"round": 1, "seconds": 1.0, "replies": 2}, {"round": 2, "seconds": 2.0, "replies": 2}]
    assert tracker.logged == []
