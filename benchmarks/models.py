"""Federated K-Means and PCA (summed statistics) against pooled scikit-learn on the same rows.

Two measurements, medians over ``--repeats`` runs:

* **compute** on generated blobs (``--rows`` x ``--features``, ``--clusters`` centres) split into ``--clients``
  parts: ours is what the clients and the server compute, in one process (each part's statistics, their sum,
  the model from the totals: ``uaap.models.kmeans`` / ``uaap.models.pca``); the baseline is scikit-learn on the
  pooled rows, ``KMeans(algorithm="lloyd", n_init=1, tol=0)`` from the same initial centroids for the same
  ``--rounds`` iterations, and ``PCA(svd_solver="full")``. The results are checked equal (centroids, components
  up to sign) before the times are reported;
* **federation** on digits (3 clients): the whole round loop with the real ClientApp in this process
  (``tests.flower_helpers.LocalGrid``: checkpoints, metrics, MLflow, reply validation), in the clear and under
  CKKS, against scikit-learn on the pooled rows. What it adds is the platform's per-round overhead, not maths.

Writes ``artifacts/models.json``.

    python benchmarks/models.py [--rows 200000] [--features 20] [--clusters 8] [--clients 5] [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _median(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def compute(args: argparse.Namespace) -> dict[str, Any]:
    """K-Means and PCA from the parts' summed statistics vs scikit-learn on the pooled rows."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs
    from sklearn.decomposition import PCA

    from uaap.models.kmeans import FederatedKMeans, centroids_from, kmeans_plus_plus, local_statistics
    from uaap.models.pca import FederatedPCA
    from uaap.models.pca import local_statistics as pca_statistics

    X, _ = make_blobs(args.rows, args.features, centers=args.clusters, cluster_std=3.0, random_state=0)
    parts = np.array_split(X, args.clients)
    start = kmeans_plus_plus(X[:2000], args.clusters, 0)

    def ours_kmeans() -> np.ndarray:
        centers = start
        for _ in range(args.rounds):
            stats = [local_statistics(p, centers) for p in parts]
            centers = centroids_from(sum(s.sums for s in stats), sum(s.counts for s in stats), centers)
        return FederatedKMeans.from_centers(centers, n_iter=args.rounds).cluster_centers_

    def sklearn_kmeans() -> np.ndarray:
        km = KMeans(args.clusters, init=start, n_init=1, max_iter=args.rounds, tol=0.0, algorithm="lloyd")
        return km.fit(X).cluster_centers_

    def ours_pca() -> np.ndarray:
        stats = [pca_statistics(p) for p in parts]
        totals = sum(s.n for s in stats), sum(s.sum for s in stats), sum(s.xtx for s in stats)
        return FederatedPCA.from_statistics(*totals, n_components=args.components).components_

    def sklearn_pca() -> np.ndarray:
        return PCA(args.components, svd_solver="full").fit(X).components_

    out: dict[str, Any] = {"rows": args.rows, "features": args.features, "clients": args.clients}
    for name, mine, theirs in (("kmeans", ours_kmeans, sklearn_kmeans), ("pca", ours_pca, sklearn_pca)):
        t_ours, a = _median(mine, args.repeats)
        t_base, b = _median(theirs, args.repeats)
        diff = float(np.abs(np.abs(a) - np.abs(b)).max())  # components are defined up to sign
        if diff > 1e-6:
            raise SystemExit(
                f"{name}: ours and scikit-learn differ by {diff:g}; the timing would compare different work"
            )
        out[name] = {"ours_s": t_ours, "sklearn_s": t_base, "ratio": t_ours / t_base, "max_abs_diff": diff}
    return out


def federation(args: argparse.Namespace) -> dict[str, Any]:
    """The whole federation in this process (server loop + ClientApp) on digits vs scikit-learn pooled."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from server.federation import run_federation
    from tests.flower_helpers import LocalGrid
    from uaap import crypto
    from uaap.config import RunConfig
    from uaap.data import federated
    from uaap.models.kmeans import kmeans_plus_plus

    os.environ["UAAP_HOME"] = tempfile.mkdtemp(prefix="uaap-bench-models-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    base = RunConfig(dataset="digits", num_clients=3, min_clients=3, strategy="fedstats", seed=1, experiment="bench")
    runs = {
        "kmeans": base.replace(model="kmeans", n_clusters=10, num_rounds=args.rounds),
        "pca": base.replace(model="pca", n_components=args.components, num_rounds=1),
    }
    clients, test = federated(runs["kmeans"], 3)
    X = np.concatenate([c.train.X for c in clients]).astype(np.float64)
    start = kmeans_plus_plus(test.X, 10, 1)
    baseline = {
        "kmeans": lambda: KMeans(10, init=start, n_init=1, max_iter=args.rounds, tol=0.0, algorithm="lloyd").fit(X),
        "pca": lambda: PCA(args.components, svd_solver="full").fit(X),
    }
    run_federation(LocalGrid(3), runs["pca"].replace(run_id="warm-up"), num_partitions=3)  # imports, MLflow schema
    out: dict[str, Any] = {"rows": len(X), "clients": 3, "kmeans_rounds": args.rounds}
    for name, cfg in runs.items():
        t_base, _ = _median(baseline[name], args.repeats)
        entry = {"sklearn_s": t_base}
        for mode, run_cfg in (("plain", cfg), ("ckks", cfg.replace(secure_aggregation="ckks"))):

            def once(c: RunConfig = run_cfg, tag: str = f"{name}-{mode}", runs: list[int] = []) -> None:  # noqa: B006
                runs.append(len(runs))  # a fresh run folder each time (a finished run would resume and stop)
                c = crypto.ensure_simulation_keys(c.replace(run_id=f"{tag}-{len(runs)}"))
                run_federation(LocalGrid(3), c, num_partitions=3)

            t, _ = _median(once, args.repeats)
            entry[f"{mode}_s"] = t
            entry[f"{mode}_ratio"] = t / t_base
        out[name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    """Run both measurements, print them and write artifacts/models.json."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--clusters", type=int, default=8)
    parser.add_argument("--components", type=int, default=5)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-federation", action="store_true", help="only the compute comparison")
    args = parser.parse_args(argv)
    import tenseal  # noqa: F401  # before anything that may load protobuf (see tests/conftest.py)

    result = {"compute": compute(args)}
    if not args.skip_federation:
        result["federation"] = federation(args)
    for part, entries in result.items():
        for name, entry in entries.items():
            if isinstance(entry, dict):
                shown = ", ".join(f"{k} {v:.4g}" for k, v in entry.items())
                print(f"{part:10s} {name:6s} {shown}")
    out = REPO / "artifacts" / "models.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
