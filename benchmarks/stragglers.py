"""The FedProx paper's stragglers experiment on Synthetic(1,1): FedAvg drops them, FedProx aggregates their work.

Li et al. (MLSys 2020), section 5: 30 devices, 10 sampled per round, E = 20 local epochs, batch 10, SGD at lr 0.01
(no momentum), multinomial logistic regression; 90% of the sampled devices are stragglers that stop a random
number of steps short of E epochs. FedAvg drops them (``--straggler-policy drop``); FedProx aggregates their
partial work (``partial``), with mu = 0 and mu = 1. Each configuration is one real simulation
(simulations.runner.simulate: Flower on Ray); the accuracy is the server's on the pooled test splits.

Differences from the paper: Flower samples devices uniformly and weights updates by their examples (the paper
samples proportionally to size and averages), and a round in which every sampled device straggles keeps the
model (the paper's FedAvg does the same: nothing to average).

    python benchmarks/stragglers.py [--rounds 200] [--seed 0] [--summarize artifacts/stragglers.json]

Writes ``artifacts/stragglers.json`` (per-round accuracy and loss) and prints the summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
VARIANTS = {  # label -> settings
    "FedAvg (drop stragglers)": {"strategy": "fedavg", "straggler_policy": "drop"},
    "FedProx mu=0 (partial work)": {"strategy": "fedprox", "proximal_mu": 0.0, "straggler_policy": "partial"},
    "FedProx mu=1 (partial work)": {"strategy": "fedprox", "proximal_mu": 1.0, "straggler_policy": "partial"},
}


def run(label: str, rounds: int, seed: int) -> dict[str, object]:
    """One configuration: per-round central accuracy and loss, stragglers dropped, wall seconds."""
    from simulations.runner import simulate
    from uaap.config import RunConfig

    cfg = RunConfig(
        dataset="synthetic",
        synthetic_alpha=1.0,
        synthetic_beta=1.0,
        model="logreg",
        num_clients=30,
        fraction_train=1 / 3,
        min_clients=10,  # Flower samples max(int(30 * 1/3), min-clients): exactly 10 per round
        local_epochs=20,
        batch_size=10,
        learning_rate=0.01,
        optimizer="sgd",
        momentum=0.0,
        straggler_fraction=0.9,
        min_contributors=1,  # the paper's FedAvg averages whatever finished, one device included
        num_rounds=rounds,
        seed=seed,
        experiment="bench-stragglers",
        **VARIANTS[label],  # type: ignore[arg-type]  # RunConfig fields
    )
    t0 = time.perf_counter()
    rd = simulate(cfg)
    events = sorted((e for e in rd.events("round") if e["round"] > 0), key=lambda e: e["round"])
    return {
        "accuracy": [float(e["central"]["accuracy"]) for e in events],
        "loss": [float(e["central"]["loss"]) for e in events],
        "dropped": sum(int(e.get("train", {}).get("stragglers-dropped", 0)) for e in events),
        "failed_rounds": sum(bool(e.get("failed")) for e in events),
        "seconds": time.perf_counter() - t0,
    }


def summary(result: dict[str, object]) -> dict[str, float]:
    """Accuracy along the way and at the end, and how unstable it is (round-to-round jumps, test-loss spikes)."""
    acc: list[float] = result["accuracy"]  # type: ignore[assignment]
    loss: list[float] = result["loss"]  # type: ignore[assignment]
    steps = [abs(b - a) for a, b in zip(acc, acc[1:], strict=False)]
    half = len(acc) // 4
    return {
        f"acc @{len(acc) // 4}": acc[len(acc) // 4 - 1],
        f"acc @{len(acc) // 2}": acc[len(acc) // 2 - 1],
        "mean acc, all rounds": statistics.fmean(acc),
        "mean acc, last 20": statistics.fmean(acc[-20:]),
        "min acc, last 20": min(acc[-20:]),
        "mean |round-to-round change|": statistics.fmean(steps),
        f"max test loss after round {half}": max(loss[half:]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=str(REPO / "artifacts"))
    parser.add_argument("--summarize", metavar="JSON", help="print the table of a saved stragglers.json, run nothing")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("UAAP_HOME", tempfile.mkdtemp(prefix="uaap-bench-stragglers-"))
    results = json.loads(Path(args.summarize).read_text()) if args.summarize else {}
    for label in [] if args.summarize else args.variants:
        results[label] = run(label, args.rounds, args.seed)
        print(f"{label}: final accuracy {results[label]['accuracy'][-1]:.3f}, {results[label]['dropped']} replies "
              f"dropped, {results[label]['failed_rounds']} rounds with none kept ({results[label]['seconds']:.0f} s)",
              flush=True)  # fmt: skip
    keys = list(summary(next(iter(results.values()))))
    print("\n| configuration | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for label, result in results.items():
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in summary(result).values()) + " |")
    rounds = len(next(iter(results.values()))["accuracy"])
    print(f"\nSynthetic(1,1), 30 devices, 10 per round, E=20, batch 10, lr 0.01, 90% stragglers, {rounds} rounds")
    if not args.summarize:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "stragglers.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
