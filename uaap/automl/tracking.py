"""MLflow for searches: one parent run per search, one child run per trial, all written by the driver.

Trials run in Ray workers; they never touch MLflow. A Tune callback (driver process) opens a child
run when a trial starts, logs each reported result and closes it with the trial's status, so the
sqlite store has a single writer and the experiment exists before any worker starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("uaap.automl")

PARENT_TAG = "mlflow.parentRunId"
TRIAL_OF_TAG = "uaap.trial_of"


class SearchTracker:
    """The parent run (a :class:`uaap.tracking.Tracker`) and its children."""

    def __init__(self, experiment: str, run_id: str, kind: str, child_kind: str) -> None:
        import mlflow

        from uaap.tracking import Tracker, ensure_experiment, tracking_uri

        self.experiment_id = ensure_experiment(experiment)
        self.parent = Tracker(experiment, run_id, kind=kind)
        self.run_id = run_id
        self.child_kind = child_kind
        self._client = mlflow.MlflowClient(tracking_uri())

    @property
    def parent_mlflow_id(self) -> str:
        """MLflow id of the parent run."""
        return str(self.parent.mlflow_run_id)

    def start_child(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> str | None:
        """Open a child run (RUNNING) with its parameters; None when MLflow is unavailable."""
        from mlflow.entities import Param

        try:
            run = self._client.create_run(
                self.experiment_id,
                run_name=name,
                tags={
                    PARENT_TAG: self.parent_mlflow_id,
                    TRIAL_OF_TAG: self.run_id,
                    "uaap.kind": self.child_kind,
                    **(tags or {}),
                },
            )
            batch = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
            for start in range(0, len(batch), 100):
                self._client.log_batch(run.info.run_id, params=batch[start : start + 100])
            return str(run.info.run_id)
        except Exception as exc:  # tracking must never take a search down
            log.warning("MLflow: could not open the child run for %s: %s", name, exc)
            return None

    def log_child(self, child: str | None, metrics: Mapping[str, Any], step: int) -> None:
        """Log numeric metrics of a child run at ``step``."""
        if child is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, int | float)]
        try:
            if batch:
                self._client.log_batch(child, metrics=batch)
        except Exception as exc:
            log.warning("MLflow: could not log to child run %s: %s", child, exc)

    def finish_child(self, child: str | None, status: str, tags: Mapping[str, str] | None = None) -> None:
        """Tag and close a child run (FINISHED, FAILED or KILLED)."""
        if child is None:
            return
        try:
            for key, value in (tags or {}).items():
                self._client.set_tag(child, key, str(value)[:5000])
            self._client.set_terminated(child, status=status)
        except Exception as exc:
            log.warning("MLflow: could not close child run %s: %s", child, exc)
