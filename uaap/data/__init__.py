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
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.config import RunConfig
from uaap.data.core import (
    MAX_FLOAT_CLASSES,
    MAX_INT_CLASSES,
    MIN_PARTITION_SIZE,
    QUANTILE_BINS,
    TASKS,
    Dataset,
    Split,
    check_target,
    check_task,
    infer_task,
    local_split,
    partition_indices,
    quantile_bins,
    regression_target,
)
from uaap.errors import DataError

if TYPE_CHECKING:
    from uaap.data.loaders import ReadOptions

__all__ = [  # the package's public names, those of uaap.data.core re-exported
    "BUNDLED",
    "check_target",
    "check_task",
    "client_data",
    "Dataset",
    "describe",
    "estimator_meta",
    "feature_scaling",
    "federated",
    "friedman",
    "infer_task",
    "anomaly_labels",
    "load_bundled",
    "load_config_table",
    "load_data",
    "load_split",
    "load_table",
    "local_split",
    "MAX_FLOAT_CLASSES",
    "MAX_INT_CLASSES",
    "MIN_PARTITION_SIZE",
    "normal_rows",
    "partition_indices",
    "quantile_bins",
    "QUANTILE_BINS",
    "read_options",
    "REGRESSION_BUNDLED",
    "regression_target",
    "scale",
    "Split",
    "synthetic",
    "target_meta",
    "target_scaling",
    "TASKS",
    "train_test",
]

REGRESSION_BUNDLED = ("diabetes", "friedman")
BUNDLED = ("digits", "breast_cancer", "wine", *REGRESSION_BUNDLED)


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
    """The table of a ``dataset=csv`` run, read and preprocessed as its configuration says (fitted on all rows)."""
    return load_table(cfg.data_path, cfg.target, read_options(cfg), task=cfg.task, settings=cfg)


def load_table(
    source: str | Path,
    target: str,
    options: ReadOptions | None = None,
    task: str = "auto",
    preprocessor: str = "",
    settings: RunConfig | None = None,
) -> Dataset:
    """Load a table (file, URL or database: :func:`uaap.data.loaders.read_frame`); ``target`` names the label column.

    Raw rows go through the preprocessing pipeline (:mod:`uaap.data.preprocess`: missing values, outliers,
    categories, dates, scaling): ``preprocessor`` is a fitted plan as JSON (a run's, so that these rows are
    encoded as its model expects), or one is fitted on all these rows with the preprocessing ``settings`` of a
    run config (defaults without one). ``task`` is ``auto`` (inferred from the target: :func:`infer_task`),
    ``classification`` or ``regression``.
    """
    from uaap.data.preprocess import Preprocessor
    from uaap.data.tables import fit, read_raw, to_dataset

    raw = read_raw(source, target, options)
    if preprocessor:
        return to_dataset(raw, Preprocessor.loads(preprocessor))
    task = check_target(raw.frame[target], target, task)
    cfg = (settings or RunConfig()).replace(task=task)
    return to_dataset(raw, fit([raw], cfg))


