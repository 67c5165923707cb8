"""Differential privacy cost, measured side by side in one run.

Prints:
1. DP-SGD vs non-private local training speed for the MLP and the CNN on digits (one torch thread, the same
   ``uaap.training.local_train`` loop): median epoch time over ``--repeats`` interleaved epochs and the slowdown
   ratio; for the MLP also Opacus' hooks (``DPSGD(fast=False)``) beside the fast path it now takes, with each
   path's epsilon after the epoch (equal: the same sampling, noise and accountant);
2. federated accuracy on digits (real Flower simulations on Ray, ``--clients`` iid clients, every client
   every round) at example-level epsilon 1, 3 and 8 (DP-SGD, noise calibrated for the whole run) against
   the same run without DP; the epsilon column is the largest client's, read back from the privacy ledger.

Timings are medians; on a shared machine trust the ratio more than the seconds.

    python benchmarks/privacy.py [--clients 5] [--rounds 10] [--repeats 5] [--epsilons 1 3 8] [--no-sim]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

warnings.filterwarnings("ignore", message="Full backward hook")
warnings.filterwarnings("ignore", message="Secure RNG turned off")


def speed(repeats: int, batch_size: int, families: tuple[str, ...] = ("mlp", "cnn")) -> list[dict[str, float | str]]:
    """Per family: median epoch time of non-private, fast DP-SGD (linear stacks, uaap.privacy.fastdp) and Opacus'
    hooks on the digits training split, interleaved; the slowdowns and each DP run's epsilon after the epoch."""
    import torch

    from uaap.config import RunConfig
    from uaap.data import load_split
    from uaap.models import build_model
    from uaap.privacy import fastdp
    from uaap.privacy.dpsgd import DPSGD
    from uaap.training import TrainConfig, local_train

    torch.set_num_threads(1)
    data = load_split(RunConfig(dataset="digits")).train
    tcfg = TrainConfig(epochs=1, batch_size=batch_size, lr=0.05, momentum=0.9)
    rows: list[dict[str, float | str]] = []
    for family in families:
        fast = fastdp.supports(build_model(family, data.n_features, data.n_classes, data.image_shape))
        modes = ("non-private", "dp-sgd", "opacus-hooks") if fast else ("non-private", "dp-sgd")
        times: dict[str, list[float]] = {m: [] for m in modes}
        epsilon: dict[str, float] = {}
        for i in range(repeats + 1):  # first pass is warm-up
            for mode in modes:
                model = build_model(family, data.n_features, data.n_classes, data.image_shape, seed=i)
                engine = None if mode == "non-private" else DPSGD(1.0, 1.0, fast=mode == "dp-sgd")
                t0 = time.perf_counter()
                local_train(model, data, tcfg, privacy=engine)
                if i:
                    times[mode].append(time.perf_counter() - t0)
                if engine is not None:
                    epsilon[mode] = engine.epsilon(1e-5)
        base = statistics.median(times["non-private"])
        row: dict[str, float | str] = {"family": family, "dp path": "fast (ghost norms)" if fast else "Opacus hooks",
                                       "non-private s/epoch": base}  # fmt: skip
        for mode in modes[1:]:
            row[f"{mode} s/epoch"] = statistics.median(times[mode])
            row[f"{mode} slowdown"] = statistics.median(times[mode]) / base
            row[f"{mode} epsilon"] = epsilon[mode]
        rows.append(row)
    return rows


def federated(clients: int, rounds: int, epsilons: list[float]) -> list[dict[str, float | str]]:
    """Final central-test accuracy of a non-private run and one DP-SGD run per target epsilon."""
    from simulations.runner import simulate
    from uaap.config import RunConfig
    from uaap.privacy.ledger import Ledger

    base = RunConfig(
        dataset="digits",
        model="mlp",
        strategy="fedavg",
        partition="iid",
        num_clients=clients,
        min_clients=clients,
        num_rounds=rounds,
        local_epochs=1,
        batch_size=16,
        learning_rate=0.1,
        fraction_train=1.0,
        fraction_evaluate=0.0,
        experiment="bench-privacy",
    )
    rows: list[dict[str, float | str]] = []
    for target in [None, *epsilons]:
        cfg = base if target is None else base.replace(dp_local=True, dp_target_epsilon=target, dp_clip_norm=1.0)
        t0 = time.perf_counter()
        rd = simulate(cfg)
        seconds = time.perf_counter() - t0
        acc = [e["central"]["accuracy"] for e in rd.events("round") if e.get("central")][-1]
        eps = max((r.epsilon for r in Ledger().releases(rd.run_id, level="example")), default=float("inf"))
        rows.append(
            {
                "setting": "non-private" if target is None else f"DP-SGD target eps {target:g}",
                "example-level epsilon": eps,
                "accuracy": acc,
                "seconds": seconds,
            }
        )
        print(f"  {rows[-1]['setting']:26s} eps {eps:8.3f}  accuracy {acc:.4f}  ({seconds:.0f} s)", flush=True)
    return rows


def main() -> None:
    """Run both measurements and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--no-sim", action="store_true", help="only the speed measurement")
    args = parser.parse_args()
    os.environ.setdefault("UAAP_HOME", tempfile.mkdtemp(prefix="uaap-bench-privacy-"))

    print(f"1. local training speed on digits, batch {args.batch_size}, one thread, median of {args.repeats} epochs")
    for row in speed(args.repeats, args.batch_size):
        print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if args.no_sim:
        return
    print(f"2. federated digits, {args.clients} iid clients, {args.rounds} rounds, 1 local epoch, FedAvg")
    rows = federated(args.clients, args.rounds, args.epsilons)
    base = rows[0]["accuracy"]
    print(f"\n  {'setting':26s} {'epsilon':>8s} {'accuracy':>9s} {'vs non-private':>15s}")
    for r in rows:
        print(
            f"  {r['setting']:26s} {r['example-level epsilon']:8.3f} {r['accuracy']:9.4f} "
            f"{float(r['accuracy']) - float(base):+15.4f}"
        )


if __name__ == "__main__":
    main()
