"""``uaap.sampling.representative_rows``: stratified, seeded, whole-table when small (no training here)."""

from __future__ import annotations

import numpy as np
import pytest

from uaap.errors import DataError
from uaap.sampling import allocate, describe, representative_rows


def _sorted_labels(counts: list[int]) -> np.ndarray:
    """Labels sorted the way a label-sorted table stores them: all of class 0, then class 1, ..."""
    return np.repeat(np.arange(len(counts)), counts)


@pytest.mark.parametrize(
    ("counts", "budget"),
    [
        ([637, 637], 200),  # balanced binary
        ([3000, 3366], 200),  # the issue's 6,366-row table
        ([36, 36, 35, 37, 36, 37, 36, 36, 35, 36], 200),  # digits' 360 held-out rows
        ([950, 30, 15, 5], 100),  # imbalanced, a class under one row's share
        ([1, 1, 1, 997], 50),  # three classes that each deserve 0.05 rows
        ([17, 4, 9], 7),
    ],
)
def test_every_class_present_and_within_one_row_of_its_share(counts: list[int], budget: int) -> None:
    y = _sorted_labels(counts)
    idx = representative_rows(y, budget, seed=0)
    assert len(idx) == budget and len(np.unique(idx)) == budget
    assert np.all(np.diff(idx) > 0), "indices come back sorted"
    got = np.bincount(y[idx], minlength=len(counts))
    share = budget * np.asarray(counts) / sum(counts)
    assert np.all(got >= 1), f"every class present: {got}"
    if np.all(share >= 1):
        assert np.all(np.abs(got - share) < 1), f"{got} vs shares {share}"
    else:  # the one-row minimum for tiny classes is paid by the big ones, still proportional to them
        small = share < 1
        assert np.all(got[small] == 1)
        assert np.all(np.abs(got[~small] - share[~small]) <= small.sum())


def test_the_issue_case_no_longer_verifies_on_one_class() -> None:
    y = _sorted_labels([600, 674])  # a 1,274-row label-sorted test split
    first = np.arange(200)  # what export used to take
    assert set(y[first]) == {0}
    idx = representative_rows(y, 200, seed=0)
    assert np.bincount(y[idx]).tolist() == [94, 106]  # 200 * 600/1274 = 94.2, 200 * 674/1274 = 105.8


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    y = _sorted_labels([300, 500, 200])
    a, b = representative_rows(y, 100, seed=7), representative_rows(y, 100, seed=7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, representative_rows(y, 100, seed=8))
    assert np.array_equal(np.bincount(y[a]), np.bincount(y[representative_rows(y, 100, seed=8)]))


def test_all_rows_when_fewer_than_the_budget() -> None:
    y = _sorted_labels([40, 74])
    assert np.array_equal(representative_rows(y, 200, seed=0), np.arange(114))
    assert np.array_equal(representative_rows(y, 114, seed=0), np.arange(114))
    assert len(representative_rows(np.array([], dtype=np.int64), 10, seed=0)) == 0


def test_labels_need_not_be_contiguous_integers() -> None:
    y = np.array(["spam"] * 80 + ["ham"] * 20)
    idx = representative_rows(y, 10, seed=0)
    assert sorted(y[idx].tolist()) == ["ham"] * 2 + ["spam"] * 8


def test_budget_below_the_number_of_classes_takes_the_largest() -> None:
    y = _sorted_labels([5, 50, 30, 2])
    idx = representative_rows(y, 2, seed=0)
    assert sorted(set(y[idx].tolist())) == [1, 2]


def test_regression_sample_spans_the_target_quantiles() -> None:
    rng = np.random.default_rng(0)
    y = np.sort(rng.lognormal(0, 1, 5000))  # sorted and skewed: a prefix would miss the whole tail
    idx = representative_rows(y, 200, seed=3, task="regression")
    assert len(idx) == 200
    slices = np.minimum((np.arange(len(y)) * 200) // len(y), 199)
    assert np.array_equal(np.bincount(slices[idx], minlength=200), np.ones(200, dtype=np.int64)), (
        "one row from each of 200 equal-count slices of the sorted target"
    )
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        lo, hi = np.quantile(y, [max(q - 0.01, 0), min(q + 0.01, 1)])
        assert lo <= np.quantile(y[idx], q) <= hi, f"sample's q{q} strays from the table's"
    assert np.array_equal(idx, representative_rows(y, 200, seed=3, task="regression"))
    summary = describe(y, idx, task="regression")
    assert summary["rows"] == 200 and summary["of_rows"] == 5000
    assert set(summary["target_quantiles"]) == {"q0", "q10", "q25", "q50", "q75", "q90", "q100"}


def test_describe_counts_the_sample_beside_the_whole() -> None:
    y = _sorted_labels([60, 40])
    idx = representative_rows(y, 10, seed=0)
    assert describe(y, idx, n_classes=3) == {
        "rows": 10,
        "of_rows": 100,
        "class_counts": [6, 4, 0],
        "class_counts_all": [60, 40, 0],
    }


def test_allocate_sums_to_the_budget() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        sizes = rng.integers(0, 60, rng.integers(1, 12))
        budget = int(rng.integers(1, 150))
        take = allocate(sizes, budget)
        assert int(take.sum()) == min(budget, int(sizes.sum()))
        assert np.all(take <= sizes)


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(DataError, match="task='ranking'"):
        representative_rows(np.zeros(3), 2, seed=0, task="ranking")
    with pytest.raises(DataError, match="budget=0"):
        representative_rows(np.zeros(3), 0, seed=0)
    with pytest.raises(DataError, match=r"shape \(2, 2\)"):
        representative_rows(np.zeros((2, 2)), 1, seed=0)
    with pytest.raises(DataError, match="finite numbers"):
        representative_rows(np.array([1.0, np.nan, 2.0]), 2, seed=0, task="regression")
