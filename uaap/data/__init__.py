"""Datasets, tabular input and federated partitioners.

Bundled data come from scikit-learn (classification: ``digits``, ``breast_cancer``, ``wine``; regression:
``diabetes``) or are generated (the FedProx paper's Synthetic(alpha, beta) for classification, Friedman #1
for regression: ``friedman``); user tables come from files, URLs or databases (:mod:`uaap.data.loaders`)
with a target column. Nothing is downloaded at run time.

The task is a property of the data: a :class:`Dataset` is ``classification`` (integer labels 0..K-1, a model
with K outputs) or ``regression`` (float targets in their own units, a model with one output). A table's task
is inferred from its target (:func:`infer_task`) unless the run says ``task``. Regression targets are
standardised for training with the train split's mean and standard deviation (:func:`target_scaling`, kept on
the Dataset), and predictions are mapped back, so every metric is in the target's own units.

Partitioners are plain numpy (iid, Dirichlet, pathological k-classes). flwr-datasets was measured
here at ~2.5 s and ~245 MB per process import (it drags in HF ``datasets``) and its pathological
partitioner silently drops classes; these splitters take milliseconds and never drop a class.
"""

from __future__ import annotations

import functools
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.config import RunConfig
from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd  # imported where used at run time: `import uaap.data` stays cheap

    from uaap.data.loaders import ReadOptions

REGRESSION_BUNDLED = ("diabetes", "friedman")
BUNDLED = ("digits", "breast_cancer", "wine", *REGRESSION_BUNDLED)
TASKS = ("classification", "regression")
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


def load_bundled(name: str) -> Dataset:
    """Load a dataset that scikit-learn ships (or ``friedman``, generated with a fixed seed), unscaled."""
    from sklearn import datasets

    loaders = {
        "digits": datasets.load_digits,
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "diabetes": datasets.load_diabetes,
    }
    if name == "friedman":
        return friedman()
    if name not in loaders:
        raise DataError(f"dataset={name!r} is not bundled; choose one of: {', '.join(BUNDLED)}")
    bunch = loaders[name]()
    if name in REGRESSION_BUNDLED:
        X = np.asarray(bunch.data, dtype=np.float32)
        names = tuple(str(n) for n in bunch.feature_names)
        return Dataset(name, X, np.asarray(bunch.target, dtype=np.float32), 1, names, task="regression")
    X = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    names = tuple(str(n) for n in getattr(bunch, "feature_names", [f"f{i}" for i in range(X.shape[1])]))
    image_shape = (1, 8, 8) if name == "digits" else None
    return Dataset(name, X, y, int(y.max()) + 1, names, image_shape)


def friedman(n_samples: int = 1000, noise: float = 1.0, seed: int = 0) -> Dataset:
    """Friedman #1 (scikit-learn's ``make_friedman1``): 10 uniform features, 5 of them informative, y in ~[0, 30]."""
    from sklearn.datasets import make_friedman1

    X, y = make_friedman1(n_samples=n_samples, n_features=10, noise=noise, random_state=seed)
    names = tuple(f"x{i}" for i in range(10))
    return Dataset("friedman", X.astype(np.float32), y.astype(np.float32), 1, names, task="regression")


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


def read_options(cfg: RunConfig) -> ReadOptions:
    """How ``cfg`` says its table is read (delimiter, encoding, decimal mark, database table or query)."""
    from uaap.data.loaders import ReadOptions

    return ReadOptions(
        table=cfg.data_table,
        query=cfg.data_query,
        sep=cfg.data_sep or None,
        encoding=cfg.data_encoding,
        decimal=cfg.data_decimal,
    )


def load_config_table(cfg: RunConfig) -> Dataset:
    """The table of a ``dataset=csv`` run, read as its configuration says."""
    return load_table(cfg.data_path, cfg.target, read_options(cfg), task=cfg.task)


