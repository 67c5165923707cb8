"""One forecast plot per series: the history, the held-out actual values, each model's forecast and its interval."""

from __future__ import annotations

import re
from pathlib import Path

from uaap.forecast.models import Forecast
from uaap.forecast.series import Series


def plot_series(series: Series, horizon: int, forecasts: list[Forecast], out_dir: Path, context: int = 48) -> Path:
    """Write ``<out_dir>/forecast-<series>.png``: the last ``context`` points of history, the actual tail, and each
    forecast (shaded 95% interval where it has one). Returns the file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(series.values)
    start = max(0, n - horizon - context)
    time = series.time
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(time[start : n - horizon + 1], series.values[start : n - horizon + 1], color="black", label="history")
    ax.plot(time[n - horizon :], series.values[n - horizon :], color="black", ls=":", marker=".", label="actual")
    for f in forecasts:
        (line,) = ax.plot(time[n - horizon :], f.mean, label=f.model)
        if f.lower is not None and f.upper is not None:
            ax.fill_between(time[n - horizon :], f.lower, f.upper, color=line.get_color(), alpha=0.15)
    ax.axvline(time[n - horizon], color="grey", lw=0.8)
    shaded = any(f.lower is not None for f in forecasts)
    ax.set_title(f"{series.name}: {horizon}-step forecast" + (" (shaded: 95% interval)" if shaded else ""))
    ax.legend(fontsize=7, ncol=3)
    fig.autofmt_xdate()
    fig.tight_layout()
    path = out_dir / f"forecast-{re.sub(r'[^A-Za-z0-9_.-]+', '_', series.name)}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
