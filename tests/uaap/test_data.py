"""Datasets, tabular input and partitioners."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from uaap.config import RunConfig
from uaap.data import client_data, federated, load_bundled, load_table, partition_indices, synthetic
from uaap.errors import DataError


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    return load_bundled("digits").y


def _check_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n, "partitions must be disjoint and cover every row"


def test_iid_partitions_are_balanced_and_cover_everything(digits_labels: np.ndarray) -> None:
    parts = partition_indices(digits_labels, 7, "iid", seed=1)
    _check_disjoint_cover(parts, len(digits_labels))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_dirichlet_skew_grows_as_alpha_shrinks(digits_labels: np.ndarray) -> None:
    def mean_tv_distance(alpha: float) -> float:
        parts = partition_indices(digits_labels, 10, "dirichlet", alpha=alpha, seed=3)
        _check_disjoint_cover(parts, len(digits_labels))
        glob = np.bincount(digits_labels, minlength=10) / len(digits_labels)
        return float(
            np.mean([0.5 * np.abs(np.bincount(digits_labels[p], minlength=10) / len(p) - glob).sum() for p in parts])
        )

    assert mean_tv_distance(0.1) > mean_tv_distance(1.0) > mean_tv_distance(100.0)
    assert mean_tv_distance(100.0) < 0.1


def test_pathological_gives_k_classes_per_client_and_drops_no_class(digits_labels: np.ndarray) -> None:
    parts = partition_indices(digits_labels, 10, "pathological", classes_per_client=2, seed=0)
    _check_disjoint_cover(parts, len(digits_labels))
    assert all(len(np.unique(digits_labels[p])) == 2 for p in parts)
    assert set(np.concatenate([np.unique(digits_labels[p]) for p in parts])) == set(range(10))


def test_pathological_refuses_a_split_that_would_drop_classes(digits_labels: np.ndarray) -> None:
    with pytest.raises(DataError, match="cannot cover all 10 classes"):
        partition_indices(digits_labels, 3, "pathological", classes_per_client=2)


def test_too_many_clients_for_the_data_is_refused() -> None:
    with pytest.raises(DataError, match="use fewer clients"):
        partition_indices(np.zeros(10, dtype=int), 5, "iid")


def test_federated_split_is_deterministic_and_test_set_is_held_out() -> None:
    cfg = RunConfig(num_clients=5, seed=7)
    clients, test = federated(cfg, 5)
    again = client_data(RunConfig(num_clients=5, seed=7), 2, 5)
    assert np.array_equal(clients[2].train.X, again.train.X)
    assert len(test.y) == pytest.approx(0.2 * 1797, abs=1)
    train_rows = {r.tobytes() for c in clients for r in np.concatenate([c.train.X, c.test.X])}
    overlap = sum(r.tobytes() in train_rows for r in test.X)
    assert overlap <= 5, "the server's test rows must not be in clients' data (a few digits images are duplicates)"
    assert clients[0].train.X.min() >= 0.0 and clients[0].train.X.max() <= 1.0


def test_synthetic_is_heterogeneous_per_client() -> None:
    parts = synthetic(5, alpha=1.0, beta=1.0, seed=0)
    assert all(p.X.shape[1] == 60 and p.n_classes == 10 for p in parts)
    means = np.array([p.X.mean(axis=0) for p in parts])
    assert np.std(means[:, 0]) > 0.3, "beta=1 must shift each client's feature distribution"
    iid_like = synthetic(5, alpha=0.0, beta=0.0, seed=0)
    assert np.std([p.X.mean(axis=0)[0] for p in iid_like]) < np.std(means[:, 0])


def test_csv_with_categorical_features_is_encoded(tmp_path: Path) -> None:
    path = tmp_path / "patients.csv"
    path.write_text("age,sex,bmi,outcome\n50,f,22.5,yes\n61,m,30.1,no\n45,f,27.0,no\n70,m,25.2,yes\n")
    data = load_table(path, "outcome")
    assert data.X.shape == (4, 5) and data.n_classes == 2
    assert data.feature_names == ("age", "sex=f", "sex=m", "sex=infrequent", "bmi")  # unseen values: infrequent
    np.testing.assert_array_equal(data.X[:, 1:4], [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])


def test_csv_without_target_column_names_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(DataError, match="target column 'label' is not in .*d.csv; its columns are: a, b"):
        load_table(path, "label")


def test_csv_with_unencodable_text_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    rows = "\n".join(f"note number {i},{i % 2}" for i in range(60))
    path.write_text("note,y\n" + rows + "\n")
    with pytest.raises(DataError, match="column 'note' holds free text or identifiers.*--text-columns hashing"):
        load_table(path, "y")


def test_parquet_input(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "y": ["a", "b", "a", "b"]}).to_parquet(path)
    data = load_table(path, "y")
    assert data.X.shape == (4, 1) and list(data.y) == [0, 1, 0, 1]


def test_bad_tables_fail_before_training_with_what_to_do_and_leave_nothing(
    uaap_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from uaap.cli import main

    def table(name: str, text: str) -> str:
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)

    rows = "".join(f"{i},{i % 3},{'yes' if i % 2 else 'no'},note {i} of many\n" for i in range(80))
    cases = [
        (["--data", str(tmp_path / "nope.csv"), "--target", "y"], "does not exist"),
        (["--data", table("head.csv", "a,b,y\n"), "--target", "y"], "has a header but no rows"),
        (["--data", table("t.csv", "a,b,y,n\n" + rows), "--target", "label"], "target column 'label' is not in"),
        (["--data", table("one.csv", "a,y\n1,x\n2,x\n3,x\n"), "--target", "y"], "single class 'x'"),
        (["--data", table("e.csv", "a,e,y\n1,,x\n3,,y\n5,,x\n7,,y\n"), "--target", "y"], "--drop-columns e"),
        (["--data", str(tmp_path / "t.csv"), "--target", "y"], "'n' holds free text.*--text-columns hashing"),
        (["--data", str(tmp_path / "t.csv"), "--target", "y", "--task", "regression"], "holds text.*--task"),
        (["--data", table("t.xml", "<t/>"), "--target", "y"], "suffix '.xml'"),
    ]
    for args, message in cases:
        assert main(["train", *args, "--epochs", "1"]) == 2, args
        err = capsys.readouterr().err
        assert re.search(message, err), (args, err)
    assert not (uaap_home / "runs").exists() or not any((uaap_home / "runs").iterdir())  # nothing half-written
