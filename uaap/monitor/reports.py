"""The ``uaap fairness`` and ``uaap monitor`` reports of a run: computed in full, then written (JSON and PNG in the
run folder's ``monitor/``), logged to the run's MLflow run and to its ``metrics.jsonl``.

Everything that can fail on bad input (a missing column, one group, different columns) fails before the first
file is written, and each file is written to a temporary name and renamed, so a failed command leaves nothing
half-written.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from uaap.monitor.drift import Thresholds
    from uaap.monitor.runmodel import RunModel

MONITOR_DIR = "monitor"


@dataclass(frozen=True)
class Written:
    """A report and the files it went to."""

    report: dict[str, Any]
    files: list[Path]


def read_table(source: str) -> pd.DataFrame:
    """The rows of ``source`` (a file, URL or database), column names as text."""
    from uaap.data.loaders import read_frame

    frame = read_frame(source)
    frame.columns = [str(c) for c in frame.columns]
    return frame


def safe_name(text: str) -> str:
    """``text`` as a file-name and metric-name part (letters, digits, ``._-``)."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "column"


def publish(model: RunModel, outputs: Mapping[Path, Any], metrics: Mapping[str, float], event: str,
             values: Mapping[str, Any]) -> list[Path]:  # fmt: skip
    """Write each output (``Path -> callable(tmp_path)``) through a temporary name, then log to MLflow."""
    from uaap.tracking import Tracker

    written = []
    for path, write in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        write(tmp)
        tmp.replace(path)
        written.append(path)
    step = len(model.run.events(event))
    model.run.log_event(event, **values)
    tracker = Tracker(model.run.read_config().experiment, model.run.run_id, kind="central")
    try:
        tracker.log_metrics(metrics, step=step)
        for path in written:
            tracker.log_artifact(str(path))
    finally:
        tracker.finish()
    return written


# ---- fairness ---------------------------------------------------------------------------------------------------


def fairness(
    run_id: str,
    data: str,
    sensitive: str,
    *,
    positive: str = "",
    mitigate: str = "",
    seed: int = 0,
    trust_pickle: bool = False,
) -> Written:
    """Audit run ``run_id`` on the rows of ``data`` grouped by ``sensitive``; ``mitigate`` names a fairlearn
    constraint (demographic_parity, equalized_odds) for a ThresholdOptimizer before/after table."""
    from uaap.monitor import fairness as fair
    from uaap.monitor.runmodel import load_run_model

    model = load_run_model(run_id, trust_pickle=trust_pickle)
    frame = read_table(data)
    audit = fair.audit_rows(model, frame, sensitive)
    chosen = fair.choose_positive(audit.classes, positive)
    result = fair.report(audit, chosen)
    result.update(run_id=run_id, data=data, sensitive=sensitive, rows=len(frame))
    mitigation = fair.mitigate(audit, chosen, constraint=mitigate, seed=seed) if mitigate else None
    if mitigation is not None:
        result["mitigation"] = mitigation
    stem = model.run.path / MONITOR_DIR / f"fairness-{safe_name(sensitive)}"
    title = f"run {run_id}: fairness by {sensitive!r} on {Path(data).name} ({len(frame)} rows)"
    outputs: dict[Path, Any] = {
        stem.with_suffix(".json"): lambda p: fair.write_json(result, p),
        stem.with_suffix(".png"): lambda p: fair.plot(result, p, title),
    }
    if mitigation is not None:
        note = f"held-out half: bars before, marks after ThresholdOptimizer ({mitigation['constraint']})"
        outputs[stem.with_name(stem.name + "-mitigation.png")] = lambda p: fair.plot(
            mitigation["before"], p, f"{title}\n{note}", mitigation["after"]
        )
    key = f"fairness.{safe_name(sensitive)}"
    metrics = {f"{key}.{m}": float(result[m]) for m in fair.SUMMARY}
    if mitigation is not None:
        metrics.update({f"{key}.mitigated.{m}": float(mitigation["after"][m]) for m in fair.SUMMARY})
    summary = {m: result[m] for m in fair.SUMMARY}
    files = publish(model, outputs, metrics, "fairness", {"sensitive": sensitive, "data": data, **summary})
    return Written(result, files)


# ---- drift ------------------------------------------------------------------------------------------------------


def training_rows(model: RunModel) -> pd.DataFrame:
    """The rows run ``model`` was trained on (its table's train split, as training split it)."""
    from uaap.data.core import check_target
    from uaap.data.tables import read_config_table, split_rows

    cfg = model.run.read_config()
    if cfg.dataset != "csv" or not cfg.data_path:
        raise DataError(f"run {model.run.run_id!r} has no table to read its training rows from; give --reference-data")
    try:
        raw = read_config_table(cfg)
    except (DataError, OSError) as exc:
        raise DataError(
            f"the training table of run {model.run.run_id!r} ({cfg.data_path}) cannot be read here ({exc}); give the "
            "reference rows with --reference-data"
        ) from exc
    task = check_target(raw.frame[raw.target], raw.target, cfg.task)
    train, _ = split_rows(raw, cfg.test_fraction, cfg.seed, task)
    return raw.subset(train).frame


def monitor(
    run_id: str,
    data: str,
    *,
    reference_data: str = "",
    thresholds: Thresholds | None = None,
    trust_pickle: bool = False,
) -> Written:
    """Drift of ``data``'s rows from run ``run_id``'s training rows (or ``reference_data``), per feature and of the
    model's predictions."""
    from uaap.monitor import drift
    from uaap.monitor.fairness import write_json
    from uaap.monitor.runmodel import load_run_model

    model = load_run_model(run_id, trust_pickle=trust_pickle)
    reference = read_table(reference_data) if reference_data else training_rows(model)
    current = read_table(data)
    drift.check_columns(list(reference.columns), list(current.columns), ignore=[model.target])
    plans = drift.monitored_plan(model.preprocessor, model.task)
    reference = drift.with_predictions(reference, model.predict(reference))
    current = drift.with_predictions(current, model.predict(current))
    result = drift.federated_drift([reference], [current], plans, thresholds)
    result.update(run_id=run_id, data=data, reference=reference_data or "the run's training rows")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem = model.run.path / MONITOR_DIR / f"drift-{stamp}"
    title = f"run {run_id}: drift of {Path(data).name} ({len(current)} rows) from {result['reference']}"
    outputs: dict[Path, Any] = {
        stem.with_suffix(".json"): lambda p: write_json(result, p),
        stem.with_suffix(".png"): lambda p: drift.plot(result, p, title),
    }
    metrics: dict[str, float] = {"drift.features_drifted": float(len(result["drifted"]))}
    rows = dict(result["features"], **({"prediction": result["prediction"]} if result["prediction"] else {}))
    for name, row in rows.items():
        for stat in ("psi", "ks", "wasserstein_std", "cramers_v"):
            if stat in row:
                metrics[f"drift.{safe_name(name)}.{stat}"] = float(row[stat])
    event = {"data": data, "drifted": result["drifted"], "prediction_drifted": result["prediction_drifted"]}
    files = publish(model, outputs, metrics, "drift", event)
    return Written(result, files)
