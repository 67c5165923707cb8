"""Families fitted from summed statistics (registry ``federated="statistics"``): what one round carries.

The server's strategy (``strategies/statistics.py``) and the clients (``client/statistics.py``) share this
layout. A round's global arrays are the *totals* of the previous round's statistics, never a ratio: the server
only adds (in the clear, or as CKKS ciphertext it cannot read), and whoever holds the totals derives the model:

* ``kmeans``: ``sums`` (k, d), ``counts`` (k,), ``centroids`` (k, d) and ``clients`` (1,). Each client sends
  the per-centroid sums and counts of its rows for the centroids it received, plus those centroids and a 1,
  so the totals also carry the previous centroids (times the number of clients) for a centroid no row chose.
  Round 1's arrays are the initial centroids in that form (counts 1, one client). Round ``r`` is Lloyd
  iteration ``r``; the last round's totals give the final centroids.
* ``pca``: ``n`` (1,), ``sum`` (d,) and ``xtx`` (d, d); one round gives the pooled covariance exactly
  (round 1's arrays are zeros, their layout only).

Under CKKS the totals come back as ciphertext that only the clients (key holders) decrypt; the server never
sees centroids or a covariance, only the plaintext training metrics (rows and inertia per client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from uaap.errors import ConfigError, DataError
from uaap.models.kmeans import FederatedKMeans, centroids_from, kmeans_plus_plus
from uaap.models.kmeans import local_statistics as kmeans_statistics
from uaap.models.pca import FederatedPCA
from uaap.models.pca import local_statistics as pca_statistics

if TYPE_CHECKING:
    from pathlib import Path

    from flwr.app import ArrayRecord

    from uaap.config import RunConfig
    from uaap.crypto import HEContext
    from uaap.data import Dataset
    from uaap.workspace import RunDir

Arrays = dict[str, np.ndarray]


class KMeansRounds:
    """K-Means: one Lloyd iteration per round."""

    names = ("sums", "counts", "centroids", "clients")

    def initial(self, cfg: RunConfig, rows: np.ndarray) -> Arrays:
        """Round 1's arrays: k-means++ centroids seeded from ``rows`` (the server's own held-out rows)."""
        c0 = kmeans_plus_plus(rows, cfg.n_clusters, cfg.seed)
        return {"sums": c0, "counts": np.ones(len(c0)), "centroids": c0.copy(), "clients": np.ones(1)}

    def centroids(self, totals: Arrays) -> np.ndarray:
        """The centroids the totals give (a centroid no row chose stays where it was)."""
        clients = float(np.asarray(totals["clients"]).ravel()[0])
        if not clients > 0.5:
            raise ConfigError(f"the K-Means totals count {clients:g} clients; expected at least one")
        previous = np.asarray(totals["centroids"], dtype=np.float64) / np.rint(clients)
        return centroids_from(totals["sums"], totals["counts"], previous)

    def local(self, cfg: RunConfig, X: np.ndarray, totals: Arrays) -> tuple[Arrays, float]:
        """This client's statistics for the centroids ``totals`` give, and its mean squared distance (inertia)."""
        centers = self.centroids(totals)
        if centers.shape != (cfg.n_clusters, X.shape[1]):
            raise ConfigError(
                f"the server's centroids have shape {centers.shape}; this client expects ({cfg.n_clusters}, "
                f"{X.shape[1]}) for n-clusters={cfg.n_clusters} and its {X.shape[1]} features"
            )
        stats = kmeans_statistics(X, centers)
        out = {"sums": stats.sums, "counts": stats.counts, "centroids": centers, "clients": np.ones(1)}
        return out, stats.inertia / len(X)

    def check(self, stats: Arrays, rows: int, totals: Arrays) -> None:
        """Refuse statistics that ``rows`` rows cannot give for the centroids ``totals`` give (plaintext replies)."""
        counts = stats["counts"]
        if not (np.all(counts >= 0) and np.array_equal(counts, np.rint(counts)) and counts.sum() == rows):
            raise DataError(
                f"counts {counts.tolist()[:10]} are not whole numbers >= 0 adding up to num-examples={rows}"
            )
        if np.any(stats["sums"][counts == 0] != 0):
            raise DataError("a centroid no row chose has a non-zero sum")
        if stats["clients"].tolist() != [1.0]:
            raise DataError(f"'clients' is {stats['clients'].tolist()[:3]}; one client sends [1]")
        if not np.array_equal(stats["centroids"], self.centroids(totals)):
            raise DataError("the centroids sent back are not those of this round's totals")

    def estimator(self, cfg: RunConfig, totals: Arrays, rounds: int) -> FederatedKMeans:
        """The fitted model after ``rounds`` Lloyd iterations."""
        return FederatedKMeans.from_centers(self.centroids(totals), n_iter=rounds)


