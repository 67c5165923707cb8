"""`uaap train` of an MLP on a 6000-row table: torch's default thread count against the sized one (uaap.threads).

Each configuration runs the real command (``uaap train --data table.csv --target y --model mlp``) as a
subprocess, with the machine as it is and again while ``--busy`` extra processes spin one core each (a
stress-like loop, niced like the run). "torch default" forces ``UAAP_TORCH_THREADS`` to torch's own count (the
machine's cores: what every fit used before), "sized" leaves the choice to :func:`uaap.threads.reserved_threads`.
Wall seconds, median of ``--repeats``; the machine is shared, so read the ratios.

    python benchmarks/threads.py [--rows 6000] [--epochs 30] [--repeats 1] [--busy 1]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_table(path: Path, rows: int, seed: int = 0) -> None:
    """A classification table of ``rows`` rows: 20 numeric features, 4 classes."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(rows, 20, n_informative=10, n_classes=4, random_state=seed)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    frame["y"] = np.array(["a", "b", "c", "d"])[y]
    frame.to_csv(path, index=False)


def spin() -> None:
    """Keep one core busy until killed."""
    x = 0
    while True:
        x += 1


def run_train(table: Path, home: Path, epochs: int, threads: str | None) -> float:
    """Wall seconds of one `uaap train` subprocess."""
    env = {**os.environ, "UAAP_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db"}
    env.pop("UAAP_TORCH_THREADS", None)
    if threads is not None:
        env["UAAP_TORCH_THREADS"] = threads
    cmd = [str(ROOT / ".venv/bin/uaap"), "train", "--data", str(table), "--target", "y", "--model", "mlp",
           "--epochs", str(epochs), "--experiment", "bench-threads"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def last_threads(home: Path) -> str:
    """The torch threads the newest `uaap train` run chose (its ``threads`` event)."""
    import json

    runs = sorted((home / "runs").glob("central-*/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
    events = [json.loads(line) for line in runs[-1].read_text().splitlines()] if runs else []
    return ", ".join(str(e["torch"]) for e in events if e.get("kind") == "threads") or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--busy", type=int, default=1, help="extra processes spinning a core each")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds the spinners run before a measurement")
    args = parser.parse_args(argv)
    import torch

    default = str(torch.get_num_threads())
    with tempfile.TemporaryDirectory(prefix="uaap-threads-") as tmp:
        table = Path(tmp) / "table.csv"
        make_table(table, args.rows)
        results: dict[tuple[str, str], float] = {}
        for load in ("as is", f"+{args.busy} spinning"):
            spinners = [mp.Process(target=spin, daemon=True) for _ in range(args.busy if load != "as is" else 0)]
            for p in spinners:
                p.start()
                os.setpriority(os.PRIO_PROCESS, p.pid, os.getpriority(os.PRIO_PROCESS, 0))
            try:
                time.sleep(args.settle if spinners else 0)  # let the spinners show in the idle measurement
                for name, threads in ((f"torch default ({default})", default), ("sized", None)):
                    times = [run_train(table, Path(tmp) / "home", args.epochs, threads) for _ in range(args.repeats)]
                    if threads is None:
                        name = f"sized ({last_threads(Path(tmp) / 'home')})"
                    results[(load, name)] = statistics.median(times)
                    print(f"{load:>12} | {name:<20} | {results[(load, name)]:7.1f} s "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
            finally:
                for p in spinners:
                    p.kill()
                    p.join()
    print(f"\n{args.rows} rows, MLP, {args.epochs} epochs, batch 16; machine: {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
