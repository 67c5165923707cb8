"""Representative rows: a seeded sample of a table that keeps its class mix (or target spread).

Whatever checks a model on "some" rows of a split (export parity, calibration) uses this instead of
the first N rows: tables are often sorted by label, date or id, so a prefix can hold one class only.
Classification is stratified by class with largest-remainder rounding, so every class is within one
row of its share and every class present keeps at least one row; regression is stratified over
equal-count slices of the sorted target, so the sample spans the target's range.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from uaap.errors import DataError

TASKS = ("classification", "regression")
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def representative_rows(y: np.ndarray, budget: int, seed: int, task: str = "classification") -> np.ndarray:
    """Sorted indices of at most ``budget`` rows of ``y``, stratified by class (or target quantile).

    All rows when there are no more than ``budget``; the same indices for the same ``seed``.
    """
    if task not in TASKS:
        raise DataError(f"task={task!r} has no sampling rule; choose one of: {', '.join(TASKS)}")
    if budget < 1:
        raise DataError(f"budget={budget} rows; need at least 1 row to sample")
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"targets have shape {y.shape}; expected one value per row (a 1-d array)")
    n = len(y)
    if n <= budget:
        return np.arange(n, dtype=np.int64)
    strata = _classes(y) if task == "classification" else _quantile_slices(y, budget)
    rng = np.random.default_rng(seed)
    sizes = np.bincount(strata)
    take = allocate(sizes, budget)
    chosen = [rng.choice(np.flatnonzero(strata == s), size=k, replace=False) for s, k in enumerate(take) if k]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def allocate(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Rows per stratum: proportional to ``sizes`` (largest remainder), at least one per non-empty stratum.

    Each count is within one row of its exact share ``budget * size / total``; when the budget is smaller
    than the number of strata, the largest strata get one row each.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if budget >= total:
        return sizes.copy()
    present = np.flatnonzero(sizes)
    if budget <= len(present):
        take = np.zeros_like(sizes)
        take[present[np.argsort(-sizes[present], kind="stable")[:budget]]] = 1
        return take
    quota = budget * sizes / total
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: budget - int(take.sum())]] += 1
    # A stratum whose share is under one row gets one, paid for by a stratum that was rounded up (or, failing
    # that, holds more than its share): both stay within one row of their share.
    for s in present[take[present] == 0]:
        donors = np.flatnonzero(take > 1)
        donor = donors[np.argmax(take[donors] - quota[donors])]
        take[donor] -= 1
        take[s] = 1
    return take


def describe(y: np.ndarray, idx: np.ndarray, task: str = "classification", n_classes: int = 0) -> dict[str, Any]:
    """What a sample holds next to the whole it came from: class counts (or target quantiles) of both."""
    y = np.asarray(y)
    sample = y[np.asarray(idx, dtype=np.int64)]
    out: dict[str, Any] = {"rows": int(len(sample)), "of_rows": int(len(y))}
    if task == "classification":
        width = max(n_classes, int(y.max()) + 1 if len(y) else 0)
        out["class_counts"] = [int(c) for c in np.bincount(sample.astype(np.int64), minlength=width)]
        out["class_counts_all"] = [int(c) for c in np.bincount(y.astype(np.int64), minlength=width)]
    else:

        def q(v: np.ndarray) -> dict[str, float]:
            return {f"q{round(p * 100)}": float(x) for p, x in zip(QUANTILES, np.quantile(v, QUANTILES), strict=True)}

        out["target_quantiles"] = q(sample) if len(sample) else {}
        out["target_quantiles_all"] = q(y) if len(y) else {}
    return out


def _classes(y: np.ndarray) -> np.ndarray:
    return np.unique(y, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _quantile_slices(y: np.ndarray, budget: int) -> np.ndarray:
    """Stratum of each row: its slice among ``budget`` equal-count slices of the sorted target."""
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)):
        raise DataError("regression targets must be finite numbers; drop or fill rows with missing targets")
    rank = np.empty(len(y), dtype=np.int64)
    rank[np.argsort(y, kind="stable")] = np.arange(len(y))
    return (rank * budget // len(y)).astype(np.int64)
