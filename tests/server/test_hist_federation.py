"""Trees grown from summed histograms (``fedhist``: uaap.models.histtrees, strategies.histtrees): the federation
grows the trees the same code grows on the pooled rows, XGBoost's own trees on digits, and resumes mid-run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, Message
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier

from server.federation import run_federation
from tests.flower_helpers import LocalGrid
from uaap import workspace
from uaap.config import RunConfig
from uaap.data import federated
from uaap.errors import ConfigError
from uaap.models import histtrees
from uaap.protocol import ARRAYS

XGB = RunConfig(
    dataset="digits", model="xgboost", strategy="fedhist", num_clients=4, min_clients=4, num_rounds=4,
    partition="dirichlet", dirichlet_alpha=0.5, seed=3, experiment="tests-hist",
)  # fmt: skip
FOREST = RunConfig(
    dataset="breast_cancer", model="random_forest", strategy="fedhist", num_clients=3, min_clients=3, num_rounds=2,
    partition="dirichlet", trees_per_client=10, tree_max_depth=8, tree_min_samples_leaf=2, seed=5,
    experiment="tests-hist",
)  # fmt: skip


def _xgboost_pooled(X: np.ndarray, y: np.ndarray, rounds: int, n_classes: int) -> object:
    import xgboost as xgb

    params = {"objective": "multi:softprob", "num_class": n_classes, "max_depth": 4, "eta": 0.3, "base_score": 0.5,
              "tree_method": "hist", "max_bin": 256, "nthread": 1}  # fmt: skip
    return xgb.train(params, xgb.DMatrix(np.asarray(X, dtype=np.float32), label=y), rounds)


def test_summed_histograms_grow_the_pooled_trees_and_on_digits_xgboosts_own():
    import xgboost as xgb

    X, y = load_digits(return_X_y=True)
    X_train, y_train, X_test = X[:1400], y[:1400], X[1400:]
    parts = [(X_train[i::5], y_train[i::5]) for i in range(5)]
    spec = histtrees.HistSpec("boosting", "classification", 64, 10, max_depth=4, max_bins=256, eta=0.3)
    federated_trees = histtrees.finished(histtrees.grow_pooled(spec, parts, rounds=6))
    pooled = histtrees.finished(histtrees.grow_pooled(spec, [(X_train, y_train)], rounds=6))
    assert federated_trees.n_trees == pooled.n_trees == 60  # one tree per class per round
    for name in ("children", "feature", "threshold"):  # the very same splits, whatever order the sums came in
        np.testing.assert_array_equal(getattr(federated_trees, name), getattr(pooled, name), err_msg=name)
    for name in ("value", "cover"):  # sums added in another order: equal to the last bits
        np.testing.assert_allclose(getattr(federated_trees, name), getattr(pooled, name), rtol=1e-9, atol=1e-9)
    ours = histtrees.predict_proba(spec, federated_trees, X_test)
    theirs = _xgboost_pooled(X_train, y_train, 6, 10).predict(xgb.DMatrix(X_test.astype(np.float32)))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # digits: few values a pixel, XGBoost's cuts are ours
    booster = xgb.Booster()
    booster.load_model(bytearray(histtrees.to_booster_json(spec, federated_trees)))
    np.testing.assert_allclose(booster.predict(xgb.DMatrix(X_test.astype(np.float32))), ours, atol=1e-6)

    forest = histtrees.HistSpec("forest", "classification", 64, 10, max_depth=6, trees_per_round=3, bootstrap=False)
    a = histtrees.finished(histtrees.grow_pooled(forest, parts, rounds=1))
    b = histtrees.finished(histtrees.grow_pooled(forest, [(X_train, y_train)], rounds=1))
    np.testing.assert_array_equal(a.threshold, b.threshold)
    np.testing.assert_allclose(a.value, b.value, rtol=0, atol=1e-15)  # class frequencies from the same counts


def test_a_feature_of_many_values_is_cut_at_the_quantiles_of_the_summed_sketch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 1))
    low, high = float(x.min()), float(x.max())
    counts = sum(histtrees.sketch(part, np.array([low]), np.array([high]))[0] for part in np.array_split(x, 4))
    cuts = histtrees.quantile_cuts(counts, low, high, max_bins=16)
    assert len(cuts) == 15 and np.all(np.diff(cuts) > 0)
    width = (high - low) / histtrees.SKETCH_BINS
    exact = np.quantile(x, np.arange(1, 16) / 16)
    assert np.max(np.abs(cuts - exact)) <= 2 * width  # within the sketch's resolution of the pooled quantiles
    values = np.array([[0.0], [1.0], [1.0], [3.0]])
    few = histtrees.quantile_cuts(histtrees.sketch(values, np.array([0.0]), np.array([3.0]))[0], 0.0, 3.0, 256)
    # fewer values than bins: a cut just below each value after the first (within one fine bin), so each value
    # has a bin of its own, as XGBoost's cut at the value gives
    assert len(few) == 2 and 1.0 - 3.0 / histtrees.SKETCH_BINS <= few[0] <= 1.0 and 1.0 < few[1] <= 3.0


@pytest.fixture(scope="module")
def home(module_home: Path) -> Path:
    return module_home


def test_federated_xgboost_grows_the_pooled_booster_and_resumes_to_the_same_model(home: Path) -> None:
    import xgboost as xgb

    rd = run_federation(LocalGrid(4), XGB.replace(run_id="hist-xgb"), num_partitions=4)
    model, info = workspace.load_estimator(rd.path / workspace.ESTIMATOR_FILE)
    assert info["trees"] == 40 and info["params"]["strategy"] == "fedhist"
    clients, test = federated(XGB, 4)
    spec = histtrees.spec(XGB, 64, 10, "classification")
    reference = histtrees.finished(histtrees.grow_pooled(spec, [(c.train.X, c.train.y) for c in clients], 4))
    np.testing.assert_allclose(model.predict_proba(test.X), histtrees.predict_proba(spec, reference, test.X),
                               atol=1e-6)  # fmt: skip
    X = np.concatenate([c.train.X for c in clients])
    y = np.concatenate([c.train.y for c in clients])
    plain = _xgboost_pooled(X, y, 4, 10).predict(xgb.DMatrix(np.asarray(test.X, dtype=np.float32)))
    ours = model.predict_proba(test.X)
    print(f"fedhist vs XGBoost on the pooled rows: max |p diff| {np.abs(ours - plain).max():.2e}")
    assert (ours.argmax(1) == plain.argmax(1)).mean() >= 0.99  # standardised pixels: the same cuts up to rounding
    rounds = {e["round"]: e for e in rd.events("round")}
    assert rounds[4]["central"]["accuracy"] == pytest.approx(float((model.predict(test.X) == test.y).mean()))
    pooled_val = np.concatenate([c.test.y for c in clients])
    hits = np.concatenate([model.predict(c.test.X) for c in clients]) == pooled_val
    assert rounds[4]["evaluate"]["accuracy"] == pytest.approx(hits.mean())  # summed counts = pooled rows

    # two rounds, then the same run asked for four: it resumes at round 3 from the checkpoint's bins and trees
    half = run_federation(LocalGrid(4), XGB.replace(run_id="hist-resume", num_rounds=2), num_partitions=4)
    again = run_federation(LocalGrid(4), XGB.replace(run_id="hist-resume"), num_partitions=4)
    assert half.path == again.path and [e["round"] for e in again.events("start")] == [1, 3]
    resumed, _ = workspace.load_estimator(again.path / workspace.ESTIMATOR_FILE)
    np.testing.assert_array_equal(resumed.predict_proba(test.X), ours)


def test_a_federated_forest_from_histograms_is_the_pooled_protocols_and_a_forged_reply_is_rejected(home: Path):
    def forge(reply: Message) -> Message:
        record = reply.content.array_records.get(ARRAYS)
        if record is not None and "hist" in record:
            record["hist"] = Array(-record["hist"].numpy())  # negative counts
        return reply

    rd = run_federation(LocalGrid(3), FOREST.replace(run_id="hist-forest"), num_partitions=3)
    model, info = workspace.load_estimator(rd.path / workspace.ESTIMATOR_FILE)
    assert info["trees"] == 20 and len(model.estimators_) == 20
    clients, test = federated(FOREST, 3)
    spec = histtrees.spec(FOREST, test.n_features, 2, "classification")
    reference = histtrees.finished(histtrees.grow_pooled(spec, [(c.train.X, c.train.y) for c in clients], 2))
    np.testing.assert_allclose(model.predict_proba(test.X), histtrees.predict_proba(spec, reference, test.X),
                               atol=1e-12)  # fmt: skip
    X = np.concatenate([c.train.X for c in clients])
    y = np.concatenate([c.train.y for c in clients])
    sk = RandomForestClassifier(20, max_depth=8, min_samples_leaf=2, random_state=0).fit(X, y)
    ours, theirs = (model.predict(test.X) == test.y).mean(), (sk.predict(test.X) == test.y).mean()
    print(f"fedhist forest {ours:.3f}, scikit-learn's on the pooled rows {theirs:.3f}")
    assert ours >= theirs - 0.03

    from edge.pipeline import export_model

    (result,) = export_model(str(rd.path), "onnx", out=home / "hist-export")
    assert result.status == "ok", result.reason
    assert result.manifest["parity"]["argmax_agreement"] == 1.0

    forged = run_federation(LocalGrid(3, tamper={2: forge}), FOREST.replace(run_id="hist-forged"), num_partitions=3)
    rejected = [e for e in forged.events("rejected")]
    assert rejected and all("negative count" in e["reason"] for e in rejected)
    assert workspace.load_estimator(forged.path / workspace.ESTIMATOR_FILE)[1]["trees"] == 20  # the others grew it


def test_fedhist_is_refused_where_it_cannot_run():
    with pytest.raises(ConfigError, match="fedhist"):
        RunConfig(model="mlp", strategy="fedhist").check_family("federated")
    with pytest.raises(ConfigError, match="must read their sum"):
        RunConfig(model="xgboost", strategy="fedhist", secure_aggregation="ckks").check_family("federated")
