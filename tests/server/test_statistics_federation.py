"""K-Means and PCA federated from summed statistics (strategy fedstats), end to end in this process: the real
ClientApp through tests.LocalGrid, 3 non-IID clients of digits, in the clear and under CKKS. Each is compared with
the pooled computation written independently here (plain Lloyd iterations; scikit-learn's PCA)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from server.federation import run_federation
from tests.flower_helpers import LocalGrid
from uaap import crypto, workspace
from uaap.cli import main
from uaap.config import RunConfig
from uaap.data import federated
from uaap.models.kmeans import FederatedKMeans, kmeans_plus_plus
from uaap.models.pca import FederatedPCA
from uaap.report import accuracy_plot, round_rows, score

BASE = RunConfig(
    dataset="digits",
    partition="dirichlet",
    num_clients=3,
    min_clients=3,
    strategy="fedstats",
    seed=3,
    experiment="tests-statistics",
)
ROUNDS, K, COMPONENTS = 4, 10, 5
RUNS = {
    "kmeans": BASE.replace(model="kmeans", n_clusters=K, num_rounds=ROUNDS),
    "kmeans-he": BASE.replace(model="kmeans", n_clusters=K, num_rounds=ROUNDS, secure_aggregation="ckks"),
    "pca": BASE.replace(model="pca", n_components=COMPONENTS, num_rounds=1),
    "pca-he": BASE.replace(model="pca", n_components=COMPONENTS, num_rounds=1, secure_aggregation="ckks"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[RunConfig, workspace.RunDir]]]:
    home = tmp_path_factory.mktemp("statistics-fed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UAAP_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        out = {}
        for name, cfg in RUNS.items():
            cfg = crypto.ensure_simulation_keys(cfg.replace(run_id=f"stats-{name}"))
            out[name] = (cfg, run_federation(LocalGrid(3), cfg, num_partitions=3))
        yield out


def _pooled(cfg: RunConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every client's training rows pooled, and the server's held-out rows and labels."""
    clients, test = federated(cfg, 3)
    sizes = [len(c.train.X) for c in clients]
    assert min(sizes) != max(sizes)  # a non-IID split: the parts differ
    return np.concatenate([c.train.X for c in clients]).astype(np.float64), test.X.astype(np.float64), test.y


