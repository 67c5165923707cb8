"""``uaap explore``: a 2-D scatter plot of a table's rows (PCA, t-SNE, UMAP) or its clusters (K-Means, DBSCAN)."""

from __future__ import annotations

import argparse
from typing import Any

METHODS = ("pca", "tsne", "umap", "dbscan", "kmeans")  # uaap.explore.METHODS, without importing it here


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``uaap explore``."""
    p = sub.add_parser(
        "explore",
        help="look at a table's rows as a 2-D scatter plot (PCA, t-SNE, UMAP) or clusters (K-Means, DBSCAN)",
        description="Map the rows of a bundled data set (digits, wine, ...) or of your table (through UAAP's "
        "preprocessing) to two dimensions and write a scatter plot coloured by cluster, else by the label column. "
        "Central: every row is read here. K-Means and PCA also federate exactly (uaap simulate --model kmeans|pca "
        "--strategy fedstats). UMAP needs `pip install umap-learn`.",
    )
    p.add_argument("--data", required=True, metavar="SOURCE", help="a bundled data set name, a file, URL or database")
    p.add_argument("--target", default="", metavar="COLUMN", help="label column of a table (colours the points)")
    p.add_argument("--method", default="pca", choices=METHODS, help="what to draw (default pca)")
    p.add_argument("--out", required=True, metavar="FILE", help="the plot (.png, .svg or .pdf)")
    p.add_argument("--n-clusters", type=int, default=8, help="clusters of --method kmeans (default 8)")
    p.add_argument("--eps", type=float, default=0.5, help="neighbourhood radius of --method dbscan (default 0.5)")
    p.add_argument("--min-samples", type=int, default=5, help="core-point neighbours of --method dbscan (default 5)")
    p.add_argument("--perplexity", type=float, default=30.0, help="perplexity of --method tsne (default 30)")
    p.add_argument("--max-rows", type=int, default=5000, help="rows drawn at random beyond this many (default 5000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the rows, map them, print the metrics and write the plot."""
    import numpy as np
    from rich.console import Console

    from uaap.errors import ConfigError
    from uaap.explore import explore, load_rows, plot

    if args.max_rows < 3:
        raise ConfigError(f"--max-rows {args.max_rows}: give at least 3")
    console = Console()
    with console.status(f"reading {args.data}"):
        rows = load_rows(args.data, args.target, seed=args.seed)
    X = rows.X
    y = rows.y if rows.task == "classification" else None  # labels colour the map; a numeric target does not
    if len(X) > args.max_rows:
        keep = np.sort(np.random.default_rng(args.seed).choice(len(X), args.max_rows, replace=False))
        X, y = X[keep], (None if y is None else y[keep])
        console.print(f"drawing {args.max_rows} of {len(rows.X)} rows at random (--max-rows)")
    with console.status(f"{args.method} on {len(X)} rows x {X.shape[1]} features"):
        result = explore(
            X,
            y,
            args.method,
            n_clusters=args.n_clusters,
            eps=args.eps,
            min_samples=args.min_samples,
            perplexity=args.perplexity,
            seed=args.seed,
        )
    for key, value in result.metrics.items():
        console.print(f"{key}: {value:.4g}", markup=False)
    console.print(f"plot: {plot(result, args.out, f'{args.method} of {rows.name} ({len(X)} rows)')}", markup=False)
    return 0
