"""K-Means and PCA from summed statistics as scikit-learn estimators (against scikit-learn's own), and the refusals
the registry makes for them before a run starts. Their federation: tests/server/test_statistics_federation.py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.datasets import load_wine
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from uaap.config import RunConfig
from uaap.errors import ConfigError, DataError
from uaap.models import check_combination
from uaap.models.kmeans import FederatedKMeans, assign, centroids_from, local_statistics, squared_distances
from uaap.models.pca import FederatedPCA
from uaap.models.pca import local_statistics as pca_statistics
from uaap.models.summed import FAMILIES, check_ckks_range


@pytest.fixture(scope="module")
def wine() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_wine(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def test_kmeans_is_scikit_learns_lloyd_and_its_statistics_add_up_over_parts(wine: tuple) -> None:
    X, y = wine
    start = X[[0, 70, 140]]
    ours = clone(FederatedKMeans(3, max_iter=20, init=start)).fit(X)
    theirs = KMeans(3, init=start, n_init=1, max_iter=20, tol=0.0, algorithm="lloyd").fit(X)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=0, atol=1e-10)
    assert np.array_equal(ours.labels_, theirs.labels_) and ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-10)
    assert np.array_equal(ours.predict(X), theirs.predict(X)) and ours.score(X) == pytest.approx(theirs.score(X))
    np.testing.assert_allclose(ours.transform(X), theirs.transform(X), atol=1e-10)
    assert ours.evaluate(X, y)["adjusted_rand"] > 0.8  # wine's three cultivars
    d2 = squared_distances(X, ours.cluster_centers_)  # the fast assignment is the argmin of the differences
    assert np.array_equal(assign(X, ours.cluster_centers_)[1], d2.min(axis=1))

    parts = [local_statistics(part, start) for part in np.array_split(X, 4)]  # four clients' statistics, summed
    pooled = local_statistics(X, start)
    np.testing.assert_allclose(sum(p.sums for p in parts), pooled.sums, atol=1e-12)
    assert np.array_equal(sum(p.counts for p in parts), pooled.counts)
    assert sum(p.inertia for p in parts) == pytest.approx(pooled.inertia, rel=1e-12)


def test_an_empty_cluster_keeps_its_centroid_and_a_decrypted_count_is_read_as_rows() -> None:
    previous = np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 9.0]])
    sums = np.array([[2.0, 4.0], [3e-10, -2e-10], [9.0, 9.0]])
    counts = np.array([2.0 + 1e-9, 1e-9, 1.0 - 1e-9])  # CKKS: whole numbers within ~1e-9
    out = centroids_from(sums, counts, previous)
    np.testing.assert_allclose(out, [[1.0, 2.0], [5.0, 5.0], [9.0, 9.0]], atol=1e-8)
    ties = np.array([[0.5, 0.0], [1.0, 0.0], [0.5, 3.0]])  # equidistant rows: the expanded form cannot tell
    labels, d2 = assign(ties, np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))
    assert labels.tolist() == [0, 1, 0] and d2.tolist() == [0.25, 0.0, 9.25]  # differences decide: the lower index
    far = np.array([[0.0, 0.0], [100.0, 100.0]])
    model = FederatedKMeans(2, max_iter=3, init=far).fit(np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]))
    assert model.cluster_centers_[1].tolist() == [100.0, 100.0]  # no row chose it: it stays


def test_pca_is_scikit_learns_pca_in_a_pipeline_and_refuses_more_components_than_features(wine: tuple) -> None:
    raw, _ = load_wine(return_X_y=True)
    ours = make_pipeline(StandardScaler(), FederatedPCA(4)).fit(raw)
    theirs = make_pipeline(StandardScaler(), PCA(4, svd_solver="full")).fit(raw)
    a, b = ours[-1], theirs[-1]
    np.testing.assert_allclose(a.components_, b.components_, atol=1e-10)  # the same sign convention
    np.testing.assert_allclose(a.explained_variance_, b.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(a.explained_variance_ratio_, b.explained_variance_ratio_, rtol=1e-10)
    np.testing.assert_allclose(a.singular_values_, b.singular_values_, rtol=1e-10)
    np.testing.assert_allclose(ours.transform(raw), theirs.transform(raw), atol=1e-9)
    X = wine[0]
    np.testing.assert_allclose(a.inverse_transform(a.transform(X)), b.inverse_transform(b.transform(X)), atol=1e-9)
    assert a.evaluate(X)["explained_variance"] == pytest.approx(b.explained_variance_ratio_.sum(), rel=1e-9)
    with pytest.raises(ConfigError, match="n-components=14 must be between 1 and the 13 features"):
        FederatedPCA(14).fit(X)
    with pytest.raises(DataError, match="PCA needs at least 2 rows"):
        FederatedPCA(1).fit(X[:1])


def test_kmeans_and_pca_are_refused_what_they_cannot_do_before_a_run_starts() -> None:
    assert set(FAMILIES) == {"kmeans", "pca"}
    with pytest.raises(ConfigError, match=r"model='kmeans' has no differential privacy \(--dp-local true\)"):
        RunConfig(model="kmeans", strategy="fedstats", dp_local=True)
    with pytest.raises(ConfigError, match=r"model='pca' has no differential privacy \(--dp-central true\)"):
        check_combination("pca", dp_central=True)
    with pytest.raises(ConfigError, match="model='kmeans' trains only federated; run it with `uaap simulate`"):
        RunConfig(model="kmeans").check_family("central")
    with pytest.raises(ConfigError, match="model='kmeans' federates as exact: .* takes strategy fedstats, not "
                                          "strategy='fedprox'"):  # fmt: skip
        RunConfig(model="kmeans", strategy="fedprox").check_family("federated")
    pca = RunConfig(model="pca")  # named no strategy and no rounds: fedstats, and PCA's one round
    assert (RunConfig(model="kmeans").strategy, pca.strategy, pca.num_rounds) == ("fedstats", "fedstats", 1)
    pca.check_family("federated")
    with pytest.raises(ConfigError, match="model='mlp' .* not strategy='fedstats'"):
        RunConfig(model="mlp", strategy="fedstats").check_family("federated")
    with pytest.raises(ConfigError, match="model='pca' is exact after 1 round.* pass --num-rounds 1"):
        RunConfig(model="pca", strategy="fedstats", num_rounds=3).check_family("federated")
    for model in ("kmeans", "pca"):  # what they can do passes: federated sums, in the clear or under CKKS
        RunConfig(model=model, strategy="fedstats", num_rounds=1, secure_aggregation="ckks").check_family("federated")
    with pytest.raises(ConfigError, match="model='kmeans' does not do classification; it does clustering"):
        RunConfig(model="kmeans", task="classification")

    cmd = [sys.executable, "-m", "uaap.cli", "simulate", "--model", "kmeans", "--strategy", "fedstats", "--dp-local",
           "true", "--num-rounds", "1"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "model='kmeans' has no differential privacy (--dp-local true)" in out.stderr
    assert "ray" not in out.stderr.lower()  # refused before Ray or Flower started


def test_statistics_too_large_for_the_ckks_range_are_refused_with_what_to_do() -> None:
    rows = np.full((3000, 2), 10.0)  # X^T X peaks at 300000 for one client alone
    stats = [pca_statistics(rows).xtx]
    check_ckks_range("pca", [np.ones((2, 2))], 10)  # far inside the range
    with pytest.raises(ConfigError, match=r"model='pca': this client's statistics peak at 3e\+05; summed over 3 "
                                          r"clients under CKKS they must stay below 262144"):  # fmt: skip
        check_ckks_range("pca", stats, 3)
