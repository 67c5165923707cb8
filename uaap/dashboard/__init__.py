"""The privacy-budget dashboard (Streamlit): data access here, the page in ``app.py``.

``uaap dashboard`` serves ``app.py`` with ``streamlit run``. The page reads the privacy ledger (epsilon
per round, per subject) and each run's ``metrics.jsonl`` (accuracy; MLflow when the run folder is not
local), and re-reads them every few seconds, so it follows a run that is going.
"""

from __future__ import annotations

from typing import Any

from uaap.privacy.ledger import EXAMPLE, USER, Budget, Ledger

WARN_AT = 0.8


def epsilon_series(ledger: Ledger, run_id: str) -> list[dict[str, Any]]:
    """Rows ``{round, subject, level, epsilon}``: the user-level curve and one curve per client."""
    rows = []
    for r in ledger.releases(run_id):
        subject = "user level" if r.level == USER else r.client
        rows.append({"round": r.round, "subject": subject, "level": r.level, "epsilon": r.epsilon})
    return rows


def budget_status(ledger: Ledger, run_id: str) -> dict[str, Any]:
    """Headline epsilon (user level if central DP, else the largest client's), budget used and remaining."""
    budget = ledger.budget(run_id)
    user = [r.epsilon for r in ledger.releases(run_id, level=USER)]
    latest: dict[str, float] = {}
    for r in ledger.releases(run_id, level=EXAMPLE):
        latest[r.client] = r.epsilon
    headline = user[-1] if user else (max(latest.values()) if latest else 0.0)
    max_eps = budget.max_epsilon if budget else 0.0
    used = headline / max_eps if max_eps > 0 else None
    return {
        "epsilon": headline,
        "level": "user" if user else "example",
        "max_epsilon": max_eps,
        "used": used,
        "remaining": max(max_eps - headline, 0.0) if max_eps > 0 else None,
        "delta": budget.delta if budget else None,
        "accountant": budget.accountant if budget else None,
        "rounds": max((r.round for r in ledger.releases(run_id)), default=0),
        "state": "exhausted" if used is not None and used >= 1.0 else "warning" if used and used >= WARN_AT else "ok",
    }


def final_accuracy(run_id: str) -> float | None:
    """The run's last central (else federated) accuracy: ``metrics.jsonl`` in the workspace, else MLflow."""
    from uaap import workspace

    rd = workspace.run_dir(run_id)
    acc = None
    for event in rd.events("round"):
        value = event.get("central", {}).get("accuracy", event.get("evaluate", {}).get("accuracy"))
        if value is not None:
            acc = float(value)
    if acc is not None or rd.metrics_file.is_file():
        return acc
    try:  # the run folder lives elsewhere: ask MLflow
        from uaap.tracking import RUN_TAG, _mlflow

        client = _mlflow().MlflowClient()
        found = client.search_runs(
            [e.experiment_id for e in client.search_experiments()], f"tags.`{RUN_TAG}` = '{run_id}'", max_results=1
        )
        metrics = found[0].data.metrics if found else {}
        value = metrics.get("central_accuracy", metrics.get("fed_accuracy"))
        return None if value is None else float(value)
    except Exception:  # no MLflow store: the chart just leaves the run out
        return None


def accuracy_vs_epsilon(ledger: Ledger, runs: list[Budget] | None = None) -> list[dict[str, Any]]:
    """One row per run with a known accuracy: ``{run_id, epsilon, level, accuracy}``."""
    rows = []
    for b in runs if runs is not None else ledger.runs():
        acc = final_accuracy(b.run_id)
        status = budget_status(ledger, b.run_id)
        if acc is not None and status["rounds"]:
            rows.append({"run_id": b.run_id, "epsilon": status["epsilon"], "level": status["level"], "accuracy": acc})
    return rows
