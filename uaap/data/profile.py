"""A validation report for a raw table: what each column holds, what is wrong with it, what would be done.

:func:`profile` looks at a table the way a data scientist would before training: per column its kind
(numeric, categorical, datetime, boolean, free text, identifier), missing share, distinct count and range;
flags (constant, ID-like, high cardinality, all missing, free text); outliers by the IQR rule, by z-score and,
row-wise, by an IsolationForest; duplicate rows; the target's balance (classification) or distribution
(regression); a leakage warning for a feature that determines the target; and the preprocessing UAAP would
apply. Types, nullability and ranges come from pandera's schema inference, a maintained validator, and the
inferred schema is kept (``Profile.schema``) so another table can be checked against it.

``uaap data profile SOURCE --target COL`` prints it as a table and writes an HTML page in the workspace.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.data.preprocess import parse_dates
from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

HIGH_CARDINALITY = 50  # distinct values above which one-hot encoding gives way to hashing
ID_SHARE = 0.95  # a column whose values are (nearly) all distinct names rows, it does not describe them
TEXT_LENGTH = 30  # mean characters above which a high-cardinality string column is free text
REGRESSION_DISTINCT = 20  # a numeric target with more distinct values than this is a regression target
Z_LIMIT = 3.0
FOREST_ROWS = 100_000  # an IsolationForest looks at a random sample of at most this many rows (10 s for 1M here)


@dataclass(frozen=True)
class ColumnProfile:
    """One column: kind, pandera's dtype, missing share, distinct count, range, outliers, flags, the plan."""

    name: str
    kind: str
    dtype: str
    missing: float
    distinct: int
    low: float | str | None = None
    high: float | str | None = None
    outliers_iqr: int = 0
    outliers_z: int = 0
    flags: tuple[str, ...] = ()
    plan: str = ""


@dataclass(frozen=True)
class TargetProfile:
    """The target: task, classes and their counts, or the value distribution."""

    name: str
    task: str
    missing: int
    counts: dict[str, int] = field(default_factory=dict)
    quantiles: dict[str, float] = field(default_factory=dict)
    imbalance: float = 1.0  # largest class / smallest class


@dataclass(frozen=True)
class Profile:
    """The whole report (see :func:`profile`)."""

    source: str
    rows: int
    duplicates: int
    columns: tuple[ColumnProfile, ...]
    target: TargetProfile
    outlier_rows: int  # rows an IsolationForest on the numeric columns flags (among ``outlier_sample`` rows)
    leakage: tuple[str, ...]
    warnings: tuple[str, ...]
    schema: Any  # pandera DataFrameSchema inferred from the table
    outlier_sample: int = 0  # rows the IsolationForest looked at (all, up to FOREST_ROWS)

    def column(self, name: str) -> ColumnProfile:
        """The profile of column ``name``."""
        return next(c for c in self.columns if c.name == name)


def profile(frame: pd.DataFrame, target: str, source: str = "table", *, seed: int = 0) -> Profile:
    """Profile ``frame`` with ``target`` as the label column (see the module docstring)."""
    import pandera.pandas as pa

    if target not in frame.columns:
        raise DataError(f"target column {target!r} is not in {source}; its columns are: {', '.join(map(str, frame))}")
    if frame[target].isna().all():
        raise DataError(f"target column {target!r} of {source} is empty in every row")
    schema = pa.infer_schema(frame)
    if not isinstance(schema, pa.DataFrameSchema):  # a DataFrame always infers a DataFrameSchema
        raise DataError(f"{source} could not be read as a table")
    features = [c for c in frame.columns if c != target]
    columns = tuple(_column(frame[c], str(schema.columns[c].dtype)) for c in features)
    tgt = _target(frame[target])
    warnings = []
    if tgt.missing:
        warnings.append(f"target {target!r} is missing in {tgt.missing} rows: they are dropped before training")
    if tgt.task == "classification" and len(tgt.counts) < 2:
        warnings.append(f"target {target!r} has a single class: nothing to learn")
    if tgt.task == "classification" and tgt.imbalance >= 10:
        warnings.append(f"target {target!r} is imbalanced ({tgt.imbalance:.0f}:1): report F1, not only accuracy")
    leakage = tuple(c.name for c in columns if _leaks(frame[c.name], frame[target], c, tgt.task))
    warnings += [
        f"{name!r} determines the target on its own: a leak, or the target under another name" for name in leakage
    ]
    return Profile(
        source=source,
        rows=len(frame),
        duplicates=int(frame.duplicated().sum()),
        columns=columns,
        target=tgt,
        outlier_rows=_isolation_outliers(frame, [c.name for c in columns if c.kind == "numeric"], seed),
        outlier_sample=min(len(frame), FOREST_ROWS),
        leakage=leakage,
        warnings=tuple(warnings),
        schema=schema,
    )


