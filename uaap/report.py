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


def narrow_table(title: str, columns: list[str], caption: str = "", first: str = "right") -> Any:
    """A rich Table that fits an 80-column terminal without cutting a header or a number.

    Headers are short and may span two lines (``"test\\nacc."``); cells never wrap, so a number is shown
    whole or (below 80 columns) visibly cut; the light box and collapsed padding leave the room to numbers.
    """
    from rich import box
    from rich.table import Table

    table = Table(
        title=title,
        caption=caption or None,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
        pad_edge=False,
    )
    for i, header in enumerate(columns):
        widest = max(len(line) for line in header.splitlines())
        table.add_column(
            header, justify="left" if i == 0 and first == "left" else "right", min_width=widest, no_wrap=True
        )
    return table


def fmt(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` decimals, ``-`` when missing."""
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_epsilon(value: float | None) -> str:
    """An epsilon: 3 decimals below 100, fewer above (1486.2, 12345), ``-`` when missing."""
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 100 else f"{value:.1f}" if value < 10_000 else f"{value:.0f}"


def score(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The headline metric of a run's rounds and its short name: the horizon forecast's MASE for a forecast, R2 for a
    regression, the silhouette of K-Means clusters, the held-out explained variance of PCA, else accuracy."""
    for key, short in (("forecast-mase", "MASE"), ("r2", "R2"), ("silhouette", "sil."), ("explained_variance", "var.")):
        if any(key in r.get(part, {}) for r in rows for part in ("evaluate", "central")):
            return key, short
    return ("accuracy", "acc.")


def summary_table(rd: RunDir, central_accuracy: float | None = None) -> Any:
    """A rich table: per round, clients, train loss, federated validation and server test metrics, epsilon."""
    rows = round_rows(rd)
    key, short = score(rows)
    caption = "val.: the clients' validation splits (federated); test: the server's held-out test set"
    if key == "forecast-mase":  # a forecast is scored on every series' held-out tail, wherever the series are
        caption = "MASE: the horizon forecast of every series' held-out tail; val.: summed by the clients holding "
        caption += "them, test: by the server (a simulation's holds the series)"
    if central_accuracy is not None:
        caption += f"; a centrally trained model reaches test {key} {central_accuracy:.4f}"
    table = narrow_table(
        f"run {rd.run_id}",
        ["round", "clients", "train\nloss", "val.\nloss", f"val.\n{short}", "test\nloss", f"test\n{short}", "epsilon",
         "secs"],
        caption,
    )  # fmt: skip
    for row in rows:
        table.add_row(
            str(row["round"]),
            str(row.get("replies", "-")),
            fmt(row.get("train", {}).get("train-loss")),
            fmt(row.get("evaluate", {}).get("loss")),
            fmt(row.get("evaluate", {}).get(key)),
            fmt(row.get("central", {}).get("loss")),
            fmt(row.get("central", {}).get(key)),
            fmt_epsilon(row.get("privacy", {}).get("epsilon")),
            fmt(row.get("seconds"), 1),
        )
    return table


def comparison_table(rows: list[tuple[str, str, float, float | None, float | None, float | None]]) -> Any:
    """The demo's final table: per run (label, run id), test and validation accuracy, user and example epsilon."""
    table = narrow_table(
        "the same held-out test set for every model",
        ["run", "test\nacc.", "val.\nacc.", "user\nepsilon", "example\nepsilon"],
        "test: the final model on the held-out test set (federated models decrypted by a key holder); "
        "val.: the clients' own validation (federated); epsilon: the privacy spent (- when the run has no DP)",
        first="left",
    )
    table.columns[0].no_wrap = False
    table.columns[0].ratio = 1
    for label, run_id, test_acc, val_acc, user_eps, example_eps in rows:
        table.add_row(
            f"{label}\n[dim]{run_id}[/]",
            fmt(test_acc),
            fmt(val_acc),
            fmt_epsilon(user_eps),
            fmt_epsilon(example_eps),
            end_section=True,
        )
    return table


def accuracy_plot(rd: RunDir, out: Path | None = None, central_accuracy: float | None = None) -> Path:
    """PNG of federated and central-test accuracy (R2, silhouette, explained variance: :func:`score`) per round
    (and the central baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = round_rows(rd)
    key, _ = score(rows)
    out = out or rd.path / "accuracy.png"
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    cen = [(r["round"], r["central"][key]) for r in rows if r.get("central", {}).get(key) is not None]
    fed = [(r["round"], r["evaluate"][key]) for r in rows if r.get("evaluate", {}).get(key) is not None]
    if cen:
        ax.plot(*zip(*cen, strict=True), marker="o", label="global model, server test set")
    if fed:
        ax.plot(*zip(*fed, strict=True), marker="s", label="global model, clients' validation (federated)")
    if central_accuracy is not None:
        ax.axhline(central_accuracy, linestyle="--", color="grey", label="central training")
    ax.set_xlabel("round")
    ax.set_ylabel({"r2": "R2", "forecast-mase": "MASE of the horizon forecast (lower is better)"}.get(
        key, key.replace("_", " ")
    ))  # fmt: skip
    lowest = min([v for _, v in cen + fed] + [0.0])
    if key != "forecast-mase":  # MASE has no top: 1 is seasonal naive's
        ax.set_ylim(max(lowest, -1.0), 1.0)  # R2 can be negative: the first rounds of a regression often are
    ax.grid(alpha=0.3)
    if cen or fed or central_accuracy is not None:  # a CKKS run of K-Means or PCA has no plaintext metric to draw
        ax.legend(loc="best" if key == "forecast-mase" else "lower right", fontsize=8)  # MASE falls: no fixed corner
    ax.set_title(f"{rd.run_id}")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
