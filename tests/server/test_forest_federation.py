"""Federated random forests (uaap.models.forest, strategies.forest): trees on the wire as arrays, the ensemble the
clients grow against scikit-learn's forest on the pooled rows, a forged forest rejected, the final model exported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, Message
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.metrics import r2_score

from server.federation import run_federation
from tests.flower_helpers import LocalGrid
from uaap import workspace
from uaap.config import RunConfig
from uaap.data import federated, load_split
from uaap.errors import ConfigError
from uaap.models import forest
from uaap.protocol import ARRAYS

CLS = RunConfig(
    dataset="breast_cancer", model="random_forest", num_clients=3, min_clients=3, num_rounds=1, partition="dirichlet",
    trees_per_client=10, tree_max_depth=8, tree_min_samples_leaf=3, seed=5, experiment="tests-forest",
)  # fmt: skip
REG = CLS.replace(dataset="diabetes", partition="iid")


def test_a_forest_survives_the_wire_exactly_and_a_merged_forest_votes_each_class_by_the_trees_that_saw_it():
    X, y = load_breast_cancer(return_X_y=True)
    ref = RandomForestClassifier(n_estimators=4, max_depth=5, random_state=0).fit(X, y)
    arrays = forest.from_sklearn(ref)
    back = forest.to_sklearn(forest.from_record(forest.to_record(arrays)), 30, 2)
    assert np.array_equal(back.forest_.predict_proba(X), ref.predict_proba(X))  # the very trees
    np.testing.assert_allclose(back.feature_importances_, ref.feature_importances_, atol=1e-12)  # gain, from Gini
    skewed = [(X[y == 0][:150], y[y == 0][:150]), (X[:300], y[:300]), (X[y == 1][:200], y[y == 1][:200])]
    parts = [forest.local_forest(Xk, yk, 2, n_estimators=3, max_depth=4, min_samples_leaf=2, seed=i)
             for i, (Xk, yk) in enumerate(skewed)]  # fmt: skip
    merged = forest.to_sklearn(forest.merge(parts), 30, 2)
    # by hand: each tree's class frequencies weighted by the rows of that class it was grown on, then normalised
    trees = [est for p in parts for est in forest.to_sklearn(p, 30, 2).estimators_]
    roots = np.array([est.tree_.value[0, 0] * est.tree_.weighted_n_node_samples[0] for est in trees])
    scores = sum(est.predict_proba(X) * (r / roots.sum(axis=0)) for est, r in zip(trees, roots, strict=True))
    np.testing.assert_allclose(merged.predict_proba(X), scores / scores.sum(axis=1, keepdims=True), atol=1e-12)
    assert np.all(parts[0].value[:, 0] == 1.0) and np.all(parts[2].value[:, 1] == 1.0)  # its class in its column
    plain = np.mean([est.predict_proba(X) for est in trees], axis=0)
    assert (merged.predict(X) == y).mean() > (plain.argmax(1) == y).mean()  # one-class clients no longer outvote


@pytest.mark.parametrize(
    ("field", "bad", "reason"),
    [
        ("children", lambda c: np.where(c > 0, 0, c), "a child points outside its tree or backwards"),
        ("feature", lambda f: np.where(f >= 0, 99, f), "a split uses a feature outside 0..29"),
        ("value", lambda v: v * 2, "class frequencies summing to 1"),
        ("offsets", lambda o: o[::-1].copy(), "offsets must start at 0"),
    ],
)
def test_a_malformed_forest_is_refused_naming_the_problem(field, bad, reason):
    X, y = load_breast_cancer(return_X_y=True)
    good = forest.local_forest(X, y, 2, n_estimators=2, max_depth=3, min_samples_leaf=2, seed=0)
    forest.check(good, 30, 2, regression=False)
    forged = forest.ForestArrays(**{k: getattr(good, k) for k in forest.FIELDS} | {field: bad(getattr(good, field))})
    with pytest.raises(ValueError, match=reason):
        forest.check(forged, 30, 2, regression=False)
    with pytest.raises(ConfigError, match="no client sent a tree"):
        forest.merge([forest.empty(2)])


@pytest.fixture(scope="module")
def home(module_home: Path) -> Path:
    return module_home


def _pooled_reference(cfg: RunConfig, trees: int) -> tuple[object, object]:
    split = load_split(cfg)  # the pooled training rows and the same held-out split, standardised the same way
    kind = RandomForestRegressor if split.train.regression else RandomForestClassifier
    est = kind(n_estimators=trees, max_depth=cfg.tree_max_depth, min_samples_leaf=cfg.tree_min_samples_leaf,
               random_state=0).fit(split.train.X, split.train.y)  # fmt: skip
    return est, split.test


@pytest.mark.slow
def test_the_federated_forest_is_within_three_points_of_one_forest_on_the_pooled_rows(home: Path) -> None:
    rd = run_federation(LocalGrid(3), CLS.replace(run_id="forest-cls"), num_partitions=3)
    rounds = {e["round"]: e for e in rd.events("round")}
    model, info = workspace.load_estimator(rd.path / workspace.ESTIMATOR_FILE)
    assert info["trees"] == 30 and len(model.estimators_) == 30
    ref, test = _pooled_reference(CLS, 30)
    ours, theirs = float((model.predict(test.X) == test.y).mean()), float((ref.predict(test.X) == test.y).mean())
    print(f"federated forest {ours:.3f}, pooled scikit-learn forest {theirs:.3f}")
    assert ours >= theirs - 0.03
    assert rounds[1]["central"]["accuracy"] == pytest.approx(ours)  # the server's evaluation is of this model
    clients, _ = federated(CLS, 3)
    pooled = np.concatenate([c.test.y for c in clients])
    hits = np.concatenate([model.predict(c.test.X) for c in clients]) == pooled
    assert rounds[1]["evaluate"]["accuracy"] == pytest.approx(hits.mean())  # summed counts = pooled rows

    from edge.pipeline import export_model

    results = export_model(str(rd.path), "onnx,c", out=home / "forest-export")
    for result in results:
        assert result.status == "ok", result.reason
        assert result.manifest["parity"]["argmax_agreement"] == 1.0


@pytest.mark.slow
def test_federated_forest_regression_and_a_forged_forest_is_rejected_not_fatal(home: Path) -> None:
    def forge(reply: Message) -> Message:
        if ARRAYS in reply.content.array_records:
            record = reply.content.array_records[ARRAYS]
            record["feature"] = Array(np.full_like(record["feature"].numpy(), 1000))
        return reply

    rd = run_federation(LocalGrid(3, tamper={2: forge}), REG.replace(run_id="forest-reg"), num_partitions=3)
    last = [e for e in rd.events("round") if e["round"] == 1][-1]
    assert last["train"]["rejected-replies"] == 1 and not last["failed"]
    model, info = workspace.load_estimator(rd.path / workspace.ESTIMATOR_FILE)
    assert info["trees"] == 20  # the two honest clients' trees
    ref, test = _pooled_reference(REG, 20)
    ours, theirs = r2_score(test.y, model.predict(test.X)), r2_score(test.y, ref.predict(test.X))
    print(f"federated forest R2 {ours:.3f}, pooled scikit-learn forest R2 {theirs:.3f}")
    assert ours >= theirs - 0.05 and last["central"]["r2"] == pytest.approx(ours)


def test_uaap_train_fits_the_same_forest_scikit_learn_fits_on_the_pooled_rows(home: Path) -> None:
    from uaap.cli import main

    before = set(workspace.list_runs())
    assert main(["train", "--model", "random_forest", "--dataset", "breast_cancer", "--trees-per-client", "2"]) == 0
    (made,) = set(workspace.list_runs()) - before
    rd = workspace.run_dir(made)
    model, info = workspace.load_estimator(rd.path / workspace.ESTIMATOR_FILE)
    cfg = rd.read_config()
    split = load_split(cfg)
    ref = RandomForestClassifier(
        n_estimators=2 * cfg.num_clients, max_depth=8, min_samples_leaf=5, random_state=cfg.seed, n_jobs=1
    )
    ref.fit(split.train.X, split.train.y)
    assert info["family"] == "random_forest" and len(model.estimators_) == 20  # as many as 10 clients grow
    assert np.array_equal(model.predict_proba(split.test.X), ref.predict_proba(split.test.X))
    end = rd.events("end")[-1]
    assert end["central"]["accuracy"] == pytest.approx(float((ref.predict(split.test.X) == split.test.y).mean()))


# ---- isolation forests ------------------------------------------------------------------------------------------
ANOMALY = RunConfig(
    dataset="breast_cancer", model="isolation_forest", task="anomaly", num_clients=3, min_clients=3, num_rounds=1,
    partition="iid", trees_per_client=20, seed=5, experiment="tests-forest",
)  # fmt: skip


def test_an_isolation_forest_survives_the_wire_exactly():
    from sklearn.ensemble import IsolationForest

    X, y = load_breast_cancer(return_X_y=True)
    ref = IsolationForest(n_estimators=10, random_state=0).fit(X[y == 1])
    back = forest.to_isolation_forest(forest.from_record(forest.to_record(forest.from_sklearn(ref))), 30)
    assert back._max_samples == ref._max_samples == 256
    assert np.array_equal(back.score_samples(X), ref.score_samples(X))


@pytest.mark.slow
def test_the_federated_isolation_forest_flags_as_well_as_one_on_the_pooled_normal_rows(home: Path) -> None:
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    from uaap.metrics import anomaly_flags

    rd = run_federation(LocalGrid(3), ANOMALY.replace(run_id="iforest"), num_partitions=3)
    last = [e for e in rd.events("round") if e["round"] == 1][-1]
    model, info = workspace.load_estimator(rd.path / workspace.ESTIMATOR_FILE)
    assert info["family"] == "isolation_forest" and len(model.estimators_) == 60
    threshold = info["threshold"]
    assert threshold == last["evaluate"]["threshold"]  # chosen on the clients' summed validation histograms
    _, test = federated(ANOMALY, 3)
    scores = forest.anomaly_scores(model, test.X)
    flags = anomaly_flags(scores, threshold)
    central = last["central"]  # the server's held-out rows, flagged with that threshold
    assert central["precision"] == pytest.approx(precision_score(test.y, flags))
    assert central["recall"] == pytest.approx(recall_score(test.y, flags))
    assert central["f1"] == pytest.approx(f1_score(test.y, flags))
    split = load_split(ANOMALY)
    from sklearn.ensemble import IsolationForest

    ref = IsolationForest(n_estimators=60, random_state=0).fit(split.train.X[split.train.y == 0])
    ours, theirs = roc_auc_score(test.y, scores), roc_auc_score(test.y, -ref.score_samples(test.X))
    print(f"federated isolation forest AUC {ours:.3f}, pooled {theirs:.3f}")
    assert ours >= theirs - 0.03 and abs(central["auc"] - ours) <= central["auc-error-bound"] + 1e-12


def test_uaap_train_fits_an_isolation_forest_on_normal_rows_with_a_validation_threshold(home: Path) -> None:
    from uaap.cli import main
    from uaap.data import local_split, normal_rows
    from uaap.metrics import anomaly_counts, anomaly_from_counts
    from uaap.models.estimators import estimator

    before = set(workspace.list_runs())
    assert main(["train", "--model", "isolation_forest", "--task", "anomaly", "--dataset", "breast_cancer",
                 "--trees-per-client", "2"]) == 0  # fmt: skip
    (made,) = set(workspace.list_runs()) - before
    rd = workspace.run_dir(made)
    model, info = workspace.load_estimator(rd.path / workspace.ESTIMATOR_FILE)
    cfg = rd.read_config()
    split = load_split(cfg)
    inner = local_split(split.train, cfg.seed)
    ref = estimator("isolation_forest", "anomaly", n_estimators=20, max_samples=256, random_state=cfg.seed, n_jobs=1)
    ref.fit(normal_rows(inner.train).X)
    assert np.array_equal(model.anomaly_score(split.test.X), ref.anomaly_score(split.test.X))
    val = anomaly_counts(inner.test.y, ref.anomaly_score(inner.test.X))
    assert info["threshold"] == anomaly_from_counts(val, cfg.anomaly_quantile)["threshold"]
    assert rd.events("end")[-1]["central"]["f1"] == pytest.approx(model.evaluate(split.test.X, split.test.y)["f1"])


def test_uaap_train_fits_the_xgboost_the_library_fits_with_the_same_settings(home: Path) -> None:
    from xgboost import XGBClassifier

    from uaap.cli import main

    before = set(workspace.list_runs())
    args = ["train", "--model", "xgboost", "--dataset", "breast_cancer", "--boost-rounds", "20", "--xgb-max-depth", "3"]
    assert main(args) == 0
    (made,) = set(workspace.list_runs()) - before
    rd = workspace.run_dir(made)
    model, info = workspace.load_estimator(rd.path / workspace.ESTIMATOR_FILE)
    cfg = rd.read_config()
    split = load_split(cfg)
    ref = XGBClassifier(n_estimators=20, max_depth=3, learning_rate=cfg.xgb_eta, tree_method="hist",
                        random_state=cfg.seed, n_jobs=1).fit(split.train.X, split.train.y)  # fmt: skip
    assert info["family"] == "xgboost"
    assert np.array_equal(model.predict_proba(split.test.X), ref.predict_proba(split.test.X))