def _kind(series: pd.Series, dtype: str) -> str:
    import pandas as pd

    values = series.dropna()
    if pd.api.types.is_bool_dtype(series) or (values.nunique() == 2 and set(values.unique()) <= {0, 1}):
        return "boolean"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    if len(values) and parse_dates(values.head(64)).notna().mean() >= 0.9 and parse_dates(values).notna().mean() >= 0.9:
        return "datetime"
    if values.nunique() > HIGH_CARDINALITY and values.astype(str).str.len().mean() > TEXT_LENGTH:
        return "text"
    return "categorical"


def _column(series: pd.Series, dtype: str) -> ColumnProfile:
    import pandas as pd

    name = str(series.name)
    kind = _kind(series, dtype)
    values = series.dropna()
    n, distinct = len(series), int(values.nunique())
    missing = float(series.isna().mean()) if n else 0.0
    flags = []
    if distinct == 0:
        flags.append("all missing")
    elif distinct == 1:
        flags.append("constant")
    many = n > HIGH_CARDINALITY and distinct >= ID_SHARE * n
    if many and (kind == "categorical" or (kind == "numeric" and pd.api.types.is_integer_dtype(series))):
        flags.append("ID-like")
    if kind == "categorical" and distinct > HIGH_CARDINALITY and "ID-like" not in flags:
        flags.append("high cardinality")
    if kind == "text":
        flags.append("free text")
    low: float | str | None = None
    high: float | str | None = None
    iqr_out = z_out = 0
    if kind == "numeric" and distinct:
        x = values.astype(float).to_numpy()
        low, high = float(x.min()), float(x.max())
        q1, q3 = np.percentile(x, [25, 75])
        spread = q3 - q1
        iqr_out = int(((x < q1 - 1.5 * spread) | (x > q3 + 1.5 * spread)).sum()) if spread > 0 else 0
        std = x.std()
        z_out = int((np.abs(x - x.mean()) > Z_LIMIT * std).sum()) if std > 0 else 0
    elif kind == "datetime" and distinct:
        stamps = parse_dates(values)
        low, high = str(stamps.min()), str(stamps.max())
    profile_ = ColumnProfile(name, kind, dtype, missing, distinct, low, high, iqr_out, z_out, tuple(flags))
    return ColumnProfile(**{**profile_.__dict__, "plan": _plan(profile_, n)})


def _plan(c: ColumnProfile, rows: int) -> str:
    """What UAAP's preprocessing would do with this column."""
    if {"all missing", "constant", "ID-like"} & set(c.flags):
        return "drop"
    steps = []
    if c.missing:
        steps.append("impute median" if c.kind == "numeric" else "impute most frequent")
    if c.kind == "numeric":
        if c.outliers_iqr > 0.05 * rows:
            steps.append("robust scale")
        else:
            steps.append("clip outliers (IQR), standard scale" if c.outliers_iqr else "standard scale")
    elif c.kind == "datetime":
        steps.append("expand: year, month, day, weekday, hour, cyclical sine/cosine")
    elif c.kind == "boolean":
        steps.append("as 0/1")
    elif c.kind == "text" or "high cardinality" in c.flags:  # over 50 distinct strings: text or identifiers
        steps.append(
            "refused until you choose: hash its words (--text-columns hashing) or leave it out (--drop-columns)"
        )
    else:
        steps.append("one-hot (the 20 most frequent; rare and unseen values: one infrequent column)")
    return ", ".join(steps)


def _target(series: pd.Series) -> TargetProfile:
    import pandas as pd

    values = series.dropna()
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    distinct = values.nunique()
    is_float = numeric and not np.allclose(values.to_numpy(dtype=float), np.round(values.to_numpy(dtype=float)))
    if numeric and (distinct > REGRESSION_DISTINCT or is_float):
        q = np.percentile(values.to_numpy(dtype=float), [0, 25, 50, 75, 100])
        keys = ("min", "q1", "median", "q3", "max")
        return TargetProfile(
            str(series.name),
            "regression",
            int(series.isna().sum()),
            quantiles=dict(zip(keys, map(float, q), strict=True)),
        )
    counts = {str(k): int(v) for k, v in values.value_counts().sort_index().items()}
    imbalance = max(counts.values()) / min(counts.values()) if counts else 1.0
    return TargetProfile(
        str(series.name), "classification", int(series.isna().sum()), counts=counts, imbalance=imbalance
    )


