"""The ``uaap explain`` report of a run: SHAP values computed in full, then written (JSON and PNG plots in the run
folder's ``explain/``) and logged to the run's MLflow run and ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from uaap.monitor.reports import Written, publish, read_table, safe_name

EXPLAIN_DIR = "explain"


def explain_run(
    run_id: str,
    data: str,
    *,
    target_class: str = "",
    row: int = 0,
    max_rows: int = 500,
    background_rows: int = 100,
    seed: int = 0,
    trust_pickle: bool = False,
    explainer: str = "auto",
) -> Written:
    """Explain run ``run_id``'s model on the rows of ``data`` (at most ``max_rows``, drawn at random beyond) with
    ``explainer`` (:data:`uaap.explain.shapley.EXPLAINERS`; auto: the one that fits the model)."""
    from uaap.explain.shapley import check_explainer, check_row, explain, plots, summary
    from uaap.monitor.fairness import write_json
    from uaap.monitor.runmodel import load_run_model

    model = load_run_model(run_id, trust_pickle=trust_pickle)
    check_explainer(model, explainer)  # before any row is read
    frame = read_table(data)
    note = ""
    if len(frame) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(frame), max_rows, replace=False))
        note = f"{max_rows} of {len(frame)} rows drawn at random (--max-rows)"
        frame = frame.iloc[keep].reset_index(drop=True)
    check_row(row, len(frame))
    result = explain(model, frame, target_class=target_class, background_rows=background_rows, seed=seed,
                     explainer_name=explainer)  # fmt: skip
    report: dict[str, Any] = summary(result, frame, row)
    report.update(run_id=run_id, data=data, rows_note=note)
    folder = model.run.path / EXPLAIN_DIR
    title = f"run {run_id} on {Path(data).name} ({len(frame)} rows)"
    outputs: dict[Path, Any] = {folder / "shap.json": lambda p: write_json(report, p)}
    outputs.update({folder / name: write for name, write in plots(result, frame, row, folder, title).items()})
    metrics = {f"shap.{safe_name(c)}.mean_abs": v for c, v in report["mean_abs_shap"].items()}
    event = {"data": data, "explainer": result.explainer, "output": result.output, "ranking": report["ranking"][:10]}
    files = publish(model, outputs, metrics, "explain", event)
    return Written(report, files)
