"""Datasets, tabular input and federated partitioners.

Bundled data come from scikit-learn (``digits``, ``breast_cancer``, ``wine``) or are generated
(the FedProx paper's Synthetic(alpha, beta)); user tables come from files, URLs or databases
(:mod:`uaap.data.loaders`) with a target column.
Nothing is downloaded at run time.

Partitioners are plain numpy (iid, Dirichlet, pathological k-classes). flwr-datasets was measured
here at ~2.5 s and ~245 MB per process import (it drags in HF ``datasets``) and its pathological
partitioner silently drops classes; these splitters take milliseconds and never drop a class.
"""

from __future__ import annotations

import functools
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from uaap.config import RunConfig
from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd  # imported where used at run time: `import uaap.data` stays cheap

    from uaap.data.loaders import ReadOptions

BUNDLED = ("digits", "breast_cancer", "wine")
MIN_PARTITION_SIZE = 4


@dataclass(frozen=True)
class Dataset:
    """Features (float32) and integer labels, with what a model needs to know about them."""

    name: str
    X: np.ndarray
    y: np.ndarray
    n_classes: int
    feature_names: tuple[str, ...]
    image_shape: tuple[int, int, int] | None = None

    @property
    def n_features(self) -> int:
        """Number of input features."""
        return int(self.X.shape[1])

    def subset(self, idx: np.ndarray) -> Dataset:
        """Rows ``idx`` of this dataset."""
        return Dataset(self.name, self.X[idx], self.y[idx], self.n_classes, self.feature_names, self.image_shape)


@dataclass(frozen=True)
class Split:
    """A train part and a held-out test part drawn from one dataset."""

    train: Dataset
    test: Dataset


# ---- loading -------------------------------------------------------------------------------


def load_bundled(name: str) -> Dataset:
    """Load a dataset that scikit-learn ships, unscaled."""
    from sklearn import datasets

    loaders = {
        "digits": datasets.load_digits,
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
    }
    if name not in loaders:
        raise DataError(f"dataset={name!r} is not bundled; choose one of: {', '.join(loaders)}")
    bunch = loaders[name]()
    X = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    names = tuple(str(n) for n in getattr(bunch, "feature_names", [f"f{i}" for i in range(X.shape[1])]))
    image_shape = (1, 8, 8) if name == "digits" else None
    return Dataset(name, X, y, int(y.max()) + 1, names, image_shape)


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
    return load_table(cfg.data_path, cfg.target, read_options(cfg))


def load_table(source: str | Path, target: str, options: ReadOptions | None = None) -> Dataset:
    """Load a table (file, URL or database: :func:`uaap.data.loaders.read_frame`); ``target`` names the label column.

    Numeric columns are used as they are; text columns with few distinct values are one-hot
    encoded; anything else is refused with the column named.
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
    classes, y = np.unique(labels.astype(str) if labels.dtype == object else labels, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"target column {target!r} has a single class {classes[0]!r}; need at least two")
    frame = _encode_features(frame)
    if frame.isna().any().any():
        bad = [c for c in frame.columns if frame[c].isna().any()]
        raise DataError(f"columns {', '.join(bad)} have missing values; impute or drop them before training")
    X = frame.to_numpy(dtype=np.float32)
    return Dataset(name, X, y.astype(np.int64), len(classes), tuple(map(str, frame.columns)))


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


# ---- splitting -------------------------------------------------------------------------------


def train_test(data: Dataset, test_fraction: float, seed: int) -> Split:
    """Stratified train/test split (plain random when a class is too small to stratify)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data.y))
    counts = np.bincount(data.y, minlength=data.n_classes)
    stratify = data.y if counts[counts > 0].min() >= 2 else None
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    return Split(data.subset(np.sort(tr)), data.subset(np.sort(te)))


def scale(split: Split, dataset: str) -> Split:
    """Scale features with statistics of the training part only.

    ``digits`` has a known 0..16 range; other data are standardised. For the bundled demo data the
    scaling statistics are treated as public federation metadata (a real deployment agrees on them
    up front, like the feature schema).
    """
    mean: np.float32 | np.ndarray
    std: np.float32 | np.ndarray
    if dataset == "digits":
        mean, std = np.float32(0.0), np.float32(16.0)
    else:
        mean = split.train.X.mean(axis=0)
        std = split.train.X.std(axis=0)
        std = np.where(std < 1e-8, 1.0, std).astype(np.float32)

    def apply(d: Dataset) -> Dataset:
        return Dataset(
            d.name, ((d.X - mean) / std).astype(np.float32), d.y, d.n_classes, d.feature_names, d.image_shape
        )

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
    """Split row indices among ``num_partitions`` clients: ``iid``, ``dirichlet`` or ``pathological``."""
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


def load_split(cfg: RunConfig) -> Split:
    """Train/test split of the configured (non-synthetic) dataset, scaled."""
    if cfg.dataset == "csv":
        data = load_config_table(cfg)
    elif cfg.dataset in BUNDLED:
        data = load_bundled(cfg.dataset)
    else:
        raise DataError(f"dataset={cfg.dataset!r} has no single table; it is generated per client")
    return scale(train_test(data, cfg.test_fraction, cfg.seed), cfg.dataset)


@functools.lru_cache(maxsize=4)
def federated(cfg: RunConfig, num_partitions: int) -> tuple[tuple[Split, ...], Dataset]:
    """Each client's (train, validation) split and the server's held-out test set.

    Cached per process: simulated ClientApps are rebuilt for every message.
    """
    if cfg.dataset == "synthetic":
        parts = synthetic(num_partitions, cfg.synthetic_alpha, cfg.synthetic_beta, cfg.seed)
        splits = tuple(train_test(p, cfg.test_fraction, cfg.seed + i) for i, p in enumerate(parts))
        test = _concat([s.test for s in splits])
        return splits, test
    split = load_split(cfg)
    indices = partition_indices(
        split.train.y,
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
    first = parts[0]
    return Dataset(
        first.name,
        np.concatenate([p.X for p in parts]),
        np.concatenate([p.y for p in parts]),
        first.n_classes,
        first.feature_names,
        first.image_shape,
    )


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
