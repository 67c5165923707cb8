"""The data pipeline on a large table, side by side with plain pandas + scikit-learn doing the same steps.

Both sides, each in a fresh process (so peak memory is each side's own), on the same generated CSV of
``--rows`` rows x 20 columns (numeric with outliers, categorical, an ISO datetime, 5% of cells missing):

* **ours**: ``uaap.data.loaders.read_frame`` (delimiter sniffed), ``uaap.data.profile.profile`` (pandera schema,
  per-column kinds, missing, distinct, IQR/z outliers, IsolationForest on a 100k-row sample, duplicates,
  target, leakage), ``Preprocessor().fit`` (the federated fit with one party: schema, moments, histograms,
  scaling) and ``transform``;
* **baseline**: ``pandas.read_csv``; the same profile numbers with pandas (``describe``, ``isna``,
  ``nunique``, IQR/z counts, ``duplicated``, IsolationForest on the same sample, target counts, a groupby
  leakage check); a ``ColumnTransformer`` of ``SimpleImputer(median)`` + IQR clipping + ``StandardScaler``
  for numbers, ``SimpleImputer(most_frequent)`` + ``OneHotEncoder(max_categories=20)`` for categories, and
  the datetime expanded into the same calendar parts and cycles; ``fit_transform``.

Prints per side the median seconds of each step over ``--repeats`` runs, the total, peak RSS, and the ratio
ours / baseline (target: <= 1.3). Writes ``artifacts/data.json`` and ``artifacts/data.png``.

    python benchmarks/data.py [--rows 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET = "label"
NUMERIC = ["age", "income", "score", *[f"extra_{i}" for i in range(13)]]
CATEGORICAL = ["city", "plan"]
DATETIME = "visit"


def make_table(rows: int, path: Path) -> None:
    """The generated table: 16 numeric, 2 categorical, 1 datetime feature, 2 targets (``cost`` dropped here)."""
    from uaap.data.messy import messy_table

    messy_table(rows, seed=1, missing=0.05, extra_numeric=13, text=False).drop(columns=["cost"]).to_csv(
        path, index=False
    )


def ours(path: str) -> dict[str, float]:
    """Load, profile, fit and transform with UAAP."""
    import pandera.pandas  # noqa: F401 - imported before the clock starts, as the baseline imports scikit-learn
    import sklearn.ensemble  # noqa: F401

    from uaap.data.loaders import read_frame
    from uaap.data.preprocess import Preprocessor
    from uaap.data.profile import profile

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    frame = read_frame(path)
    times["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    profile(frame, TARGET)
    times["profile"] = time.perf_counter() - t0
    features = frame.drop(columns=[TARGET])
    t0 = time.perf_counter()
    pre = Preprocessor().fit(features)
    times["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    X = pre.transform(features)
    times["transform"] = time.perf_counter() - t0
    times["features"] = X.shape[1]
    return times


def baseline(path: str) -> dict[str, float]:
    """The same steps with plain pandas and scikit-learn."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import IsolationForest
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    frame = pd.read_csv(path)
    times["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    frame.describe(include="all")
    frame.isna().mean()
    frame.nunique()
    for col in NUMERIC:
        x = frame[col].dropna().to_numpy()
        q1, q3 = np.percentile(x, [25, 75])
        ((x < q1 - 1.5 * (q3 - q1)) | (x > q3 + 1.5 * (q3 - q1))).sum()
        (np.abs(x - x.mean()) > 3 * x.std()).sum()
    pd.to_datetime(frame[DATETIME], format="ISO8601", errors="coerce").agg(["min", "max"])
    frame.duplicated().sum()
    sample = frame[NUMERIC].sample(min(len(frame), 100_000), random_state=0)
    IsolationForest(random_state=0).fit_predict(sample.fillna(sample.median()))
    frame[TARGET].value_counts()
    for col in CATEGORICAL:
        frame[[col, TARGET]].dropna().groupby(col)[TARGET].nunique().max()
    times["profile"] = time.perf_counter() - t0

    def expand(df: pd.DataFrame) -> np.ndarray:
        when = pd.to_datetime(df.iloc[:, 0], format="ISO8601", errors="coerce").dt
        parts = {p: getattr(when, p).to_numpy(dtype=float, na_value=np.nan) for p in ("year", "month", "day")}
        parts |= {p: getattr(when, p).to_numpy(dtype=float, na_value=np.nan) for p in ("weekday", "hour")}
        cycles = [
            f(2 * np.pi * parts[p] / n)
            for p, n in (("month", 12), ("weekday", 7), ("hour", 24))
            for f in (np.sin, np.cos)
        ]  # noqa: E501
        return np.column_stack([*parts.values(), *cycles])

    def clip_iqr(x: np.ndarray) -> np.ndarray:
        q1, q3 = np.nanpercentile(x, [25, 75], axis=0)
        return np.clip(x, q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1))

    pipeline = ColumnTransformer(
        [
            (
                "num",
                make_pipeline(SimpleImputer(strategy="median"), FunctionTransformer(clip_iqr), StandardScaler()),
                NUMERIC,
            ),  # noqa: E501
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(max_categories=20, handle_unknown="infrequent_if_exist"),
                ),
                CATEGORICAL,
            ),  # noqa: E501
            (
                "date",
                make_pipeline(FunctionTransformer(expand), SimpleImputer(strategy="median"), StandardScaler()),
                [DATETIME],
            ),  # noqa: E501
        ],
        sparse_threshold=0.0,
    )
    features = frame.drop(columns=[TARGET])
    t0 = time.perf_counter()
    pipeline.fit(features)
    times["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    X = pipeline.transform(features)
    times["transform"] = time.perf_counter() - t0
    times["features"] = X.shape[1]
    return times


def _child(side: str, path: str) -> None:
    times = (ours if side == "ours" else baseline)(path)
    times["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(times))


def _run(side: str, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", side, str(path)], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    steps = ("load", "profile", "fit", "transform")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.csv"
        t0 = time.perf_counter()
        make_table(args.rows, path)
        print(f"table: {args.rows:,} rows x 20 columns, {path.stat().st_size / 2**20:.0f} MiB CSV "
              f"(generated in {time.perf_counter() - t0:.0f}s)")  # fmt: skip
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "baseline": []}
        for i in range(args.repeats):
            for side in runs:  # alternate, so drift in machine load hits both sides alike
                runs[side].append(_run(side, path))
                total = sum(runs[side][-1][s] for s in steps)
                print(f"  run {i + 1}/{args.repeats} {side:8s} {total:6.1f}s", flush=True)
    result: dict[str, Any] = {"rows": args.rows, "repeats": args.repeats}
    print(f"\n{'step':10s} {'ours':>8s} {'baseline':>9s} {'ratio':>6s}   (median seconds)")
    for step in (*steps, "total"):
        med = {
            side: statistics.median(sum(r[s] for s in steps) if step == "total" else r[step] for r in rs)
            for side, rs in runs.items()
        }
        result[step] = med
        print(f"{step:10s} {med['ours']:8.2f} {med['baseline']:9.2f} {med['ours'] / med['baseline']:6.2f}")
    rss = {side: statistics.median(r["peak_rss_mb"] for r in rs) for side, rs in runs.items()}
    result["peak_rss_mb"] = rss
    result["features"] = {side: rs[0]["features"] for side, rs in runs.items()}
    print(f"peak RSS   {rss['ours']:7.0f}M {rss['baseline']:8.0f}M")
    print(f"features   {result['features']['ours']:8.0f} {result['features']['baseline']:9.0f}")
    ratio = result["total"]["ours"] / result["total"]["baseline"]
    print(f"\nratio ours/baseline (total): {ratio:.2f}  (target <= 1.3)")
    out = REPO / "artifacts"
    out.mkdir(exist_ok=True)
    (out / "data.json").write_text(json.dumps(result, indent=1))
    _plot(result, steps, out / "data.png")
    return 0


def _plot(result: dict[str, Any], steps: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(steps))
    for k, side in enumerate(("ours", "baseline")):
        ax.bar(x + (k - 0.5) * 0.38, [result[s][side] for s in steps], 0.38, label=side)
    ax.set_xticks(x, steps)
    ax.set_ylabel("median seconds")
    ax.set_title(f"{result['rows']:,} rows x 20 columns: UAAP vs pandas + scikit-learn")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