def load_table(source: str | Path, target: str, options: ReadOptions | None = None, task: str = "auto") -> Dataset:
    """Load a table (file, URL or database: :func:`uaap.data.loaders.read_frame`); ``target`` names the label column.

    Numeric columns are used as they are; text columns with few distinct values are one-hot
    encoded; anything else is refused with the column named. ``task`` is ``auto`` (inferred from the
    target: :func:`infer_task`), ``classification`` or ``regression``.
    """
    from uaap.data.loaders import read_frame, shown

    frame = read_frame(source, options)
    name = Path(urllib.parse.urlsplit(str(source)).path).stem or "table"
    if target not in frame.columns:
        raise DataError(
            f"target column {target!r} is not in {shown(str(source))}; its columns are: "
            f"{', '.join(map(str, frame.columns))}"
        )
    labels = frame.pop(target)
    if labels.isna().any():
        raise DataError(f"target column {target!r} has {int(labels.isna().sum())} empty values; fill or drop them")
    task = infer_task(labels) if check_task(task) == "auto" else task
    frame = _encode_features(frame)
    if frame.isna().any().any():
        bad = [c for c in frame.columns if frame[c].isna().any()]
        raise DataError(f"columns {', '.join(bad)} have missing values; impute or drop them before training")
    X = frame.to_numpy(dtype=np.float32)
    features = tuple(map(str, frame.columns))
    if task == "regression":
        return Dataset(name, X, regression_target(labels, target), 1, features, task="regression")
    classes, y = np.unique(labels.astype(str) if labels.dtype == object else labels, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"target column {target!r} has a single class {classes[0]!r}; need at least two")
    return Dataset(name, X, y.astype(np.int64), len(classes), features)


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


def _encode_features(frame: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    assert isinstance(frame, pd.DataFrame)
    text_cols = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    for col in text_cols:
        n_unique = frame[col].nunique(dropna=True)
        if n_unique > 50:
            raise DataError(
                f"feature column {col!r} is non-numeric with {n_unique} distinct values; "
                "only text columns with at most 50 categories are one-hot encoded: convert or drop it"
            )
    if text_cols:
        frame = pd.get_dummies(frame, columns=text_cols, dtype=np.float32)
    return frame


def synthetic(
    num_clients: int, alpha: float = 1.0, beta: float = 1.0, seed: int = 0, dim: int = 60, n_classes: int = 10
) -> list[Dataset]:
    """The FedProx paper's Synthetic(alpha, beta): one heterogeneous dataset per client.

    ``alpha`` controls how much local models differ, ``beta`` how much local data differ
    (Li et al., 2020, section 5.1). Sizes follow a power law as in the paper's generator.
    """
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.lognormal(4, 2, num_clients).astype(int) + 50, 1000)
    cov = np.diag(np.arange(1, dim + 1, dtype=np.float64) ** -1.2)
    names = tuple(f"x{i}" for i in range(dim))
    parts = []
    for k in range(num_clients):
        u_k = rng.normal(0, alpha)
        b_k = rng.normal(0, beta)
        W = rng.normal(u_k, 1, (dim, n_classes))
        b = rng.normal(u_k, 1, n_classes)
        v_k = rng.normal(b_k, 1, dim)
        X = rng.multivariate_normal(v_k, cov, sizes[k])
        y = np.argmax(X @ W + b, axis=1)
        parts.append(Dataset("synthetic", X.astype(np.float32), y.astype(np.int64), n_classes, names))
    return parts


def quantile_bins(y: np.ndarray, bins: int = QUANTILE_BINS) -> np.ndarray:
    """Each row's equal-count bin (0..bins-1) of a real-valued target: classes to stratify and skew splits by."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0:
        return np.zeros(0, dtype=np.int64)
    rank = np.empty(len(y), dtype=np.int64)
    rank[np.argsort(y, kind="stable")] = np.arange(len(y))
    return (rank * min(bins, len(y)) // len(y)).astype(np.int64)


def target_meta(data: Dataset) -> dict[str, Any]:
    """What a saved model needs to say about its target: the task, and for regression the target's scaling."""
    if not data.regression:
        return {"task": data.task}
    return {"task": data.task, "target_mean": data.target_mean, "target_std": data.target_std}


# ---- splitting -------------------------------------------------------------------------------


def train_test(data: Dataset, test_fraction: float, seed: int) -> Split:
    """Stratified train/test split (by quantile bin for regression; plain random when a stratum is too small)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data.y))
    strata = data.strata()
    counts = np.bincount(strata)
    stratify = strata if counts[counts > 0].min() >= 2 else None
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    return Split(data.subset(np.sort(tr)), data.subset(np.sort(te)))


def target_scaling(y: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation a regression model's output is standardised with (train rows only).

    The one place regression targets are scaled: :func:`scale` calls it, and the federated preprocessor can
    replace it with the same statistics computed from the clients' summed ``n``, ``sum y`` and ``sum y^2``.
    """
    y = np.asarray(y, dtype=np.float64)
    std = float(y.std()) if len(y) else 1.0
    return (float(y.mean()) if len(y) else 0.0), (std if std > 1e-12 else 1.0)


