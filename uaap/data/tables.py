"""A user's table from raw rows to model inputs: read it, split its rows, fit the preprocessor, transform.

Rows stay raw (missing values, text, dates) until a fitted :class:`~uaap.data.preprocess.Preprocessor` turns
them into a :class:`~uaap.data.Dataset`. Central training fits it on the train rows; a federation fits it from
the clients' summed statistics (``server/preprocess.py`` asks, each client answers from its own rows); a
simulation that has every client's rows in one process reaches the same plan with
:func:`~uaap.data.preprocess.fit_parties`. The fitted plan travels with the data (``Dataset.preprocessor``),
the saved model, the checkpoint and the exports.
"""

from __future__ import annotations

import functools
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from uaap.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from uaap.config import RunConfig
    from uaap.data.core import Dataset, Split
    from uaap.data.loaders import ReadOptions
    from uaap.data.preprocess import PreprocessOptions, Preprocessor


@dataclass(frozen=True)
class RawTable:
    """A table as read: every column (the target included), rows untouched."""

    name: str
    frame: pd.DataFrame
    target: str

    @property
    def features(self) -> list[str]:
        """Every column but the target."""
        return [str(c) for c in self.frame.columns if c != self.target]

    def subset(self, idx: np.ndarray) -> RawTable:
        """Rows ``idx`` (positions) of this table."""
        return RawTable(self.name, self.frame.iloc[np.asarray(idx)].reset_index(drop=True), self.target)

    def __len__(self) -> int:
        return len(self.frame)


def read_raw(source: str | Path, target: str, options: ReadOptions | None = None) -> RawTable:
    """Read a table (file, URL or database) and check that it has rows and the ``target`` column."""
    from uaap.data.loaders import read_frame, shown

    frame = read_frame(source, options)
    frame.columns = [str(c) for c in frame.columns]
    where = shown(str(source))
    if target not in frame.columns:
        raise DataError(
            f"target column {target!r} is not in {where}; its columns are: {', '.join(map(str, frame.columns))}"
        )
    if len(frame) == 0:
        raise DataError(f"{where} has a header but no rows; give a table with data")
    if len(frame.columns) < 2:
        raise DataError(f"{where} has only the target column {target!r}; a model needs at least one feature column")
    name = Path(urllib.parse.urlsplit(str(source)).path).stem or "table"
    return RawTable(name, frame, target)


def read_config_table(cfg: RunConfig) -> RawTable:
    """The table of a ``dataset=csv`` run, read as its configuration says (cached: clients ask per message)."""
    return _cached_read(cfg.data_path, cfg.target, cfg.data_table, cfg.data_query, cfg.data_sep, cfg.data_encoding,
                        cfg.data_decimal)  # fmt: skip


@functools.lru_cache(maxsize=4)
def _cached_read(path: str, target: str, table: str, query: str, sep: str, encoding: str, decimal: str) -> RawTable:
    from uaap.data.loaders import ReadOptions

    options = ReadOptions(table=table, query=query, sep=sep or None, encoding=encoding, decimal=decimal)
    return read_raw(path, target, options)


def preprocess_options(cfg: RunConfig) -> PreprocessOptions:
    """The run's preprocessing settings."""
    from uaap.data.preprocess import PreprocessOptions

    return PreprocessOptions(
        impute=cfg.impute,  # type: ignore[arg-type]  # the schema's choices are the Literal's values
        fill_value=cfg.fill_value,
        outliers=cfg.outliers,  # type: ignore[arg-type]
        encoding=cfg.encoding,  # type: ignore[arg-type]
        max_categories=cfg.max_categories,
        scaling=cfg.scaling,  # type: ignore[arg-type]
        text=cfg.text_columns,  # type: ignore[arg-type]
        drop=tuple(c.strip() for c in cfg.drop_columns.split(",") if c.strip()),
        polynomial=cfg.polynomial,
    )


def strata(raw: RawTable, task: str) -> np.ndarray:
    """A label per row to stratify and skew splits by: the class, or the target's quantile bin (regression)."""
    from uaap.data.core import infer_task, quantile_bins
    from uaap.data.preprocess import label_text

    y = raw.frame[raw.target]
    if y.isna().any():
        raise DataError(f"target column {raw.target!r} has {int(y.isna().sum())} empty values; fill or drop those rows")
    if (infer_task(y) if task == "auto" else task) == "regression":
        import pandas as pd

        return quantile_bins(pd.to_numeric(y, errors="coerce").fillna(0).to_numpy(dtype=np.float64))
    return np.unique(y.map(label_text).to_numpy(dtype=str), return_inverse=True)[1].astype(np.int64)


