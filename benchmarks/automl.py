"""TPE (Optuna, Bayesian) vs random search on the same budget: trials per minute and best score over time.

Both searches use the same data, folds, families, scheduler (ASHA), seed and time budget, one after the
other on one Ray session; warm-start candidates are off so only the sampler differs. With --repeats N
the printed ratios are medians over N side-by-side pairs. Writes a PNG of best-so-far CV score vs time.

    python benchmarks/automl.py --dataset breast_cancer --budget 90 --repeats 1 --out automl_bench.png
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any


def best_over_time(result: Any) -> list[tuple[float, float]]:
    """(seconds since the search began, best finished CV score so far), one point per finished trial."""
    rows = [r for r in result.leaderboard if r["started"]]
    if not rows:
        return []
    t0 = min(r["started"] for r in rows)
    done = sorted((r for r in rows if r["status"] == "completed"), key=lambda r: r["ended"])
    curve, best = [], None
    sign = 1.0 if result.mode == "max" else -1.0
    for r in done:
        if best is None or sign * r["score"] > sign * best:
            best = r["score"]
        curve.append((r["ended"] - t0, best))
    return curve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="breast_cancer")
    parser.add_argument("--budget", type=float, default=90.0, help="seconds per search")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--families", default="logreg,random_forest,xgboost,mlp")
    parser.add_argument("--out", default="automl_bench.png")
    args = parser.parse_args()

    os.environ.setdefault("UAAP_HOME", tempfile.mkdtemp(prefix="uaap-bench-automl-"))
    import ray

    from uaap.automl.search import AutoMLSettings, run_automl
    from uaap.cluster import connect
    from uaap.config import RunConfig

    connect()
    curves: dict[str, list[list[tuple[float, float]]]] = {"tpe": [], "random": []}
    stats: dict[str, dict[str, list[float]]] = {s: {"tpm": [], "best": [], "trials": []} for s in curves}
    try:
        for rep in range(args.repeats):
            for search in ("tpe", "random"):
                settings = AutoMLSettings(
                    search=search,
                    scheduler="asha",
                    folds=args.folds,
                    families=tuple(args.families.split(",")),
                    time_budget_s=args.budget,
                    warm_start=False,
                )
                result = run_automl(RunConfig(dataset=args.dataset, seed=42 + rep), settings)
                curve = best_over_time(result)
                curves[search].append(curve)
                stats[search]["tpm"].append(result.trials / result.search_seconds * 60)
                stats[search]["best"].append(result.best["score"])
                stats[search]["trials"].append(result.trials)
                print(
                    f"repeat {rep} {search:<6} trials {result.trials:>3} in {result.search_seconds:5.0f} s "
                    f"({result.trials / result.search_seconds * 60:5.1f}/min), best CV {result.metric} "
                    f"{result.best['score']:.4f} ({result.best['family']}), "
                    f"test {result.test_metrics[result.metric]:.4f}"
                )
    finally:
        ray.shutdown()
    med = {s: {k: statistics.median(v) for k, v in d.items()} for s, d in stats.items()}
    print(f"\n{args.dataset}, {args.budget:g} s per search, {args.repeats} repeat(s), medians:")
    for s in ("tpe", "random"):
        print(f"  {s:<6} trials/min {med[s]['tpm']:6.1f}   best CV score {med[s]['best']:.4f}")
    print(
        f"  ratio TPE/random: trials/min {med['tpe']['tpm'] / med['random']['tpm']:.2f}, "
        f"best score {med['tpe']['best'] / med['random']['best']:.4f}"
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for search, color in (("tpe", "#c44e52"), ("random", "#4c72b0")):
        for i, curve in enumerate(curves[search]):
            if curve:
                xs, ys = zip(*curve, strict=True)
                ax.step(xs, ys, where="post", color=color, alpha=0.9, label=search if i == 0 else None, marker=".")
    ax.set_xlabel("seconds since the search began")
    ax.set_ylabel("best finished CV score so far")
    ax.set_title(f"TPE vs random on {args.dataset} ({args.budget:g} s each)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(args.out))
    print(f"plot: {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
