"""MLflow tracking, always from one process (the server or the central trainer).

The store is sqlite in the workspace unless ``MLFLOW_TRACKING_URI`` says otherwise, and artifacts of the
experiments UAAP creates go beside a sqlite store (``<workspace>/mlartifacts``): MLflow would otherwise put them
in ``./mlruns`` of whatever directory the command ran in. Schema and experiment are created before any worker
starts: concurrent first use of a fresh sqlite store was
measured to crash writers, and concurrent ``set_experiment`` silently logs losers into "Default".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uaap import workspace

if TYPE_CHECKING:
    from mlflow import MlflowClient

RUN_TAG = "uaap.run_id"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` or ``sqlite:///<workspace>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace.home() / 'mlflow.db'}"


def _mlflow() -> Any:
    import mlflow

    from uaap import quiet

    quiet.python_warnings()  # SQLAlchemy's deprecation of what MLflow's sqlite store does
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def artifact_root(uri: str | None = None) -> str | None:
    """Where new experiments keep their artifacts: ``mlartifacts/`` beside a sqlite store (the workspace's by
    default); None for a tracking server or another database, whose own default applies."""
    uri = uri or tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
    return (db.parent / "mlartifacts").as_uri()


def ensure_experiment(name: str) -> str:
    """Create the store's schema and the experiment if needed; return the experiment id."""
    mlflow = _mlflow()
    client: MlflowClient = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifact_root()))


class Tracker:
    """One MLflow run bound to one UAAP run id; reopened (not duplicated) on resume."""

    def __init__(self, experiment: str, run_id: str, kind: str) -> None:
        self._mlflow = _mlflow()
        self._client = self._mlflow.MlflowClient()
        exp_id = ensure_experiment(experiment)
        found = self._client.search_runs([exp_id], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'", max_results=1)
        if found:
            self.mlflow_run_id = found[0].info.run_id
            self._client.update_run(self.mlflow_run_id, status="RUNNING")
        else:
            run = self._client.create_run(exp_id, run_name=run_id, tags={RUN_TAG: run_id, "uaap.kind": kind})
            self.mlflow_run_id = run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters once (values already logged are left alone)."""
        from mlflow.entities import Param

        existing = self._client.get_run(self.mlflow_run_id).data.params
        batch = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for start in range(0, len(batch), 100):
            self._client.log_batch(self.mlflow_run_id, params=batch[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log numeric metrics at ``step`` (the round or epoch), asynchronously; :meth:`finish` flushes.

        A synchronous sqlite write was measured at 7-65 ms per round on a busy machine, 2-10% of a
        simulated round; the queue takes it off the round loop.
        """
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, int | float)]
        if batch:
            self._client.log_batch(self.mlflow_run_id, metrics=batch, synchronous=False)

    def has_step(self, key: str, step: int) -> bool:
        """Whether metric ``key`` was recorded at ``step`` (a resumed run checks before writing a round again)."""
        return any(m.step == step for m in self._client.get_metric_history(self.mlflow_run_id, key))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Attach tags to the run."""
        for key, value in tags.items():
            self._client.set_tag(self.mlflow_run_id, key, value)

    def log_artifact(self, path: str) -> None:
        """Copy a file into the run's artifacts."""
        self._client.log_artifact(self.mlflow_run_id, path)

    def finish(self, status: str = "FINISHED") -> None:
        """Flush queued metrics and close the run (FINISHED, FAILED or KILLED)."""
        self._mlflow.flush_async_logging()
        self._client.set_terminated(self.mlflow_run_id, status=status)
