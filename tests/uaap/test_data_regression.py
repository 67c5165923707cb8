"""Regression data: bundled sets, task inference and override, target scaling, splits over the target's range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from uaap.config import RunConfig
from uaap.data import (
    federated,
    infer_task,
    load_bundled,
    load_split,
    load_table,
    partition_indices,
    quantile_bins,
    target_scaling,
)
from uaap.errors import DataError


@pytest.mark.parametrize(("name", "rows", "features"), [("diabetes", 442, 10), ("friedman", 1000, 10)])
def test_bundled_regression_sets_have_float_targets_and_one_output(name: str, rows: int, features: int) -> None:
    data = load_bundled(name)
    assert data.task == "regression" and data.regression and data.n_classes == 1
    assert data.X.shape == (rows, features) and data.y.dtype == np.float32 and len(np.unique(data.y)) > 50
    assert np.array_equal(load_bundled(name).y, data.y), "generated data must be the same every time"


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (np.random.default_rng(0).normal(size=200), "regression"),  # floats, many values
        (np.arange(200) % 7, "classification"),  # few whole numbers
        (np.arange(200), "regression"),  # many whole numbers (counts, amounts)
        (np.arange(200) % 30 + 0.0, "classification"),  # an integer column pandas read as floats
        (np.arange(200) % 30 + 0.5, "regression"),  # fractions, more than 20 values
        (np.array(["a", "b"] * 100), "classification"),
        (np.array([True, False] * 100), "classification"),
    ],
)
def test_task_is_inferred_from_the_target(values: np.ndarray, task: str) -> None:
    assert infer_task(values) == task


def _table(tmp_path: Path, target: pd.Series) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=len(target)), "b": rng.normal(size=len(target)), "y": target})
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_float_target_loads_as_regression_in_its_own_units(tmp_path: Path) -> None:
    y = pd.Series(np.random.default_rng(1).normal(100.0, 15.0, 120))
    data = load_table(_table(tmp_path, y), "y")
    assert data.task == "regression" and data.n_classes == 1
    np.testing.assert_allclose(data.y, y.to_numpy(), rtol=1e-6)
    assert load_table(_table(tmp_path, y), "y", task="classification").n_classes == 120  # forced: every value a class


def test_task_override_turns_few_whole_numbers_into_a_regression_target(tmp_path: Path) -> None:
    y = pd.Series(np.arange(120) % 5)
    assert load_table(_table(tmp_path, y), "y").task == "classification"
    data = load_table(_table(tmp_path, y), "y", task="regression")
    assert data.task == "regression" and data.y.dtype == np.float32


def test_regression_on_a_text_target_names_the_column_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"target column 'y' holds text \(e.g. 'cat'\).*--task classification"):
        load_table(_table(tmp_path, pd.Series(["cat", "dog"] * 30)), "y", task="regression")


def test_regression_on_a_constant_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"target column 'y' has a single value 7 in every row"):
        load_table(_table(tmp_path, pd.Series([7.0] * 40)), "y", task="regression")


def test_an_unknown_task_and_a_task_that_does_not_fit_a_bundled_set_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="task='ordinal' is not supported"):
        load_table(_table(tmp_path, pd.Series(np.arange(40.0))), "y", task="ordinal")
    with pytest.raises(DataError, match="task='classification' does not fit dataset='diabetes'"):
        load_split(RunConfig(dataset="diabetes", task="classification"))
    with pytest.raises(DataError, match="task='regression' does not fit dataset='digits'.*diabetes, friedman"):
        load_split(RunConfig(dataset="digits", task="regression"))
    with pytest.raises(DataError, match="synthetic' is a classification data set"):
        federated(RunConfig(dataset="synthetic", task="regression"), 3)


def test_targets_keep_their_units_and_carry_the_train_splits_scaling() -> None:
    split = load_split(RunConfig(dataset="diabetes", seed=1))
    mean, std = target_scaling(split.train.y)
    assert split.train.target_mean == split.test.target_mean == pytest.approx(mean)
    assert split.test.target_std == pytest.approx(std) and 50 < std < 100
    assert split.train.y.min() >= 25 and split.train.y.max() <= 346  # diabetes progression, in its own units
    assert target_scaling(np.full(5, 3.0)) == (3.0, 1.0)  # a constant target is not divided by zero
    # the test split spans the target's range (stratified by quantile bin)
    assert np.quantile(split.test.y, 0.1) < np.quantile(split.train.y, 0.2) < np.quantile(split.test.y, 0.3)


def test_regression_partitions_skew_clients_over_quantile_bins_of_the_target() -> None:
    y = load_bundled("diabetes").y
    bins = quantile_bins(y)
    assert len(np.bincount(bins)) == 10 and np.ptp(np.bincount(bins)) <= 1  # equal-count bins
    iid = partition_indices(bins, 5, "iid", seed=0)
    skewed = partition_indices(bins, 5, "dirichlet", alpha=0.1, seed=0)
    patho = partition_indices(bins, 5, "pathological", classes_per_client=2, seed=0)
    for parts in (iid, skewed, patho):
        assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))

    def spread_of_means(parts: list[np.ndarray]) -> float:
        return float(np.std([y[p].mean() for p in parts]))

    assert spread_of_means(skewed) > 2 * spread_of_means(iid)
    assert all(len(np.unique(bins[p])) == 2 for p in patho)  # two target ranges per client


def test_federated_regression_clients_share_the_target_scaling() -> None:
    cfg = RunConfig(dataset="diabetes", partition="iid", num_clients=4, min_clients=2, seed=3)
    clients, test = federated(cfg, 4)
    assert {(c.train.target_mean, c.test.target_std) for c in clients} == {(test.target_mean, test.target_std)}
    assert all(c.train.task == "regression" and c.train.n_classes == 1 for c in clients)
