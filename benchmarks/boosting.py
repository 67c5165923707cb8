"""Federated XGBoost (``--model xgboost``): accuracy against central XGBoost, and round time against Flower's own
XGBoost example set-up doing the same work.

* **accuracy**: breast_cancer and digits, 5 clients, non-IID (Dirichlet alpha 0.5, the default), bagging and cyclic,
  through our whole round loop with the real ClientApp in this process (``tests.flower_helpers.LocalGrid``; Flower's
  ``FedXgbBagging``/``FedXgbCyclic`` do the aggregation). Central XGBoost is plain ``xgboost.train`` with the same
  parameters and as many boosting rounds as the federated booster holds, on (a) the clients' pooled training rows
  (the same rows the federation trained on) and (b) the whole training split; all on the same test split.
  Acceptance: federated within 2 accuracy points of central.
* **round time**: breast_cancer (two classes: Flower's bagging keeps one tree per reply, which is right only for one
  output), 5 clients on Ray, ours (``simulations.runner.simulate``: checkpoints, metrics.jsonl, MLflow, booster
  checks on both sides) against ``plain_xgboost_app`` (Flower's example client and ``FedXgb*.start``) under the
  same ``run_simulation`` call and the same Ray set-up, repeats interleaved; median of the gaps between consecutive
  round ends, round 1 excluded. Target ratio ours / plain <= 1.2.

Writes ``artifacts/boosting.json`` (``boosting-<partition>-<alpha>.json`` for another split).

    python benchmarks/boosting.py [--bagging-rounds 20] [--cyclic-rounds 100] [--timing-rounds 10] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
# Ray workers inherit the driver's environment: `plain_xgboost_app` is imported there by reference, as client.app is.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
CLIENTS = 5


def _central(cfg: Any, boosting_rounds: int) -> tuple[float, float]:
    """Accuracy of plain XGBoost (same parameters and rounds) on the pooled client rows and on the whole train split."""
    import xgboost as xgb

    from uaap.data import federated, load_split
    from uaap.models.boosting import settings

    clients, test = federated(cfg, CLIENTS)
    params = settings(cfg, test.n_features, test.n_classes).params()
    out = []
    for X, y in (
        (np.concatenate([c.train.X for c in clients]), np.concatenate([c.train.y for c in clients])),
        (load_split(cfg).train.X, load_split(cfg).train.y),
    ):
        bst = xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=boosting_rounds)
        p = bst.predict(xgb.DMatrix(test.X))
        pred = (p > 0.5).astype(int) if p.ndim == 1 else p.argmax(axis=1)
        out.append(float((pred == test.y).mean()))
    return out[0], out[1]


def accuracy(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Federated vs central accuracy per data set and strategy."""
    from server.federation import run_federation
    from tests.flower_helpers import LocalGrid
    from uaap.config import RunConfig
    from uaap.models import boosting

    rows = []
    for dataset in ("breast_cancer", "digits"):
        for strategy, rounds in (("fedxgb-bagging", args.bagging_rounds), ("fedxgb-cyclic", args.cyclic_rounds)):
            cfg = RunConfig(
                model="xgboost",
                strategy=strategy,
                dataset=dataset,
                num_clients=CLIENTS,
                min_clients=CLIENTS,
                num_rounds=rounds,
                xgb_max_depth=args.max_depth,
                xgb_eta=args.eta,
                partition=args.partition,
                dirichlet_alpha=args.alpha,
                experiment="bench-boosting",
                run_id=f"acc-{dataset}-{strategy}-{args.partition}-{args.alpha:g}",
            )
            t0 = time.perf_counter()
            rd = run_federation(LocalGrid(CLIENTS), cfg, num_partitions=CLIENTS)
            wall = time.perf_counter() - t0
            ckpt = rd.latest_checkpoint()
            assert ckpt is not None
            raw = ckpt.arrays[boosting.KEY].tobytes()
            groups = 1 if dataset == "breast_cancer" else 10
            boosting_rounds = boosting.count_trees(raw) // groups
            fed = float(rd.events("round")[-1]["central"]["accuracy"])
            pooled, full = _central(cfg, boosting_rounds)
            rows.append(
                {
                    "dataset": dataset,
                    "strategy": strategy,
                    "rounds": rounds,
                    "boosting_rounds": boosting_rounds,
                    "federated": fed,
                    "central_pooled_clients": pooled,
                    "central_full_train": full,
                    "gap_points_pooled": 100 * (pooled - fed),
                    "gap_points_full": 100 * (full - fed),
                    "within_2_points": fed >= max(pooled, full) - 0.02,
                    "wall_s": wall,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _gaps(marks: list[float]) -> list[float]:
    return [b - a for a, b in zip(marks, marks[1:], strict=False)]


def run_ours(cfg: Any) -> list[float]:
    """Round durations of ``uaap``'s simulate() (round 1 first)."""
    from simulations.runner import simulate

    rd = simulate(cfg)
    return _gaps([e["time"] for e in sorted(rd.events("round"), key=lambda e: e["round"])])


def run_plain(cfg: Any) -> list[float]:
    """Round durations of Flower's example set-up under the same run_simulation call and Ray set-up."""
    import ray
    from flwr.simulation import run_simulation
    from plain_xgboost_app import client_app, make_server_app

    from uaap.cluster import block_tensorflow, connect

    block_tensorflow()
    marks: list[float] = []
    try:
        connect()
        run_simulation(
            server_app=make_server_app(cfg, marks),
            client_app=client_app,
            num_supernodes=cfg.num_clients,
            backend_config={"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0}},
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if len(marks) != cfg.num_rounds + 1:
        raise RuntimeError(f"Flower's example set-up finished {len(marks) - 1} of {cfg.num_rounds} rounds")
    return _gaps(marks)


def timing(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Median round time, ours vs Flower's example set-up, per strategy (breast_cancer, 5 clients, Ray)."""
    from uaap.config import RunConfig

    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
    rows = []
    for strategy in ("fedxgb-bagging", "fedxgb-cyclic"):
        ours: list[float] = []
        plain: list[float] = []
        for repeat in range(args.repeats):
            cfg = RunConfig(
                model="xgboost",
                strategy=strategy,
                dataset="breast_cancer",
                num_clients=CLIENTS,
                min_clients=CLIENTS,
                num_rounds=args.timing_rounds,
                xgb_max_depth=args.max_depth,
                xgb_eta=args.eta,
                experiment="bench-boosting",
                run_id=f"time-{strategy}-{repeat}",
            )
            ours += run_ours(cfg)[1:]
            plain += run_plain(cfg)[1:]
        row = {
            "strategy": strategy,
            "rounds": args.timing_rounds,
            "repeats": args.repeats,
            "ours_median_s": statistics.median(ours),
            "plain_median_s": statistics.median(plain),
        }
        row["ratio"] = row["ours_median_s"] / row["plain_median_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    """Run both measurements, print them and write ``artifacts/boosting.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bagging-rounds", type=int, default=20)
    parser.add_argument("--cyclic-rounds", type=int, default=100)
    parser.add_argument("--timing-rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-depth", type=int, default=4)
    parser.add_argument("--eta", type=float, default=0.3)
    parser.add_argument("--partition", default="dirichlet", help="accuracy runs' split (iid, dirichlet)")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha of the accuracy runs (non-IID: 0.5)")
    parser.add_argument("--skip", choices=("accuracy", "timing"), default=None)
    parser.add_argument("--out", default=str(REPO / "artifacts"))
    args = parser.parse_args()
    os.environ.setdefault("UAAP_HOME", tempfile.mkdtemp(prefix="uaap-bench-boosting-"))
    result: dict[str, Any] = {"home": os.environ["UAAP_HOME"], "settings": vars(args)}
    if args.skip != "accuracy":
        result["accuracy"] = accuracy(args)
    if args.skip != "timing":
        result["timing"] = timing(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = (
        "boosting.json"
        if (args.partition, args.alpha) == ("dirichlet", 0.5)
        else f"boosting-{args.partition}-{args.alpha:g}.json"
    )
    (out / name).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out / name}")
    for row in result.get("accuracy", []):
        print(
            f"{row['dataset']:<14} {row['strategy']:<15} fed {row['federated']:.4f}  central pooled "
            f"{row['central_pooled_clients']:.4f}  full {row['central_full_train']:.4f}  "
            f"within 2 points: {row['within_2_points']}"
        )
    for row in result.get("timing", []):
        print(f"{row['strategy']:<15} ours {row['ours_median_s']:.3f}s  plain {row['plain_median_s']:.3f}s  "
              f"ratio {row['ratio']:.2f} (target <= 1.2)")  # fmt: skip


if __name__ == "__main__":
    main()
