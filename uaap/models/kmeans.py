"""K-Means whose Lloyd step is a sum, so parts of the data (clients) can take it together, exactly.

One Lloyd iteration needs, for the current centroids, each centroid's count of nearest rows and the sum of
those rows (:func:`local_statistics`). Both are sums over rows: the totals of any split of the rows give the
same new centroids as the pooled rows (:func:`centroids_from`), in the clear or as CKKS ciphertext sums.
:class:`FederatedKMeans` is the scikit-learn estimator; its :meth:`~FederatedKMeans.fit` runs the same
statistics over one table, and :meth:`~FederatedKMeans.from_centers` wraps centroids a federation found.

A centroid that no row is nearest to keeps its place (scikit-learn would move it to a far row, which needs
the rows). Ties go to the lower centroid index (``argmin``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin

from uaap.errors import ConfigError, DataError

BLOCK = 16384  # rows per block of expanded distances (block x k float64 values at once)
DIFFERENCES = 2**22  # float64 differences held at once by squared_distances (32 MB)


@dataclass(frozen=True)
class KMeansStatistics:
    """One part's sufficient statistics of a Lloyd step: per-centroid row sums and counts, and the inertia."""

    sums: np.ndarray  # (k, d): the sum of the rows nearest to each centroid
    counts: np.ndarray  # (k,): how many rows are nearest to each centroid
    inertia: float  # the sum of the rows' squared distances to their nearest centroid


def _rows(table: Any) -> np.ndarray:
    X: np.ndarray = np.asarray(table, dtype=np.float64)
    if X.ndim != 2 or not len(X):
        raise DataError(f"K-Means needs a 2-D table with rows; got an array of shape {X.shape}")
    if not np.isfinite(X).all():
        raise DataError(f"K-Means needs finite values; the table has {int((~np.isfinite(X)).sum())} NaN/Inf")
    return X