def synthetic(
    num_clients: int,
    alpha: float = 1.0,
    beta: float = 1.0,
    seed: int = 0,
    dim: int = 60,
    n_classes: int = 10,
    size: int = 0,
    shared_model: bool = False,
) -> list[Dataset]:
    """The FedProx paper's Synthetic(alpha, beta): one heterogeneous dataset per client.

    ``alpha`` controls how much local models differ, ``beta`` how much local data differ
    (Li et al., 2020, section 5.1). Sizes follow a power law as in the paper's generator, or with ``size`` > 0
    are uniform in ``size // 2 .. size + size // 2`` (at least 2): a cross-device population of small clients.
    ``shared_model`` labels every client with one ``W, b`` (``alpha`` unused; the paper's Synthetic IID when
    ``beta`` is 0 too), so one global model fits all clients while features still differ with ``beta``.
    """
    rng = np.random.default_rng(seed)
    if size > 0:
        sizes = rng.integers(max(2, size // 2), max(2, size + size // 2) + 1, num_clients)
    else:
        sizes = np.minimum(rng.lognormal(4, 2, num_clients).astype(int) + 50, 1000)
    cov = np.diag(np.arange(1, dim + 1, dtype=np.float64) ** -1.2)
    names = tuple(f"x{i}" for i in range(dim))
    parts = []
    shared = (rng.normal(0, 1, (dim, n_classes)), rng.normal(0, 1, n_classes)) if shared_model else None
    for k in range(num_clients):
        u_k = 0.0 if shared else rng.normal(0, alpha)
        b_k = rng.normal(0, beta)
        W, b = shared or (rng.normal(u_k, 1, (dim, n_classes)), rng.normal(u_k, 1, n_classes))
        v_k = rng.normal(b_k, 1, dim)
        if size > 0:  # the same law drawn directly (the covariance is diagonal): 1000s of clients in a second
            X = v_k + rng.standard_normal((sizes[k], dim)) * np.sqrt(np.diag(cov))
        else:  # the paper's draw, kept draw for draw
            X = rng.multivariate_normal(v_k, cov, sizes[k])
        y = np.argmax(X @ W + b, axis=1)
        parts.append(Dataset("synthetic", X.astype(np.float32), y.astype(np.int64), n_classes, names))
    return parts


def estimator_meta(
    family: str, params: Mapping[str, Any], cfg: RunConfig, data: Dataset, run_id: str, **extra: Any
) -> dict[str, Any]:
    """What a saved estimator (``model.skops``) says about itself and its data: family and parameters, the data's
    shape, source and target (:func:`target_meta`), and ``extra`` (tree counts, an anomaly threshold)."""
    return {
        "family": family,
        "params": dict(params),
        "n_features": data.n_features,
        "n_classes": data.n_classes,
        "feature_names": list(data.feature_names),
        "dataset": cfg.dataset,
        "data_path": cfg.data_path,
        "target": cfg.target,
        "run_id": run_id,
        **target_meta(data),
        **extra,
    }


def target_meta(data: Dataset) -> dict[str, Any]:
    """What a saved model needs to say about its target (the task, and for regression the target's scaling) and,
    for a raw table, its fitted preprocessing plan (raw rows in)."""
    import json

    plan = {"preprocessor": json.loads(data.preprocessor)} if data.preprocessor else {}
    if not data.regression:
        return {"task": data.task, **plan}
    return {"task": data.task, "target_mean": data.target_mean, "target_std": data.target_std, **plan}


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


def feature_scaling(train_X: np.ndarray, dataset: str) -> tuple[np.float32 | np.ndarray, np.float32 | np.ndarray]:
    """The mean and std :func:`scale` standardises a bundled table's features with (float32, from train rows).

    A served model applies the same to raw rows: ``(x - mean) / std`` in float32 reproduces the training inputs.
    """
    if dataset == "digits":
        return np.float32(0.0), np.float32(16.0)
    std = train_X.std(axis=0)
    return train_X.mean(axis=0), np.where(std < 1e-8, 1.0, std).astype(np.float32)


def scale(split: Split, dataset: str) -> Split:
    """Scale features (and, for regression, record the target's scaling) with statistics of the training part only.

    ``digits`` has a known 0..16 range; other data are standardised. For the bundled demo data the
    scaling statistics are treated as public federation metadata (a real deployment agrees on them
    up front, like the feature schema). Regression targets stay in their units on the Dataset; their
    mean and std (:func:`target_scaling`) travel with it for training and for mapping predictions back.
    """
    mean, std = feature_scaling(split.train.X, dataset)
    y_mean, y_std = target_scaling(split.train.y) if split.train.regression else (0.0, 1.0)

    def apply(d: Dataset) -> Dataset:
        return replace(d, X=((d.X - mean) / std).astype(np.float32), target_mean=y_mean, target_std=y_std)

    return Split(apply(split.train), apply(split.test))


def anomaly_labels(data: Dataset) -> Dataset:
    """A two-class data set as an anomaly task: the rarer class becomes label 1 (anomaly), the other 0 (normal)."""
    if data.task != "classification" or data.n_classes != 2:
        raise DataError(
            f"task='anomaly' needs a two-class target (normal and anomalous rows); {data.name!r} is "
            f"{'a regression data set' if data.regression else f'{data.n_classes} classes'}: use breast_cancer "
            "(malignant rows are the anomalies)"
        )
    counts = np.bincount(np.asarray(data.y, dtype=np.int64), minlength=2)
    rare = int(np.argmin(counts))  # a tie: class 0 is the anomaly
    return replace(data, y=(data.y == rare).astype(np.int64), task="anomaly")


def normal_rows(data: Dataset) -> Dataset:
    """What an anomaly detector trains on: the rows labelled normal (0); other tasks' data unchanged.

    The label is known, so the autoencoder learns what normal looks like from normal rows only (novelty
    detection); validation and test splits keep every row, so the threshold and the metrics see anomalies too.
    """
    return data.subset(np.flatnonzero(data.y == 0)) if data.task == "anomaly" else data


def _check_anomaly_source(cfg: RunConfig) -> None:
    if cfg.task == "anomaly" and cfg.dataset not in BUNDLED:
        raise DataError(
            f"task='anomaly' runs on a bundled two-class data set (breast_cancer), not dataset={cfg.dataset!r} "
            "yet: an anomaly label in your own table is not supported"
        )


def load_data(cfg: RunConfig) -> Dataset:
    """The configured (non-synthetic) dataset, unscaled, of the task the run asks for."""
    _check_anomaly_source(cfg)
    if cfg.dataset == "csv":
        return load_config_table(cfg)
    if cfg.dataset in BUNDLED:
        data = load_bundled(cfg.dataset)
        if cfg.task == "anomaly":
            return anomaly_labels(data)
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


def load_split(cfg: RunConfig, preprocessor: str = "") -> Split:
    """Train/test split of the configured (non-synthetic) dataset, scaled.

    Your table (``dataset=csv``) goes through the preprocessing pipeline: ``preprocessor`` (a fitted plan as
    JSON, e.g. the federation's) or one fitted on the train rows.
    """
    _check_anomaly_source(cfg)
    if cfg.task == "forecast":  # every series' lag windows (uaap.forecast.series)
        from uaap.forecast.series import load, series_split

        return series_split(load(cfg), cfg)
    if cfg.dataset == "csv":
        from uaap.data.tables import table_split

        return table_split(cfg, preprocessor)
    return scale(train_test(load_data(cfg), cfg.test_fraction, cfg.seed), cfg.dataset)


@functools.lru_cache(maxsize=4)
def federated(cfg: RunConfig, num_partitions: int, preprocessor: str = "") -> tuple[tuple[Split, ...], Dataset]:
    """Each client's (train, validation) split and the server's held-out test set.

    Cached per process: simulated ClientApps are rebuilt for every message. Your table (``dataset=csv``) is
    split into raw rows per client, then preprocessed by ``preprocessor`` (the plan the federation fitted, as
    JSON) or, without one, by the plan these clients' rows give (:func:`uaap.data.tables.fit`: the same).
    """
    _check_anomaly_source(cfg)
    if cfg.task == "forecast":  # each client's series, cut into lag windows (uaap.forecast.series)
        from uaap.forecast.series import federated as series_federated

        return series_federated(cfg, num_partitions)
    if cfg.dataset == "csv":
        from uaap.data.tables import federated_split

        return federated_split(cfg, num_partitions, preprocessor)
    if cfg.dataset == "synthetic":
        if cfg.task == "regression":
            raise DataError("dataset='synthetic' is a classification data set; regression data: diabetes, friedman")
        parts = synthetic(
            num_partitions,
            cfg.synthetic_alpha,
            cfg.synthetic_beta,
            cfg.seed,
            size=cfg.synthetic_size,
            shared_model=cfg.synthetic_shared_model,
        )
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
    clients = tuple(local_split(split.train.subset(idx), cfg.seed + i) for i, idx in enumerate(indices))
    return tuple(Split(normal_rows(c.train), c.test) for c in clients), split.test  # anomaly: train on normal rows


def _concat(parts: list[Dataset]) -> Dataset:
    return replace(parts[0], X=np.concatenate([p.X for p in parts]), y=np.concatenate([p.y for p in parts]))


def client_data(cfg: RunConfig, partition_id: int, num_partitions: int, preprocessor: str = "") -> Split:
    """The private (train, validation) data of one simulated client (``preprocessor``: see :func:`federated`)."""
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"partition-id={partition_id} is outside 0..{num_partitions - 1}")
    return federated(cfg, num_partitions, preprocessor)[0][partition_id]


def describe(cfg: RunConfig) -> Dataset:
    """A small sample carrying the dataset's shape metadata (features, classes, image shape)."""
    if cfg.dataset == "synthetic":
        return synthetic(
            1,
            cfg.synthetic_alpha,
            cfg.synthetic_beta,
            cfg.seed,
            size=cfg.synthetic_size,
            shared_model=cfg.synthetic_shared_model,
        )[0]
    return load_split(cfg).test
