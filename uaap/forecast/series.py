"""Time series for ``--task forecast``: read, checked, generated and cut into lag windows.

A table has a time column, a value column (the run's ``target``) and optionally a series column. Bad input is
refused here, before Ray or Flower start: a time value that does not parse, repeated timestamps, steps that are
not multiples of one regular step, a series shorter than ``horizon + lags`` (the held-out tail plus one window).
A series whose timestamps miss some points of its regular grid is resampled onto it (missing values linearly
interpolated) with a warning that says how many points were filled.

Each series is scaled on its own (its windows never leave its client): a window's values minus the window's mean,
divided by the series' scale (the mean absolute first difference of its training part), and the target is the
next value on the same scale (``forecast-target level``), or the next value minus the value one season earlier
(``forecast-target seasonal``: what the network learns is the correction to seasonal naive, and an output of 0 is
seasonal naive). So one global network serves series of any level and unit, and a trend does not push values outside
what training saw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from uaap.config import RunConfig
from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from uaap.data.core import Dataset, Split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Series:
    """One regular time series: its name, timestamps (numpy datetime64), values and frequency (pandas alias)."""

    name: str
    time: np.ndarray
    values: np.ndarray
    freq: str

    def history(self, horizon: int) -> np.ndarray:
        """The values before the held-out tail of ``horizon`` points."""
        return self.values[: len(self.values) - horizon]

    def tail(self, horizon: int) -> np.ndarray:
        """The held-out last ``horizon`` values."""
        return self.values[len(self.values) - horizon :]


def generate(n_series: int, length: int, period: int = 12, seed: int = 0) -> list[Series]:
    """``n_series`` monthly series of ``length`` points: level + linear trend + seasonal wave + Gaussian noise, each
    with its own level, slope, amplitude, phase and noise (the data set ``series``)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    time = pd.date_range("2015-01-01", periods=length, freq="MS").to_numpy()
    out = []
    for k in range(n_series):
        level, slope = rng.uniform(50, 150), rng.uniform(-0.2, 0.6)
        amp, phase, noise = rng.uniform(5, 20), rng.uniform(0, 2 * np.pi), rng.uniform(1, 3)
        season = amp * np.sin(2 * np.pi * t / period + phase) if period > 1 else 0.0
        values = level + slope * t + season + rng.normal(0, noise, length)
        out.append(Series(f"series-{k}", time, values, "MS"))
    return out


def _regular(name: str, time: pd.Series, values: np.ndarray, time_column: str) -> Series:
    """One series on its regular grid: sorted, refused when timestamps repeat or fit no grid, resampled when some
    points of the grid are missing."""
    import pandas as pd

    order = np.argsort(time.to_numpy(), kind="stable")
    stamps = pd.DatetimeIndex(time.to_numpy()[order])
    vals = values[order]
    if stamps.has_duplicates:
        dup = stamps[stamps.duplicated()][0]
        raise DataError(
            f"series {name!r}: timestamp {dup} of {time_column!r} appears more than once; a series needs one value "
            "per time step (aggregate the duplicates, or name the column that tells the series apart: --series-column)"
        )
    if len(stamps) < 3:
        raise DataError(f"series {name!r} has {len(stamps)} points; a series needs at least 3 to find its time step")
    with pd.option_context("future.infer_freq_returns_offset", True):  # pandas 3.1 warns unless told which it wants
        offset = pd.infer_freq(stamps)
    if offset is not None:
        return Series(name, stamps.to_numpy(), vals, offset.freqstr)
    steps = np.diff(stamps.to_numpy().astype("datetime64[ns]").astype(np.int64))  # nanoseconds, whatever the unit
    step = int(np.min(steps))
    if step <= 0 or np.any(steps % step):
        bad = stamps[1:][steps % step != 0][0] if step > 0 else stamps[0]
        raise DataError(
            f"series {name!r}: irregular timestamps in {time_column!r} (the step before {bad} is not a multiple of "
            f"the smallest step, {pd.Timedelta(step)}); forecasting needs a regular series: resample your table to one "
            "frequency first"
        )
    grid = pd.date_range(stamps[0], stamps[-1], freq=pd.Timedelta(step))
    filled = pd.Series(vals, index=stamps).reindex(grid).interpolate(method="linear")
    log.warning(
        "series %r: %d of %d time steps of %s were missing; resampled to a step of %s (values linearly interpolated)",
        name, len(grid) - len(stamps), len(grid), time_column, pd.Timedelta(step),
    )  # fmt: skip
    return Series(name, grid.to_numpy(), filled.to_numpy(dtype=np.float64), pd.tseries.frequencies.to_offset(
        pd.Timedelta(step)).freqstr)  # fmt: skip


