"""Robust aggregation against model poisoning: test accuracy after 10 rounds on digits, real simulations.

Each cell is one ``uaap simulate`` run (simulations.runner.simulate: Flower on Ray, UAAP's ServerApp and
ClientApp) of 10 IID clients, all sampled every round, MLP, 5 local epochs; a share of the clients sign-flips
its update (``--malicious-fraction F --attack sign-flip``: it sends ``w - 4 (w_k - w)``). Krum is told the true
number of attackers (``byzantine-clients``); the trimmed mean cuts ``trim-fraction`` 0.2 from each end (and 0.3
in an extra row, at 30%). The accuracy is the server's, on the held-out test split, after the last round.

    python benchmarks/robustness.py [--rounds 10] [--fractions 0 0.1 0.3] [--strategies fedavg fedmedian ...]

About 40 s per run on 2 busy cores (Ray start-up is most of it); results go to ``artifacts/robustness.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
CLIENTS = 10


def accuracy(fraction: float, strategy: str, rounds: int, seed: int, **extra: object) -> tuple[float, float]:
    """Central test accuracy after the last round, and the run's wall seconds."""
    from simulations.runner import simulate
    from uaap.config import RunConfig

    cfg = RunConfig(
        dataset="digits",
        partition="iid",
        num_clients=CLIENTS,
        num_rounds=rounds,
        local_epochs=5,
        strategy=strategy,
        malicious_fraction=fraction,
        attack="sign-flip",
        byzantine_clients=round(fraction * CLIENTS) if strategy in ("krum", "multikrum", "bulyan") else 0,
        min_contributors=1,
        seed=seed,
        experiment="bench-robustness",
        **extra,  # type: ignore[arg-type]  # RunConfig fields
    )
    t0 = time.perf_counter()
    rd = simulate(cfg)
    last = max(rd.events("round"), key=lambda e: e["round"])
    return float(last["central"]["accuracy"]), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--strategies", nargs="+", default=["fedavg", "fedmedian", "fedtrimmedavg", "krum"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(REPO / "artifacts"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("UAAP_HOME", tempfile.mkdtemp(prefix="uaap-bench-robust-"))
    rows: list[tuple[str, dict[float, float]]] = []
    variants = [(s, s, {}) for s in args.strategies]
    if "fedtrimmedavg" in args.strategies and 0.3 in args.fractions:
        variants.append(("fedtrimmedavg (trim 0.3)", "fedtrimmedavg", {"trim_fraction": 0.3}))
    for label, strategy, extra in variants:
        cells: dict[float, float] = {}
        for fraction in args.fractions if not extra else [0.3]:
            acc, wall = accuracy(fraction, strategy, args.rounds, args.seed, **extra)
            cells[fraction] = acc
            print(f"{label:<26} {fraction:>4.0%} sign-flipping: accuracy {acc:.3f} ({wall:.0f} s)", flush=True)
        rows.append((label, cells))
    head = " | ".join(f"{f:.0%} attackers" for f in args.fractions)
    print(f"\n| strategy | {head} |\n|---|" + "---|" * len(args.fractions))
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(f"{cells[f]:.3f}" if f in cells else "" for f in args.fractions) + " |")
    print(f"\ndigits, {CLIENTS} IID clients, MLP, {args.rounds} rounds, 5 local epochs, sign-flip k=4, "
          f"seed {args.seed}")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps({label: cells for label, cells in rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
