"""Central exploration of one table: a 2-D map (PCA, t-SNE, UMAP) or clusters (K-Means, DBSCAN) and a scatter plot.

``uaap explore`` (:mod:`uaap.commands.explore`) reads the rows through :mod:`uaap.data` (a bundled data set by
name, or a table with its preprocessing pipeline), and :func:`explore` maps them to two dimensions: PCA and
K-Means are the estimators a federation fits from summed statistics (:mod:`uaap.models.pca`,
:mod:`uaap.models.kmeans`), here on pooled rows; DBSCAN, t-SNE and UMAP need every row at once, so they are
central only. Clusters are drawn on the first two principal components. Points are coloured by cluster, else
by the label column when there is one. UMAP is umap-learn's (the ``explore`` extra).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.errors import ConfigError, DataError

if TYPE_CHECKING:
    from uaap.data import Dataset

METHODS = ("pca", "tsne", "umap", "dbscan", "kmeans")
UMAP_INSTALL = "pip install 'uaap[explore]'"


@dataclass(frozen=True)
class Exploration:
    """A 2-D map of the rows, what colours each point, and the method's metrics."""

    method: str
    embedding: np.ndarray  # (n, 2)
    colour: np.ndarray | None  # a cluster (-1: DBSCAN's noise) or label per row; None: one colour
    colour_by: str  # "cluster", "label" or ""
    metrics: dict[str, float] = field(default_factory=dict)
    axes: tuple[str, str] = ("1", "2")


def load_rows(data: str, target: str = "", *, seed: int = 0) -> Dataset:
    """The rows to explore: a bundled data set by name (scaled as training scales it) or a table (a file, URL or
    database), through the preprocessing pipeline. Without ``target`` every column is a feature."""
    from dataclasses import replace

    import pandas as pd

    from uaap.config import RunConfig
    from uaap.data import BUNDLED, load_bundled, load_table
    from uaap.data.loaders import read_frame
    from uaap.data.tables import RawTable, fit, to_dataset

    if data in BUNDLED:
        rows = load_bundled(data)
        if data == "digits":
            return replace(rows, X=(rows.X / 16.0).astype(np.float32))
        std = rows.X.std(axis=0)
        X = (rows.X - rows.X.mean(axis=0)) / np.where(std < 1e-8, 1.0, std)
        return replace(rows, X=X.astype(np.float32))
    if target:
        return load_table(data, target)
    frame = read_frame(data)
    if len(frame) < 2:
        raise DataError(f"{data} has {len(frame)} rows; exploring needs at least 2")
    index = "__uaap_row__"
    raw = RawTable(Path(data).stem or "table", pd.concat([frame, pd.Series(np.arange(len(frame)), name=index)], axis=1),
                   index)  # fmt: skip
    return to_dataset(raw, fit([raw], RunConfig(task="regression", seed=seed)))  # the row number as a stand-in target