def from_frame(frame: pd.DataFrame, time_column: str, value_column: str, series_column: str = "") -> list[Series]:
    """The series of a table: parsed times, numeric values, one :class:`Series` per value of ``series_column``."""
    import pandas as pd

    for role, col in (("time-column", time_column), ("target", value_column), ("series-column", series_column)):
        if col and col not in frame.columns:
            raise DataError(
                f"{role}={col!r} is not a column of the table; its columns: {', '.join(map(str, frame.columns))}"
            )
    time = pd.to_datetime(frame[time_column], errors="coerce", format="mixed")
    bad = time.isna() & frame[time_column].notna()
    if bad.any() or time.isna().all():
        value = frame[time_column][bad].iloc[0] if bad.any() else None
        raise DataError(
            f"time-column={time_column!r}: value {value!r} (row {int(np.argmax(bad.to_numpy()))}) does not parse as a "
            "date or time; give ISO dates such as 2024-01-31 or 2024-01-31 12:00, or name the right column"
        )
    values = pd.to_numeric(frame[value_column], errors="coerce")
    if (values.isna() & frame[value_column].notna()).any():
        value = frame[value_column][values.isna() & frame[value_column].notna()].iloc[0]
        raise DataError(
            f"target={value_column!r} holds {value!r}, not a number; a forecast needs numeric values in the target "
            "column"
        )
    keep = time.notna() & values.notna()
    ids = frame[series_column].astype(str) if series_column else pd.Series("series", index=frame.index)
    out = []
    for name in dict.fromkeys(ids[keep]):
        rows = keep & (ids == name)
        out.append(_regular(str(name), time[rows], values[rows].to_numpy(dtype=np.float64), time_column))
    return out


def check_lengths(series: list[Series], horizon: int, lags: int) -> None:
    """Refuse a series too short to hold out ``horizon`` points and still train on one window of ``lags``."""
    if horizon < 1:
        raise DataError(f"horizon={horizon}: forecast at least one step ahead (horizon >= 1)")
    need = horizon + lags + 1
    for s in series:
        if len(s.values) < need:
            raise DataError(
                f"series {s.name!r} has {len(s.values)} points, fewer than horizon + lags + 1 = {horizon} + {lags} + 1 "
                f"= {need} (a held-out tail and one training window); lower --horizon or --lags, or give longer series"
            )


def load(cfg: RunConfig) -> list[Series]:
    """The run's series: generated (``dataset=series``, one per client) or read from its table, checked."""
    if cfg.dataset == "series":
        out = generate(cfg.num_clients, cfg.series_length, cfg.seasonal_period, cfg.seed)
    else:
        from uaap.data.loaders import ReadOptions, read_frame

        options = ReadOptions(
            table=cfg.data_table, query=cfg.data_query, sep=cfg.data_sep or None, encoding=cfg.data_encoding,
            decimal=cfg.data_decimal,
        )  # fmt: skip
        out = from_frame(read_frame(cfg.data_path, options), cfg.time_column, cfg.target, cfg.series_column)
    check_lengths(out, cfg.horizon, cfg.lags)
    return out