def _leaks(feature: pd.Series, target: pd.Series, c: ColumnProfile, task: str) -> bool:
    """Whether ``feature`` alone determines the target (and is not just a row identifier)."""
    if {"ID-like", "constant", "all missing"} & set(c.flags) or c.kind == "text":
        return False
    pair = feature.to_frame("f").assign(t=target).dropna()
    if len(pair) < 10:
        return False
    if task == "regression" and c.kind == "numeric":
        x, y = pair["f"].astype(float), pair["t"].astype(float)
        return bool(x.std() > 0 and y.std() > 0 and abs(np.corrcoef(x, y)[0, 1]) > 0.99)
    if c.distinct > 0.5 * len(pair):  # almost one group per row: determining the target says nothing
        return False
    return bool(pair.groupby("f")["t"].nunique().max() == 1 and pair["t"].nunique() > 1)


def _isolation_outliers(frame: pd.DataFrame, numeric: list[str], seed: int) -> int:
    if not numeric or len(frame) < 20:
        return 0
    from sklearn.ensemble import IsolationForest

    x = frame[numeric].astype(float)
    if len(x) > FOREST_ROWS:
        x = x.sample(FOREST_ROWS, random_state=seed)
    x = x.fillna(x.median()).to_numpy()
    forest = IsolationForest(n_estimators=100, contamination="auto", random_state=seed)
    return int((forest.fit_predict(x) == -1).sum())


# ---- presentation ---------------------------------------------------------------------------------


def _fmt(value: float | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value[:19]
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def table(report: Profile) -> Any:
    """The report as a rich table (one row per column) for the terminal."""
    from rich.table import Table

    out = Table(title=f"{report.source}: {report.rows} rows, {report.duplicates} duplicates", title_justify="left")
    for name in ("column", "kind", "missing", "distinct", "range", "outliers", "flags", "plan"):
        out.add_column(name, overflow="fold")
    for c in report.columns:
        outliers = f"{c.outliers_iqr}/{c.outliers_z}" if c.kind == "numeric" else "-"
        out.add_row(
            c.name, c.kind, f"{c.missing:.0%}", str(c.distinct), f"{_fmt(c.low)}..{_fmt(c.high)}", outliers,
            ", ".join(c.flags) or "-", c.plan,
        )  # fmt: skip
    return out


def summary_lines(report: Profile) -> list[str]:
    """The target, the row-wise outliers and every warning, one line each."""
    t = report.target
    if t.task == "classification":
        spread = ", ".join(f"{k}: {v}" for k, v in list(t.counts.items())[:10])
        lines = [
            f"target {t.name!r}: classification, {len(t.counts)} classes ({spread}); imbalance {t.imbalance:.1f}:1"
        ]
    else:
        spread = ", ".join(f"{k} {v:.4g}" for k, v in t.quantiles.items())
        lines = [f"target {t.name!r}: regression ({spread})"]
    among = f" of a sample of {report.outlier_sample}" if report.outlier_sample < report.rows else ""
    lines.append(
        f"outliers: IQR/z per numeric column above; an IsolationForest flags {report.outlier_rows} rows{among}"
    )
    return lines + [f"warning: {w}" for w in report.warnings]


def write_html(report: Profile, path: Any) -> Any:
    """The report as one self-contained HTML page at ``path``."""
    from pathlib import Path

    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            c.name, c.kind, c.dtype, f"{c.missing:.1%}", c.distinct, _fmt(c.low), _fmt(c.high),
            c.outliers_iqr if c.kind == "numeric" else "-", c.outliers_z if c.kind == "numeric" else "-",
            ", ".join(c.flags) or "-", c.plan,
        )) + "</tr>"
        for c in report.columns
    )  # fmt: skip
    head = "".join(
        f"<th>{h}</th>"
        for h in ("column", "kind", "dtype", "missing", "distinct", "min", "max", "IQR", "z", "flags", "plan")
    )
    notes = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(report))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>profile of {html.escape(report.source)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:left}th{background:#eee}</style></head><body>"
        f"<h1>{html.escape(report.source)}</h1><p>{report.rows} rows, {len(report.columns)} feature columns, "
        f"{report.duplicates} duplicate rows</p><ul>{notes}</ul><table><tr>{head}</tr>{rows}</table></body></html>"
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