def explore(
    X: Any,
    y: np.ndarray | None = None,
    method: str = "pca",
    *,
    n_clusters: int = 8,
    eps: float = 0.5,
    min_samples: int = 5,
    perplexity: float = 30.0,
    seed: int = 0,
) -> Exploration:
    """Map rows ``X`` to two dimensions (and clusters) with ``method``; ``y`` (labels) colours a map and scores
    clusters (adjusted Rand index).

    OpenMP and BLAS threads are limited to the CPUs other processes leave free (:func:`uaap.threads.free_cpus`):
    t-SNE with a thread per core took 9.5 s on a busy 2-core machine, and 0.8 s with one thread.
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    from uaap.threads import free_cpus

    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not supported; choose one of: {', '.join(METHODS)}")
    with threadpool_limits(limits=free_cpus()):
        return _explore(X, y, method, n_clusters, eps, min_samples, perplexity, seed)


def _explore(
    X: Any,
    y: np.ndarray | None,
    method: str,
    n_clusters: int,
    eps: float,
    min_samples: int,
    perplexity: float,
    seed: int,
) -> Exploration:
    from uaap.models.pca import FederatedPCA

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) < 3 or X.shape[1] < 2:
        raise DataError(f"exploring needs at least 3 rows of 2 or more features; got {X.shape}")
    labels = None if y is None else np.asarray(y)
    by_label = "label" if labels is not None else ""
    if method == "pca":
        pca = FederatedPCA(2).fit(X)
        ratio = pca.explained_variance_ratio_
        axes = (f"PC1 ({ratio[0]:.0%})", f"PC2 ({ratio[1]:.0%})")
        return Exploration(
            method, pca.transform(X), labels, by_label, {"explained_variance_ratio": float(ratio.sum())}, axes
        )
    if method == "tsne":
        from sklearn.manifold import TSNE

        if not 0 < perplexity < len(X):
            raise ConfigError(f"perplexity={perplexity:g} must be above 0 and below the {len(X)} rows")
        tsne = TSNE(2, perplexity=perplexity, random_state=seed, init="pca")
        return Exploration(
            method, tsne.fit_transform(X), labels, by_label, {"kl_divergence": float(tsne.kl_divergence_)}
        )
    if method == "umap":
        reducer = _umap()(random_state=seed, n_jobs=1)
        return Exploration(method, reducer.fit_transform(X), labels, by_label)
    if method == "kmeans":
        from uaap.models.kmeans import FederatedKMeans

        model = FederatedKMeans(n_clusters, max_iter=100, random_state=seed).fit(X)
        clusters = model.labels_
        metrics = model.evaluate(X, labels)
    else:
        from sklearn.cluster import DBSCAN

        clusters = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(X)
        metrics = _cluster_metrics(X, clusters, labels)
    pca = FederatedPCA(2).fit(X)
    return Exploration(method, pca.transform(X), clusters, "cluster", metrics, ("PC1", "PC2"))


def _cluster_metrics(X: np.ndarray, clusters: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """DBSCAN's clusters, noise share, silhouette of the clustered rows and, with labels, the adjusted Rand index."""
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    kept = clusters >= 0
    found = len(set(clusters[kept].tolist()))
    out = {"clusters": float(found), "noise_fraction": float(1.0 - kept.mean())}
    if 2 <= found < kept.sum():
        out["silhouette"] = float(silhouette_score(X[kept], clusters[kept]))
    if labels is not None:
        out["adjusted_rand"] = float(adjusted_rand_score(labels, clusters))
    return out


def plot(result: Exploration, out: str | Path, title: str = "") -> Path:
    """Draw the map as a scatter plot coloured by cluster or label, and save it (PNG, SVG or PDF by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(out)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ConfigError(f"--out {str(path)!r}: give a .png, .svg or .pdf file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 6))
    xy = result.embedding
    if result.colour is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.7)
    else:
        values = list(dict.fromkeys(sorted(result.colour.tolist())))
        cmap = plt.get_cmap("tab20" if len(values) > 10 else "tab10")
        for i, value in enumerate(values):
            rows = result.colour == value
            noise = result.colour_by == "cluster" and value == -1
            ax.scatter(xy[rows, 0], xy[rows, 1], s=8, alpha=0.7, color="lightgrey" if noise else cmap(i % cmap.N),
                       label="noise" if noise else str(value))  # fmt: skip
        if len(values) <= 20:
            ax.legend(title=result.colour_by, markerscale=2, fontsize=8, loc="best")
    ax.set_xlabel(result.axes[0])
    ax.set_ylabel(result.axes[1])
    shown = ", ".join(f"{k} {v:.3g}" for k, v in result.metrics.items())
    ax.set_title((title or result.method) + (f"\n{shown}" if shown else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _umap() -> Any:
    """umap-learn's ``UMAP`` class, imported without TensorFlow.

    umap-learn's package imports its ParametricUMAP, which imports TensorFlow when it is installed (the edge extra
    installs it): 30 s and half a gigabyte on a busy 2-core machine for a class we never use. TensorFlow is
    blocked for that one import (and only if nothing imported it before), so ParametricUMAP falls back to its stub.
    """
    import sys

    blocked = "tensorflow" not in sys.modules
    if blocked:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # None is how sys.modules blocks an import
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImportWarning)
            import umap  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        raise ConfigError(
            f"method='umap' needs umap-learn, which is not installed: run `{UMAP_INSTALL}`, or use --method tsne "
            "(the same kind of map, in scikit-learn)"
        ) from None
    finally:
        if blocked and sys.modules.get("tensorflow", 0) is None:
            del sys.modules["tensorflow"]
    return umap.UMAP
