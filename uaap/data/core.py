"""What every part of :mod:`uaap.data` shares: the :class:`Dataset` and :class:`Split` types, the task of a
target, and the splitters (strata, partitions, a client's validation part). :mod:`uaap.data` re-exports them;
:mod:`uaap.data.tables` builds on them without importing the package that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

TASKS = ("classification", "regression", "anomaly")
MIN_PARTITION_SIZE = 4
QUANTILE_BINS = 10  # regression targets are cut into this many equal-count bins to stratify and skew splits
# A numeric target is regression when it has more distinct values than this (floats) or ...
MAX_FLOAT_CLASSES = 20
MAX_INT_CLASSES = 50  # ... than this (whole numbers); fewer: classes. `task` overrides.


@dataclass(frozen=True)
class Dataset:
    """Features (float32) and targets, with what a model needs to know about them.

    Classification: ``y`` holds int64 labels 0..``n_classes``-1. Regression: ``y`` holds float32 targets in their
    own units, ``n_classes`` is 1 (the model's output width) and ``target_mean``/``target_std`` are the train
    split's statistics the model's output is standardised with (:func:`target_scaling`).
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    n_classes: int  # the model's output width: the number of classes, or 1 for regression
    feature_names: tuple[str, ...]
    image_shape: tuple[int, int, int] | None = None
    task: str = "classification"
    target_mean: float = 0.0
    target_std: float = 1.0
    preprocessor: str = ""  # a raw table's fitted preprocessing plan as JSON (uaap.data.preprocess), else empty

    @property
    def n_features(self) -> int:
        """Number of input features."""
        return int(self.X.shape[1])

    @property
    def regression(self) -> bool:
        """Whether ``y`` holds real-valued targets (one model output) rather than class labels."""
        return self.task == "regression"

    def subset(self, idx: np.ndarray) -> Dataset:
        """Rows ``idx`` of this dataset."""
        return replace(self, X=self.X[idx], y=self.y[idx])

    def strata(self) -> np.ndarray:
        """A label per row to stratify or skew splits by: the class, or the target's quantile bin (regression)."""
        return quantile_bins(self.y) if self.regression else self.y


@dataclass(frozen=True)
class Split:
    """A train part and a held-out test part drawn from one dataset."""

    train: Dataset
    test: Dataset


# ---- loading -------------------------------------------------------------------------------


def infer_task(values: pd.Series | np.ndarray) -> str:
    """``classification`` or ``regression`` for a target column.

    Text, booleans and categories are classes; numbers are a regression target when they take many distinct
    values: more than :data:`MAX_FLOAT_CLASSES` for floats with fractions, more than :data:`MAX_INT_CLASSES` for
    whole numbers (a float column of whole numbers, as pandas reads an integer column with gaps, counts as whole
    numbers). Fewer distinct numbers are class labels. ``--task`` overrides this.
    """
    import pandas as pd

    series = pd.Series(values)
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return "classification"
    numbers = series.dropna().to_numpy(dtype=np.float64)
    distinct = len(np.unique(numbers))
    whole = bool(np.all(np.isfinite(numbers)) and np.all(numbers == np.round(numbers)))
    return "regression" if distinct > (MAX_INT_CLASSES if whole else MAX_FLOAT_CLASSES) else "classification"


def check_task(task: str) -> str:
    """``task`` when it is ``auto``, ``classification`` or ``regression``, else a DataError naming the choices."""
    if task not in ("auto", *TASKS):
        raise DataError(f"task={task!r} is not supported; choose one of: auto, {', '.join(TASKS)}")
    return task


def check_target(labels: pd.Series, target: str, task: str = "auto") -> str:
    """The task of a target column (``task``, or inferred when ``auto``), or a DataError saying why the column
    cannot be that target: empty values, text for a regression, a single value or class."""
    if labels.isna().any():
        raise DataError(f"target column {target!r} has {int(labels.isna().sum())} empty values; fill or drop them")
    task = infer_task(labels) if check_task(task) == "auto" else task
    if task == "regression":
        regression_target(labels, target)
    elif labels.nunique() < 2:
        raise DataError(f"target column {target!r} has a single class {labels.iloc[0]!r}; need at least two")
    return task


def regression_target(labels: pd.Series, target: str) -> np.ndarray:
    """A target column as float32 regression targets, or a DataError saying why it cannot be one."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(labels) or not pd.api.types.is_numeric_dtype(labels):
        example = next((v for v in labels if not _is_number(v)), labels.iloc[0] if len(labels) else None)
        raise DataError(
            f"target column {target!r} holds text (e.g. {example!r:.40}), but task=regression needs numbers: "
            "convert the column to numbers, or use --task classification (or auto) to predict its values as classes"
        )
    y: np.ndarray = labels.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(y)):
        raise DataError(f"target column {target!r} has {int((~np.isfinite(y)).sum())} infinite values; drop them")
    if len(y) and np.ptp(y) == 0:
        raise DataError(
            f"target column {target!r} has a single value {y[0]:g} in every row; a regression needs a target that "
            "varies: choose another column"
        )
    if len(y) and np.abs(y).max() > np.finfo(np.float32).max / 2:
        raise DataError(f"target column {target!r} has values up to {np.abs(y).max():.3g}; rescale them below 1e38")
    return np.asarray(y, dtype=np.float32)


def _is_number(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def quantile_bins(y: np.ndarray, bins: int = QUANTILE_BINS) -> np.ndarray:
    """Each row's equal-count bin (0..bins-1) of a real-valued target: classes to stratify and skew splits by."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0:
        return np.zeros(0, dtype=np.int64)
    rank = np.empty(len(y), dtype=np.int64)
    rank[np.argsort(y, kind="stable")] = np.arange(len(y))
    return (rank * min(bins, len(y)) // len(y)).astype(np.int64)


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    method: str,
    *,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split row indices among ``num_partitions`` clients: ``iid``, ``dirichlet`` or ``pathological``.

    ``labels`` are class labels; for regression pass the target's quantile bins (:meth:`Dataset.strata`), so
    Dirichlet and pathological splits skew each client towards some ranges of the target.
    """
    if num_partitions < 1:
        raise DataError(f"num_partitions={num_partitions}; need at least 1")
    if len(labels) < num_partitions * MIN_PARTITION_SIZE:
        raise DataError(
            f"{len(labels)} rows cannot give {num_partitions} clients at least {MIN_PARTITION_SIZE} rows each; "
            "use fewer clients or more data"
        )
    rng = np.random.default_rng(seed)
    if method == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_partitions)]
    if method == "dirichlet":
        return _dirichlet(labels, num_partitions, alpha, rng)
    if method == "pathological":
        return _pathological(labels, num_partitions, classes_per_client, rng)
    raise DataError(f"partition={method!r} is not supported; choose one of: iid, dirichlet, pathological")


def _dirichlet(
    labels: np.ndarray, n: int, alpha: float, rng: np.random.Generator, tries: int = 100
) -> list[np.ndarray]:
    classes = np.unique(labels)
    for _ in range(tries):
        parts: list[list[int]] = [[] for _ in range(n)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(n, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= MIN_PARTITION_SIZE:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise DataError(
        f"Dirichlet(alpha={alpha}) gave a client fewer than {MIN_PARTITION_SIZE} rows in {tries} draws for "
        f"{n} clients and {len(labels)} rows; raise dirichlet-alpha or use fewer clients"
    )


def _pathological(labels: np.ndarray, n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    classes = np.unique(labels)
    if k > len(classes):
        raise DataError(f"classes-per-client={k} exceeds the {len(classes)} classes in the data; lower it")
    if n * k < len(classes):
        raise DataError(
            f"{n} clients x {k} classes each cannot cover all {len(classes)} classes; raise classes-per-client"
        )
    # Client i holds classes i*k .. i*k+k-1 (mod C): every class is held by someone, none is dropped.
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for i in range(n):
        for j in range(k):
            holders[int(classes[(i * k + j) % len(classes)])].append(i)
    parts: list[list[int]] = [[] for _ in range(n)]
    for c, owners in holders.items():
        idx = rng.permutation(np.flatnonzero(labels == c))
        for owner, chunk in zip(owners, np.array_split(idx, len(owners)), strict=True):
            parts[owner].extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


# ---- what clients and the server load ------------------------------------------------------


def local_split(data: Dataset, seed: int, val_fraction: float = 0.2) -> Split:
    """A client's own rows split into train and validation parts (a seeded random 20%)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.y))
    n_val = max(1, int(round(len(order) * val_fraction)))
    return Split(data.subset(np.sort(order[n_val:])), data.subset(np.sort(order[:n_val])))
