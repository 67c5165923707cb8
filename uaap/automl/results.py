"""What a search leaves: its result and its leaderboard, shared by the model search (uaap.automl.search) and the
forecaster search (uaap.forecast.automl), which the model search hands forecasting runs to."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uaap import workspace


@dataclass(frozen=True)
class AutoMLResult:
    """Everything a search produced."""

    run_dir: workspace.RunDir
    leaderboard: list[dict[str, Any]]
    best: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    test_metrics: dict[str, float]
    model_path: Path
    metric: str
    mode: str
    search_seconds: float
    trials: int
    errors: int
    # each family's default configuration: its CV score as a trial (None if it did not finish) and held-out score
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    ensembles: dict[str, Any] | None = None  # uaap.automl.ensembles.ensemble_scores, when asked for


COLUMNS = ("rank", "trial", "family", "score", "std", "folds", "status", "seconds", "params", "error")


def write_leaderboard(
    rd: workspace.RunDir, board: list[dict[str, Any]], cols: tuple[str, ...] = COLUMNS, events: bool = True
) -> None:
    """The ranked trials as leaderboard.csv (``cols``) and .json in the run folder, and one ``trial`` event each."""
    import csv

    with open(rd.path / "leaderboard.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(cols)
        for row in board:
            writer.writerow([json.dumps(row[c], sort_keys=True) if c == "params" else row[c] for c in cols])
    (rd.path / "leaderboard.json").write_text(json.dumps(board, indent=1, default=str) + "\n")
    for row in board if events else ():
        rd.log_event("trial", **{k: row[k] for k in ("trial", "family", "params", "score", "folds", "status")})