def _lloyd(X: np.ndarray, centers: np.ndarray, iterations: int) -> tuple[np.ndarray, list[float], list[np.ndarray]]:
    """Plain Lloyd iterations on pooled rows; an empty cluster keeps its centroid. Returns the final centroids, the
    inertia at the start of each iteration and each iteration's labels."""
    inertias, labels = [], []
    for _ in range(iterations):
        d2 = ((X[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        nearest = d2.argmin(axis=1)
        inertias.append(float(d2.min(axis=1).sum()))
        labels.append(nearest)
        centers = np.array(
            [X[nearest == j].mean(axis=0) if (nearest == j).any() else centers[j] for j in range(len(centers))]
        )
    return centers, inertias, labels


def _decrypted(cfg: RunConfig, rd: workspace.RunDir) -> Any:
    """The model a key holder makes from the last round's encrypted totals (`uaap keys decrypt-model`)."""
    assert main(["keys", "decrypt-model", rd.run_id, "--secret-context", cfg.he_secret_context]) == 0
    model, meta = workspace.load_estimator(rd.path / workspace.ESTIMATOR_FILE)
    assert meta["family"] == cfg.model and meta["decrypted_from_round"] == cfg.num_rounds
    return model


def _matched(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """``ours`` with each component's sign flipped to agree with ``theirs`` (components are defined up to sign)."""
    return ours * np.sign((ours * theirs).sum(axis=1))[:, None]


@pytest.mark.slow
def test_federated_kmeans_is_pooled_lloyd_from_the_same_centroids_in_the_clear_and_under_ckks(runs: dict) -> None:
    cfg, rd = runs["kmeans"]
    X, test_X, test_y = _pooled(cfg)
    start = kmeans_plus_plus(test_X, K, cfg.seed)  # round 1's centroids: seeded on the server's held-out rows
    reference, inertias, _ = _lloyd(X, start, ROUNDS)
    assert not np.allclose(reference, start)

    model, meta = workspace.load_estimator(rd.path / workspace.ESTIMATOR_FILE)
    assert isinstance(model, FederatedKMeans) and meta["family"] == "kmeans" and model.n_iter_ == ROUNDS
    plain_diff = float(np.abs(model.cluster_centers_ - reference).max())
    # exactly the pooled iterations: digits' scaled pixels are multiples of 1/16, so every sum is exact in float64
    # whatever the order the clients add in (other data would differ by float64 rounding only)
    assert plain_diff == 0.0, plain_diff
    assert np.array_equal(model.predict(X), _lloyd(X, reference, 1)[2][0])
    rounds = [e for e in rd.events("round") if e["round"] > 0]
    assert [e["train"]["num-examples"] for e in rounds] == [len(X)] * ROUNDS
    np.testing.assert_allclose([e["train"]["inertia"] for e in rounds], inertias, rtol=1e-9)
    assert inertias == sorted(inertias, reverse=True)  # Lloyd never increases the objective

    # the server's held-out evaluation of the final model, against scikit-learn's metrics on those rows
    central = rounds[-1]["central"]
    test_labels = model.predict(test_X)
    assert central["inertia"] == pytest.approx(((test_X - model.cluster_centers_[test_labels]) ** 2).sum(), rel=1e-9)
    assert central["silhouette"] == pytest.approx(silhouette_score(test_X, test_labels), rel=1e-9)
    assert central["adjusted_rand"] > 0.4  # digits' clusters follow the digits (ARI against the true labels)
    assert score(round_rows(rd)) == ("silhouette", "sil.")  # what `uaap simulate` tabulates and plots per round

    he_cfg, he_rd = runs["kmeans-he"]
    assert not (he_rd.path / workspace.ESTIMATOR_FILE).exists()  # the server holds ciphertext totals only
    last = he_rd.latest_checkpoint()
    assert last is not None and crypto.is_encrypted(ArrayRecord({k: Array(v) for k, v in last.arrays.items()}))
    he_model = _decrypted(he_cfg, he_rd)
    he_diff = float(np.abs(he_model.cluster_centers_ - reference).max())
    assert he_diff <= 1e-5, he_diff
    he_rounds = [e for e in he_rd.events("round") if e["round"] > 0]
    np.testing.assert_allclose([e["train"]["inertia"] for e in he_rounds], inertias, rtol=1e-9)
    assert all(e["train"]["he-clients"] == 3 and e["central"] == {} for e in he_rounds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing in the clear to draw: an empty plot, no legend warning
        assert accuracy_plot(he_rd).is_file()
    print(f"K-Means vs pooled Lloyd, max |centroid diff|: plain {plain_diff:.3g}, CKKS {he_diff:.3g}")


@pytest.mark.slow
def test_federated_pca_is_pooled_pca_in_the_clear_and_under_ckks(runs: dict) -> None:
    cfg, rd = runs["pca"]
    X, test_X, _ = _pooled(cfg)
    reference = PCA(COMPONENTS, svd_solver="full").fit(X)

    model, meta = workspace.load_estimator(rd.path / workspace.ESTIMATOR_FILE)
    assert isinstance(model, FederatedPCA) and meta["family"] == "pca" and model.n_samples_ == len(X)
    diffs = {
        "components": np.abs(_matched(model.components_, reference.components_) - reference.components_).max(),
        "explained variance": np.abs(model.explained_variance_ - reference.explained_variance_).max(),
        "ratio": np.abs(model.explained_variance_ratio_ - reference.explained_variance_ratio_).max(),
        "mean": np.abs(model.mean_ - reference.mean_).max(),
    }
    assert max(diffs.values()) <= 1e-8, diffs
    # the server's held-out explained variance is that of the projection scikit-learn's components make
    kept = reference.inverse_transform(reference.transform(test_X)) - model.mean_
    expected = 1 - ((test_X - model.mean_ - kept) ** 2).sum() / ((test_X - model.mean_) ** 2).sum()
    assert rd.events("round")[-1]["central"]["explained_variance"] == pytest.approx(expected, rel=1e-8)
    assert score(round_rows(rd)) == ("explained_variance", "var.")
    logged = [p.read_bytes() for p in (rd.path.parents[1] / "mlartifacts").rglob("model.skops")]  # MLflow's copies
    assert len(logged) == 2 and (rd.path / workspace.ESTIMATOR_FILE).read_bytes() in logged  # the plaintext runs'

    he_cfg, he_rd = runs["pca-he"]
    assert not (he_rd.path / workspace.ESTIMATOR_FILE).exists()
    he = _decrypted(he_cfg, he_rd)
    he_diffs = {
        "components": np.abs(_matched(he.components_, reference.components_) - reference.components_).max(),
        "explained variance": np.abs(he.explained_variance_ - reference.explained_variance_).max(),
        "ratio": np.abs(he.explained_variance_ratio_ - reference.explained_variance_ratio_).max(),
    }
    assert max(he_diffs.values()) <= 1e-5, he_diffs
    print("PCA vs scikit-learn pooled, max |diff|:", {k: f"{v:.3g}" for k, v in diffs.items()}, "CKKS:",
          {k: f"{v:.3g}" for k, v in he_diffs.items()})  # fmt: skip