def scale_of(history: np.ndarray) -> float:
    """A series' scale: the mean absolute first difference of its training values (1 for a flat series)."""
    diffs = np.abs(np.diff(np.asarray(history, dtype=np.float64)))
    s = float(diffs.mean()) if len(diffs) else 0.0
    return s if s > 1e-12 else 1.0


def window_inputs(windows: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs for rows of ``lags`` raw values: each minus its mean, over ``scale``; and those means."""
    means = windows.mean(axis=1, keepdims=True)
    return ((windows - means) / scale).astype(np.float32), means[:, 0]


def windows(
    values: np.ndarray, lags: int, scale: float, start: int = 0, period: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Every window of ``lags`` values whose next value (the target) has index ``>= start + lags``, scaled; the
    target is the next value minus the window's mean, or with ``period`` (<= ``lags``) minus the value ``period``
    steps before it (the window's own, one season earlier)."""
    values = np.asarray(values, dtype=np.float64)
    idx = np.arange(max(start, 0), len(values) - lags)
    raw = np.stack([values[i : i + lags] for i in idx]) if len(idx) else np.zeros((0, lags))
    X, means = window_inputs(raw, scale)
    base = values[idx + lags - period] if period else means
    y = ((values[idx + lags] - base) / scale).astype(np.float32)
    return X, y


def target_period(cfg: RunConfig) -> int:
    """The ``period`` of :func:`windows` for the run: its season under ``forecast-target seasonal``, else 0."""
    return cfg.seasonal_period if cfg.forecast_target == "seasonal" and cfg.seasonal_period > 1 else 0


def series_split(series: list[Series], cfg: RunConfig) -> Split:
    """One client's data: training windows before each series' held-out tail, test windows predicting the tail
    (one step ahead, from true values); regression targets already scaled (target mean 0, std 1)."""
    from uaap.data.core import Dataset, Split

    names = tuple(f"lag{cfg.lags - i}" for i in range(cfg.lags))
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for s in series:
        scale = scale_of(s.history(cfg.horizon))
        period = target_period(cfg)
        parts["train"].append(windows(s.history(cfg.horizon), cfg.lags, scale, period=period))
        start = len(s.values) - cfg.horizon - cfg.lags
        parts["test"].append(windows(s.values, cfg.lags, scale, start=start, period=period))

    def dataset(kind: str) -> Dataset:
        X = np.concatenate([x for x, _ in parts[kind]])
        y = np.concatenate([t for _, t in parts[kind]])
        return Dataset(f"{cfg.dataset}-windows", X, y, 1, names, task="regression")

    return Split(dataset("train"), dataset("test"))


def client_series(cfg: RunConfig, partition_id: int, num_partitions: int) -> list[Series]:
    """The series client ``partition_id`` holds: every ``num_partitions``-th, starting at its own."""
    return deal(load(cfg), partition_id, num_partitions)


def deal(every: list[Series], partition_id: int, num_partitions: int) -> list[Series]:
    """Client ``partition_id``'s share of ``every`` series (read once for all clients: :func:`load`)."""
    if len(every) < num_partitions:
        raise DataError(
            f"{len(every)} series for {num_partitions} clients: each client needs a series of its own; lower "
            "--num-clients or give more series"
        )
    return every[partition_id::num_partitions]


def federated(cfg: RunConfig, num_partitions: int) -> tuple[tuple[Split, ...], Dataset]:
    """Each client's windows (its series, dealt in turn) and the server's test windows (every client's tails)."""
    from dataclasses import replace

    every = load(cfg)
    splits = tuple(series_split(deal(every, i, num_partitions), cfg) for i in range(num_partitions))
    test = replace(
        splits[0].test,
        X=np.concatenate([s.test.X for s in splits]),
        y=np.concatenate([s.test.y for s in splits]),
    )
    return splits, test