def scale(split: Split, dataset: str) -> Split:
    """Scale features (and, for regression, record the target's scaling) with statistics of the training part only.

    ``digits`` has a known 0..16 range; other data are standardised. For the bundled demo data the
    scaling statistics are treated as public federation metadata (a real deployment agrees on them
    up front, like the feature schema). Regression targets stay in their units on the Dataset; their
    mean and std (:func:`target_scaling`) travel with it for training and for mapping predictions back.
    """
    mean: np.float32 | np.ndarray
    std: np.float32 | np.ndarray
    if dataset == "digits":
        mean, std = np.float32(0.0), np.float32(16.0)
    else:
        mean = split.train.X.mean(axis=0)
        std = split.train.X.std(axis=0)
        std = np.where(std < 1e-8, 1.0, std).astype(np.float32)

    y_mean, y_std = target_scaling(split.train.y) if split.train.regression else (0.0, 1.0)

    def apply(d: Dataset) -> Dataset:
        return replace(d, X=((d.X - mean) / std).astype(np.float32), target_mean=y_mean, target_std=y_std)

    return Split(apply(split.train), apply(split.test))


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


def load_data(cfg: RunConfig) -> Dataset:
    """The configured (non-synthetic) dataset, unscaled, of the task the run asks for."""
    if cfg.dataset == "csv":
        return load_config_table(cfg)
    if cfg.dataset in BUNDLED:
        data = load_bundled(cfg.dataset)
        if cfg.task not in ("auto", data.task):
            raise DataError(
                f"task={cfg.task!r} does not fit dataset={cfg.dataset!r}, a {data.task} data set: use --task "
                f"{data.task} (or auto), or a {cfg.task} data set ("
                + ", ".join(d for d in BUNDLED if (d in REGRESSION_BUNDLED) == (cfg.task == "regression"))
                + ")"
            )
        return data
    if cfg.task == "regression":
        raise DataError(f"dataset={cfg.dataset!r} is a classification data set; regression data: diabetes, friedman")
    raise DataError(f"dataset={cfg.dataset!r} has no single table; it is generated per client")


def load_split(cfg: RunConfig) -> Split:
    """Train/test split of the configured (non-synthetic) dataset, scaled."""
    return scale(train_test(load_data(cfg), cfg.test_fraction, cfg.seed), cfg.dataset)


@functools.lru_cache(maxsize=4)
def federated(cfg: RunConfig, num_partitions: int) -> tuple[tuple[Split, ...], Dataset]:
    """Each client's (train, validation) split and the server's held-out test set.

    Cached per process: simulated ClientApps are rebuilt for every message.
    """
    if cfg.dataset == "synthetic":
        if cfg.task == "regression":
            raise DataError("dataset='synthetic' is a classification data set; regression data: diabetes, friedman")
        parts = synthetic(num_partitions, cfg.synthetic_alpha, cfg.synthetic_beta, cfg.seed)
        splits = tuple(train_test(p, cfg.test_fraction, cfg.seed + i) for i, p in enumerate(parts))
        test = _concat([s.test for s in splits])
        return splits, test
    split = load_split(cfg)
    indices = partition_indices(
        split.train.strata(),
        num_partitions,
        cfg.partition,
        alpha=cfg.dirichlet_alpha,
        classes_per_client=cfg.classes_per_client,
        seed=cfg.seed,
    )
    clients = tuple(_local_split(split.train.subset(idx), cfg.seed + i) for i, idx in enumerate(indices))
    return clients, split.test


def _local_split(data: Dataset, seed: int, val_fraction: float = 0.2) -> Split:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.y))
    n_val = max(1, int(round(len(order) * val_fraction)))
    return Split(data.subset(np.sort(order[n_val:])), data.subset(np.sort(order[:n_val])))


def _concat(parts: list[Dataset]) -> Dataset:
    return replace(parts[0], X=np.concatenate([p.X for p in parts]), y=np.concatenate([p.y for p in parts]))


def client_data(cfg: RunConfig, partition_id: int, num_partitions: int) -> Split:
    """The private (train, validation) data of one simulated client."""
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"partition-id={partition_id} is outside 0..{num_partitions - 1}")
    return federated(cfg, num_partitions)[0][partition_id]


def describe(cfg: RunConfig) -> Dataset:
    """A small sample carrying the dataset's shape metadata (features, classes, image shape)."""
    if cfg.dataset == "synthetic":
        return synthetic(1, cfg.synthetic_alpha, cfg.synthetic_beta, cfg.seed)[0]
    return load_split(cfg).test
