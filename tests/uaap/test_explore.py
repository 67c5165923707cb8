"""``uaap explore``: 2-D maps and clusters of a table's rows (uaap.explore), each against scikit-learn on the same
rows, and the plots the command writes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import DBSCAN, KMeans
from sklearn.datasets import load_wine
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.preprocessing import StandardScaler

from uaap.cli import main
from uaap.errors import ConfigError
from uaap.explore import explore, load_rows, plot
from uaap.models.kmeans import kmeans_plus_plus

PNG = b"\x89PNG\r\n\x1a\n"


def test_maps_and_clusters_are_scikit_learns_on_the_same_rows_and_plot_as_png(tmp_path: Path) -> None:
    rows = load_rows("wine")
    X, y = rows.X.astype(np.float64), rows.y
    np.testing.assert_allclose(X, StandardScaler().fit_transform(load_wine().data), atol=1e-5)  # scaled as training

    pca = explore(X, y, "pca")
    reference = PCA(2, svd_solver="full").fit(X)
    ours = pca.embedding * np.sign((pca.embedding * reference.transform(X)).sum(axis=0))  # axes up to sign
    np.testing.assert_allclose(ours, reference.transform(X), atol=1e-9)
    assert pca.colour_by == "label" and pca.metrics["explained_variance_ratio"] == pytest.approx(
        reference.explained_variance_ratio_.sum(), rel=1e-9
    )

    km = explore(X, y, "kmeans", n_clusters=3, seed=0)
    theirs = KMeans(3, init=kmeans_plus_plus(X, 3, 0), n_init=1, max_iter=100, tol=0.0, algorithm="lloyd").fit(X)
    assert np.array_equal(km.colour, theirs.labels_) and km.colour_by == "cluster"
    assert km.metrics["inertia"] == pytest.approx(theirs.inertia_, rel=1e-9)
    assert km.metrics["silhouette"] == pytest.approx(silhouette_score(X, theirs.labels_), rel=1e-9)
    assert km.metrics["adjusted_rand"] == pytest.approx(adjusted_rand_score(y, theirs.labels_))
    assert km.metrics["adjusted_rand"] > 0.8  # wine's three cultivars

    db = explore(X, y, "dbscan", eps=2.3, min_samples=5)
    expected = DBSCAN(eps=2.3, min_samples=5).fit_predict(X)
    assert np.array_equal(db.colour, expected) and (expected == -1).any()  # some rows are noise
    assert db.metrics["noise_fraction"] == pytest.approx((expected == -1).mean())
    assert db.metrics["clusters"] == len(set(expected) - {-1})

    tsne = explore(X, y, "tsne", perplexity=20, seed=0)
    assert tsne.embedding.shape == (len(X), 2)
    assert trustworthiness(X, tsne.embedding, n_neighbors=5) > 0.9  # neighbours stay neighbours

    tf_before = "tensorflow" in sys.modules
    um = explore(X, y, "umap", seed=0)  # umap-learn's own UMAP, in the explore extra
    assert um.embedding.shape == (len(X), 2) and um.colour_by == "label"
    assert trustworthiness(X, um.embedding, n_neighbors=5) > 0.9
    assert ("tensorflow" in sys.modules) == tf_before, "importing umap must neither load nor block TensorFlow"

    for result in (pca, km, db, tsne, um):
        out = plot(result, tmp_path / f"{result.method}.png")
        assert out.read_bytes()[:8] == PNG and out.stat().st_size > 10_000

    with pytest.raises(ConfigError, match="method='isomap' is not supported; choose one of: pca, tsne, umap"):
        explore(X, y, "isomap")


def test_uaap_explore_reads_a_table_with_or_without_its_label_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wine = load_wine(as_frame=True)
    table = wine.data.assign(cultivar=[f"c{v}" for v in wine.target])
    table.loc[3, "alcohol"] = np.nan  # a hole: the preprocessing pipeline imputes it
    source = tmp_path / "wine.csv"
    table.to_csv(source, index=False)

    out = tmp_path / "clusters.png"
    argv = ["explore", "--data", str(source), "--target", "cultivar", "--method", "kmeans", "--n-clusters", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_bytes()[:8] == PNG and "silhouette" in printed and "adjusted_rand" in printed

    unlabelled = tmp_path / "features.csv"
    pd.DataFrame(wine.data).to_csv(unlabelled, index=False)
    out = tmp_path / "map.png"
    assert main(["explore", "--data", str(unlabelled), "--method", "pca", "--out", str(out), "--max-rows", "100"]) == 0
    printed = capsys.readouterr().out
    assert out.read_bytes()[:8] == PNG and "drawing 100 of 178 rows" in printed

    assert main(["explore", "--data", "wine", "--method", "pca", "--out", str(tmp_path / "map.gif")]) == 2
    assert "give a .png, .svg or .pdf file" in capsys.readouterr().err
