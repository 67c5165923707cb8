"""Human-facing results: round tables and accuracy plots from a run's ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from uaap.workspace import RunDir


def round_rows(rd: RunDir) -> list[dict[str, Any]]:
    """One row per round (last occurrence wins when a resumed run repeated a round)."""
    rows: dict[int, dict[str, Any]] = {}
    for event in rd.events("round"):
        rows[int(event["round"])] = event
    return [rows[r] for r in sorted(rows)]


def summary_table(rd: RunDir, central_accuracy: float | None = None) -> Any:
    """A rich table: per-round train loss, federated and central accuracy."""
    from rich.table import Table

    table = Table(title=f"run {rd.run_id}")
    for col in (
        "round",
        "clients",
        "train loss",
        "fed. loss",
        "fed. accuracy",
        "central loss",
        "central accuracy",
        "epsilon",
        "seconds",
    ):
        table.add_column(col, justify="right")

    def fmt(value: Any, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for row in round_rows(rd):
        table.add_row(
            str(row["round"]),
            str(row.get("replies", "-")),
            fmt(row.get("train", {}).get("train-loss")),
            fmt(row.get("evaluate", {}).get("loss")),
            fmt(row.get("evaluate", {}).get("accuracy")),
            fmt(row.get("central", {}).get("loss")),
            fmt(row.get("central", {}).get("accuracy")),
            fmt(row.get("privacy", {}).get("epsilon"), 3),
            fmt(row.get("seconds"), 2),
        )
    if central_accuracy is not None:
        table.caption = f"centrally trained model, same test set: accuracy {central_accuracy:.4f}"
    return table


def accuracy_plot(rd: RunDir, out: Path | None = None, central_accuracy: float | None = None) -> Path:
    """PNG of federated and central-test accuracy per round (and the central baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = round_rows(rd)
    out = out or rd.path / "accuracy.png"
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    cen = [(r["round"], r["central"]["accuracy"]) for r in rows if r.get("central", {}).get("accuracy") is not None]
    fed = [(r["round"], r["evaluate"]["accuracy"]) for r in rows if r.get("evaluate", {}).get("accuracy") is not None]
    if cen:
        ax.plot(*zip(*cen, strict=True), marker="o", label="global model, server test set")
    if fed:
        ax.plot(*zip(*fed, strict=True), marker="s", label="global model, clients' validation (federated)")
    if central_accuracy is not None:
        ax.axhline(central_accuracy, linestyle="--", color="grey", label="central training")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{rd.run_id}")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