class PCARounds:
    """PCA: one round of summed ``n``, ``sum x`` and ``X^T X``."""

    names = ("n", "sum", "xtx")

    def initial(self, cfg: RunConfig, rows: np.ndarray) -> Arrays:
        """Round 1's arrays: zeros in the layout of the statistics."""
        d = rows.shape[1]
        if cfg.n_components > d:
            raise ConfigError(f"n-components={cfg.n_components} exceeds the data's {d} features; lower it")
        return {"n": np.zeros(1), "sum": np.zeros(d), "xtx": np.zeros((d, d))}

    def local(self, cfg: RunConfig, X: np.ndarray, totals: Arrays) -> tuple[Arrays, float]:
        """This client's ``n``, ``sum x`` and ``X^T X`` (the received totals are not needed), and 0 as its loss."""
        if totals["sum"].shape != (X.shape[1],):
            raise ConfigError(f"the server expects {totals['sum'].shape} sums; this client has {X.shape[1]} features")
        s = pca_statistics(X)
        return {"n": np.array([s.n]), "sum": s.sum, "xtx": s.xtx}, 0.0

    def check(self, stats: Arrays, rows: int, totals: Arrays) -> None:
        """Refuse statistics that ``rows`` real rows cannot give: ``n`` must be ``rows``, X^T X symmetric with a
        non-negative diagonal, and each column sum within Cauchy-Schwarz's bound ``sum^2 <= n * sum of squares``."""
        if stats["n"].tolist() != [float(rows)]:
            raise DataError(f"n={stats['n'].tolist()[:3]} differs from num-examples={rows}")
        xtx, diag = stats["xtx"], np.diag(stats["xtx"])
        scale = float(np.abs(diag).max()) if diag.size else 0.0
        if np.any(diag < 0) or float(np.abs(xtx - xtx.T).max(initial=0.0)) > 1e-9 * scale:
            raise DataError("X^T X is not symmetric with a non-negative diagonal")
        if np.any(stats["sum"] ** 2 > rows * diag * (1 + 1e-9) + 1e-12):
            raise DataError("a column sum exceeds what its sum of squares allows (sum^2 <= n * sum x^2)")

    def estimator(self, cfg: RunConfig, totals: Arrays, rounds: int) -> FederatedPCA:
        """The fitted model from the totals."""
        n = float(np.asarray(totals["n"]).ravel()[0])
        return FederatedPCA.from_statistics(n, totals["sum"], totals["xtx"], cfg.n_components)


FAMILIES: dict[str, Any] = {"kmeans": KMeansRounds(), "pca": PCARounds()}


def rounds_of(model: str) -> KMeansRounds | PCARounds | None:
    """The round layout of a family fitted from summed statistics, or None for any other family."""
    return FAMILIES.get(model)


def as_arrays(family: KMeansRounds | PCARounds, values: list[np.ndarray]) -> Arrays:
    """Name a round's arrays (in the family's order)."""
    if len(values) != len(family.names):
        raise ConfigError(f"a round carries {len(values)} arrays; expected {len(family.names)} {family.names}")
    return {name: np.asarray(v, dtype=np.float64) for name, v in zip(family.names, values, strict=True)}


def decrypt_totals(record: ArrayRecord, hctx: HEContext) -> list[np.ndarray]:
    """The raw (not averaged) totals an encrypted record holds, in its arrays' shapes (key holders only)."""
    from uaap import crypto

    flat = np.asarray(crypto.decrypt_sum(record, hctx), dtype=np.float64)
    values, pos = [], 0
    for shape in crypto.record_shapes(record):
        size = int(np.prod(shape))
        values.append(flat[pos : pos + size].reshape(tuple(int(d) for d in shape)))
        pos += size
    return values


def save_model(rd: RunDir, cfg: RunConfig, values: list[np.ndarray], rounds: int, meta: Dataset, **extra: Any) -> Path:
    """The estimator a run's plaintext totals give, saved as ``model.skops`` in its run folder (returns the path)."""
    from uaap import workspace
    from uaap.data import target_meta

    family = rounds_of(cfg.model)
    if family is None:
        raise ConfigError(f"model={cfg.model!r} is not fitted from summed statistics (kmeans, pca)")
    model = family.estimator(cfg, as_arrays(family, values), rounds)
    info = {
        "family": cfg.model,
        "run_id": rd.run_id,
        "dataset": cfg.dataset,
        "n_features": meta.n_features,
        "n_classes": meta.n_classes,
        "feature_names": list(meta.feature_names),
        "rounds": rounds,
        **target_meta(meta),
        **extra,
    }
    return workspace.save_estimator(rd.path / workspace.ESTIMATOR_FILE, model, info)


def check_ckks_range(model: str, values: list[np.ndarray], summands: int) -> None:
    """Refuse statistics whose total over ``summands`` clients could leave the CKKS range (a sum grows with the rows:
    counts, sums and X^T X are not bounded like model weights), with what to do instead."""
    from uaap.crypto import MAX_ABS_SUM

    peak = max((float(np.abs(v).max()) for v in values if np.size(v)), default=0.0)
    if not np.isfinite(peak) or peak * max(1, summands) >= MAX_ABS_SUM:
        raise ConfigError(
            f"model={model!r}: this client's statistics peak at {peak:.4g}; summed over {summands} clients under CKKS "
            f"they must stay below {MAX_ABS_SUM:g} (2**18). Give each client fewer rows, scale the features down "
            "(scaling=standard), or run with --secure-aggregation none"
        )


def evaluate(model: Any, X: np.ndarray, y: np.ndarray | None = None) -> dict[str, float]:
    """The model's metrics on rows ``X`` (clustering: inertia, silhouette, adjusted Rand against ``y``;
    PCA: explained variance)."""
    return dict(model.evaluate(X, y if isinstance(model, FederatedKMeans) else None))