def squared_distances(X: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n, k) squared Euclidean distances, as differences (no ``|x|^2 - 2 x.c + |c|^2`` cancellation)."""
    X = np.asarray(X, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    out = np.empty((len(X), len(c)))
    step = max(1, DIFFERENCES // max(1, c.size))  # rows x k x d differences at once
    for start in range(0, len(X), step):
        block = X[start : start + step]
        out[start : start + step] = ((block[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
    return out


def assign(X: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centroid (lowest index on a tie) and its squared distance to it.

    The same labels as :func:`squared_distances`' argmin, faster: distances are first expanded as
    ``|x|^2 - 2 x.c + |c|^2`` (a matrix product); rows whose two nearest centroids are closer than that form's
    rounding bound are decided again by differences, and every row's distance is taken by differences.
    """
    X = np.asarray(X, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    c2 = (c**2).sum(axis=1)
    labels = np.empty(len(X), dtype=np.int64)
    with _one_blas_thread():  # thin products: more BLAS threads only contend (scikit-learn's K-Means limits them too)
        for start in range(0, len(X), BLOCK):
            block = X[start : start + BLOCK]
            x2 = (block**2).sum(axis=1)
            approx = x2[:, None] - 2.0 * (block @ c.T) + c2[None, :]
            nearest = approx.argmin(axis=1)
            if len(c) > 1:
                two = np.partition(approx, 1, axis=1)[:, :2]
                unsure = two[:, 1] - two[:, 0] <= 1e-9 * (x2 + c2.max()) + 1e-300
                if unsure.any():
                    nearest[unsure] = squared_distances(block[unsure], c).argmin(axis=1)
            labels[start : start + BLOCK] = nearest
    return labels, ((X - c[labels]) ** 2).sum(axis=1)


def _one_blas_thread() -> Any:
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    return threadpool_limits(limits=1, user_api="blas")


def local_statistics(X: Any, centroids: np.ndarray) -> KMeansStatistics:
    """The statistics of one Lloyd step over these rows for ``centroids`` (k, d)."""
    X = _rows(X)
    c = np.asarray(centroids, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != X.shape[1]:
        raise DataError(f"centroids of shape {c.shape} do not fit rows of {X.shape[1]} features")
    labels, d2 = assign(X, c)
    sums = np.zeros_like(c)
    for j in range(len(c)):
        members = X[labels == j]
        if len(members):
            sums[j] = members.sum(axis=0)
    counts = np.bincount(labels, minlength=len(c)).astype(np.float64)
    return KMeansStatistics(sums, counts, float(d2.sum()))


def centroids_from(sums: np.ndarray, counts: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The new centroids from summed statistics: sum / count, or the previous centroid where no row is nearest.

    Counts above 0.5 are taken as rows (a CKKS-decrypted count is a whole number within about 1e-9).
    """
    counts = np.asarray(counts, dtype=np.float64)
    filled = counts > 0.5
    out = np.array(previous, dtype=np.float64, copy=True)
    out[filled] = np.asarray(sums, dtype=np.float64)[filled] / counts[filled, None]
    return out


def kmeans_plus_plus(X: Any, n_clusters: int, seed: int = 0) -> np.ndarray:
    """k-means++ seeding (Arthur and Vassilvitskii, 2007) on ``X``, reproducible from ``seed``."""
    X = _rows(X)
    if not 1 <= n_clusters <= len(X):
        raise ConfigError(
            f"n-clusters={n_clusters} needs between 1 and {len(X)} rows to seed from; lower n-clusters or give "
            "more rows"
        )
    rng = np.random.default_rng(seed)
    centers = [X[rng.integers(len(X))]]
    closest = ((X - centers[0]) ** 2).sum(axis=1)
    for _ in range(1, n_clusters):
        total = closest.sum()
        pick = int(rng.choice(len(X), p=closest / total)) if total > 0 else int(rng.integers(len(X)))
        centers.append(X[pick])
        closest = np.minimum(closest, ((X - X[pick]) ** 2).sum(axis=1))
    return np.array(centers)


class FederatedKMeans(ClusterMixin, TransformerMixin, BaseEstimator):  # type: ignore[misc]  # sklearn: untyped
    """Lloyd's K-Means from summed statistics (scikit-learn compatible).

    ``init`` is "k-means++" (seeded by ``random_state``) or an (n_clusters, n_features) array; ``max_iter`` Lloyd
    iterations are run (a federation runs one per round). Fitted: ``cluster_centers_``, ``init_centers_``,
    ``n_iter_``, ``inertia_`` (at the final centroids) and ``labels_``.
    """

    def __init__(self, n_clusters: int = 8, *, max_iter: int = 10, init: Any = "k-means++", random_state: int = 0):
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.init = init
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> FederatedKMeans:
        """Run ``max_iter`` Lloyd iterations on ``X`` from ``init``."""
        X = _rows(X)
        if isinstance(self.init, str):
            if self.init != "k-means++":
                raise ConfigError(f"init={self.init!r} is not supported; give 'k-means++' or an array of centroids")
            centers = kmeans_plus_plus(X, self.n_clusters, self.random_state)
        else:
            centers = np.array(self.init, dtype=np.float64)
            if centers.shape != (self.n_clusters, X.shape[1]):
                raise ConfigError(
                    f"init has shape {centers.shape}; expected ({self.n_clusters}, {X.shape[1]}) centroids"
                )
        self.init_centers_ = centers.copy()
        for _ in range(self.max_iter):
            stats = local_statistics(X, centers)
            centers = centroids_from(stats.sums, stats.counts, centers)
        return self._fitted(centers, self.max_iter, X)

    @classmethod
    def from_centers(
        cls, centers: np.ndarray, *, n_iter: int, init_centers: np.ndarray | None = None
    ) -> FederatedKMeans:
        """A fitted estimator around centroids a federation found (no rows needed)."""
        centers = np.asarray(centers, dtype=np.float64)
        model = cls(n_clusters=len(centers), max_iter=n_iter)
        model.init_centers_ = centers.copy() if init_centers is None else np.asarray(init_centers, dtype=np.float64)
        return model._fitted(centers, n_iter, None)

    def _fitted(self, centers: np.ndarray, n_iter: int, X: np.ndarray | None) -> FederatedKMeans:
        self.cluster_centers_ = centers
        self.n_iter_ = n_iter
        self.n_features_in_ = int(centers.shape[1])
        if X is not None:
            self.labels_, d2 = assign(X, centers)
            self.inertia_ = float(d2.sum())
        return self

    def predict(self, X: Any) -> np.ndarray:
        """The nearest centroid of each row."""
        return assign(self._check(X), self.cluster_centers_)[0]

    def transform(self, X: Any) -> np.ndarray:
        """Each row's Euclidean distance to every centroid."""
        return np.asarray(np.sqrt(squared_distances(self._check(X), self.cluster_centers_)))

    def score(self, X: Any, y: Any = None) -> float:
        """Minus the inertia of ``X`` (scikit-learn's convention: higher is better)."""
        return -float(assign(self._check(X), self.cluster_centers_)[1].sum())

    def evaluate(self, X: Any, y: Any = None) -> dict[str, float]:
        """Inertia (total and per row), the silhouette (2 or more clusters used) and, with labels ``y``, the
        adjusted Rand index against them."""
        from sklearn.metrics import adjusted_rand_score, silhouette_score

        X = self._check(X)
        labels, d2 = assign(X, self.cluster_centers_)
        out = {"inertia": float(d2.sum()), "mean_inertia": float(d2.mean())}
        if 2 <= len(np.unique(labels)) < len(X):
            out["silhouette"] = float(silhouette_score(X, labels))
        if y is not None:
            out["adjusted_rand"] = float(adjusted_rand_score(np.asarray(y), labels))
        return out

    def _check(self, table: Any) -> np.ndarray:
        if not hasattr(self, "cluster_centers_"):
            raise ConfigError("this FederatedKMeans is not fitted yet: call fit (or from_centers) first")
        X = _rows(table)
        if X.shape[1] != self.n_features_in_:
            raise DataError(f"rows have {X.shape[1]} features; the centroids have {self.n_features_in_}")
        return X