def split_rows(raw: RawTable, test_fraction: float, seed: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row positions, stratified (plain random when a stratum is too small)."""
    from sklearn.model_selection import train_test_split

    labels = strata(raw, task)
    counts = np.bincount(labels)
    n_test = int(np.ceil(test_fraction * len(raw)))
    if len(raw) - n_test < 2 or n_test < 1:
        raise DataError(
            f"{len(raw)} rows cannot give a train and a test part (test-fraction={test_fraction:g}); "
            "give more rows or another test-fraction"
        )
    stratified = counts[counts > 0].min() >= 2 and n_test >= (counts > 0).sum() <= len(raw) - n_test
    stratify = labels if stratified else None  # plain random when a class is too small to stratify
    tr, te = train_test_split(np.arange(len(raw)), test_size=test_fraction, random_state=seed, stratify=stratify)
    return np.sort(tr), np.sort(te)


def fit(parts: list[RawTable], cfg: RunConfig) -> Preprocessor:
    """The preprocessor of ``parts`` fitted together, as a federation of these parties would fit it."""
    from uaap.data.preprocess import fit_parties

    first = parts[0]
    return fit_parties([p.frame for p in parts], first.features, preprocess_options(cfg), target=first.target,
                       task=cfg.task)  # fmt: skip


def to_dataset(raw: RawTable, pre: Preprocessor, text: str = "") -> Dataset:
    """Model inputs of ``raw`` through ``pre``; ``text`` is ``pre`` as JSON (computed when not given)."""
    from uaap.data.core import Dataset

    X = pre.transform(raw.frame)
    y = pre.encode_target(raw.frame[raw.target])
    names = tuple(map(str, pre.get_feature_names_out()))
    target = pre.target_
    assert target is not None  # fitted with the table's target
    return Dataset(
        raw.name,
        X,
        y,
        pre.n_outputs,
        names,
        task=pre.task,
        target_mean=target.mean,
        target_std=target.std,
        preprocessor=text or pre.dumps(),
    )


@functools.lru_cache(maxsize=4)
def raw_parts(cfg: RunConfig, num_partitions: int) -> tuple[tuple[RawTable, ...], RawTable]:
    """Each simulated client's raw rows (the train rows split as ``cfg.partition`` says) and the held-out rows."""
    from uaap.data.core import partition_indices

    raw = read_config_table(cfg)
    tr, te = split_rows(raw, cfg.test_fraction, cfg.seed, cfg.task)
    train = raw.subset(tr)
    indices = partition_indices(
        strata(train, cfg.task),
        num_partitions,
        cfg.partition,
        alpha=cfg.dirichlet_alpha,
        classes_per_client=cfg.classes_per_client,
        seed=cfg.seed,
    )
    return tuple(train.subset(idx) for idx in indices), raw.subset(te)


def table_split(cfg: RunConfig, preprocessor: str = "") -> Split:
    """Train and test rows of the run's table through ``preprocessor`` (JSON), or one fitted on the train rows."""
    from uaap.data.core import Split, check_target
    from uaap.data.preprocess import Preprocessor

    raw = read_config_table(cfg)
    task = check_target(raw.frame[raw.target], raw.target, cfg.task)
    tr, te = split_rows(raw, cfg.test_fraction, cfg.seed, task)
    train, test = raw.subset(tr), raw.subset(te)
    pre = Preprocessor.loads(preprocessor) if preprocessor else fit([train], cfg.replace(task=task))
    text = preprocessor or pre.dumps()
    return Split(to_dataset(train, pre, text), to_dataset(test, pre, text))


@functools.lru_cache(maxsize=4)
def federated_split(cfg: RunConfig, num_partitions: int, preprocessor: str = "") -> tuple[tuple[Split, ...], Dataset]:
    """Each simulated client's (train, validation) data and the held-out test set, through ``preprocessor``
    (the federation's plan as JSON) or, without one, the plan the clients' rows give (the same plan)."""
    from uaap.data.core import local_split
    from uaap.data.preprocess import Preprocessor

    parts, test = raw_parts(cfg, num_partitions)
    pre = Preprocessor.loads(preprocessor) if preprocessor else fit(list(parts), cfg)
    text = preprocessor or pre.dumps()
    clients = tuple(local_split(to_dataset(p, pre, text), cfg.seed + i) for i, p in enumerate(parts))
    return clients, to_dataset(test, pre, text)
