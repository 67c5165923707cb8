"""Simulation benchmark: UAAP's Flower app on Ray at 10/100/1000 clients, against a plain Flower FedAvg app.

Prints one table (and writes a PNG + JSON under ``artifacts/``, which git ignores):

* wall time and peak RSS (driver + every Ray process it started, sampled by psutil) of ``uaap``'s
  ``simulations.runner.simulate`` for each client count, 10% of the clients sampled per round;
* the median round time of our app and of ``plain_flower_app`` (Flower's ``FedAvg.start``, same model,
  partitions, local training, client and central evaluation), run side by side with the same
  ``flwr.simulation.run_simulation`` and the same Ray setup (TensorFlow blocked, 1 CPU per client);
  round 1 (warm-up) is excluded; target ratio ours / plain <= 1.15;
* the TensorFlow tax: ``import flwr.simulation`` time and peak RSS per Ray actor with and without the
  TensorFlow block (only meaningful when TensorFlow is installed; said so otherwise).

Data: a generated table (sklearn ``make_classification``, written as CSV) with about 50 training rows per
client, split IID, so every client does the same work at every scale. Nothing is downloaded.

Usage: ``python benchmarks/simulation.py [--clients 10,100,1000] [--rounds 5] [--out artifacts]``
(about 5-8 minutes on 2 cores).

Length: over 500 lines because a benchmark is a script someone runs alone: its sampler, both runners, the
table and the plot stay in one file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uaap.config import RunConfig

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Ray workers inherit the driver's environment: this makes `plain_flower_app` importable by reference there,
# exactly as `client.app` is (an installed package), so neither app is shipped to the actors by value.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
ROWS_PER_CLIENT = 50  # training rows per client before the client's own 80/20 train/validation split
ACTOR_TITLE = "ray::ClientAppActor"
MB = 1024 * 1024


# ---- memory sampling ------------------------------------------------------------------------------------


class RssSampler:
    """Peak RSS of this process plus all its descendants (Ray's GCS, raylet, workers), sampled in a thread.

    RSS counts shared pages (torch's libraries) once per process, so the sum overstates physical memory;
    it is the figure an operator sees per process and it is the same measure for both apps.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak_total = 0
        self.peak_actor: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        actors: set[int] = set()
        while not self._stop.is_set():
            total = 0
            try:
                procs = [me, *me.children(recursive=True)]
            except psutil.Error:
                procs = [me]
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    if proc.pid not in actors:
                        title = proc.cmdline()  # read once: a process can exit or retitle between calls
                        if title and title[0].startswith(ACTOR_TITLE):
                            actors.add(proc.pid)
                except psutil.Error:
                    continue
                total += rss
                if proc.pid in actors:
                    self.peak_actor[proc.pid] = max(self.peak_actor.get(proc.pid, 0), rss)
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(self.interval)

    @property
    def actor_mb(self) -> float:
        """Largest peak RSS of one Flower actor (MB), 0 when none was seen."""
        return max(self.peak_actor.values(), default=0) / MB


# ---- the two apps -----------------------------------------------------------------------------------------


@dataclass
class Run:
    """One simulation's figures."""

    app: str
    clients: int
    wall_s: float
    peak_rss_mb: float
    actor_rss_mb: float
    actors: int
    round_s: list[float] = field(default_factory=list)

    @property
    def median_round_s(self) -> float:
        """Median round time, round 1 (warm-up) excluded."""
        steady = self.round_s[1:] or self.round_s
        return statistics.median(steady) if steady else float("nan")


def make_table(clients: int, folder: Path, seed: int = 0) -> Path:
    """A generated classification table with ~ROWS_PER_CLIENT training rows per client (CSV)."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification

    path = folder / f"table-{clients}.csv"
    if path.is_file():
        return path
    rows = math.ceil(clients * ROWS_PER_CLIENT / 0.8)  # the central test split takes 20%
    X, y = make_classification(
        n_samples=rows, n_features=20, n_informative=12, n_classes=5, class_sep=1.5, random_state=seed
    )
    frame = pd.DataFrame(X.astype(np.float32), columns=[f"x{i}" for i in range(X.shape[1])])
    frame["label"] = y
    frame.to_csv(path, index=False)
    return path


def bench_config(clients: int, rounds: int, table: Path) -> RunConfig:
    """The run both apps do: FedAvg, 10% of the clients per round for training and for evaluation."""
    from uaap.config import RunConfig

    return RunConfig(
        dataset="csv",
        data_path=str(table),
        target="label",
        partition="iid",
        model="mlp",
        strategy="fedavg",
        num_clients=clients,
        num_rounds=rounds,
        fraction_train=0.1,
        fraction_evaluate=0.1,
        min_clients=2,
        experiment="bench",
    )


def run_ours(cfg: RunConfig) -> Run:
    """``uaap``'s simulate(): our ServerApp loop (checkpoints, metrics.jsonl, MLflow) and ClientApp."""
    from simulations.runner import simulate

    with RssSampler() as rss:
        t0 = time.perf_counter()
        rd = simulate(cfg)
        wall = time.perf_counter() - t0
    marks = [e["time"] for e in sorted(rd.events("round"), key=lambda e: e["round"])]
    return _run("uaap", cfg, wall, rss, marks)


def _run(app: str, cfg: RunConfig, wall: float, rss: RssSampler, marks: list[float]) -> Run:
    """One benchmark row; round times are the gaps between consecutive round events."""
    gaps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    return Run(app, cfg.num_clients, wall, rss.peak_total / MB, rss.actor_mb, len(rss.peak_actor), gaps)


def run_plain(cfg: RunConfig, *, block_tf: bool = True) -> Run:
    """The plain Flower FedAvg app with the same run_simulation call and the same Ray setup."""
    import ray
    from flwr.simulation import run_simulation
    from plain_flower_app import client_app, make_server_app

    from uaap.cluster import QUIET_ENV, connect

    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
    marks: list[float] = []
    with RssSampler() as rss:
        t0 = time.perf_counter()
        try:
            if block_tf:
                connect()
            else:  # the same init, minus the worker hook that blocks TensorFlow
                os.environ.update(QUIET_ENV)
                ray.init(
                    include_dashboard=False,
                    num_cpus=os.cpu_count(),
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                    runtime_env={"env_vars": dict(QUIET_ENV)},
                )
            run_simulation(
                server_app=make_server_app(cfg, marks),
                client_app=client_app,
                num_supernodes=cfg.num_clients,
                backend_config={"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0}},
            )
        finally:
            if ray.is_initialized():
                ray.shutdown()
        wall = time.perf_counter() - t0
    if len(marks) != cfg.num_rounds + 1:
        raise RuntimeError(f"plain Flower app finished {len(marks) - 1} of {cfg.num_rounds} rounds")
    return _run("plain", cfg, wall, rss, marks)


# ---- TensorFlow tax ---------------------------------------------------------------------------------------


def tensorflow_installed() -> bool:
    """Whether TensorFlow is importable here (checked without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


def import_probe(block: bool) -> dict[str, float]:
    """``import flwr.simulation`` in a fresh interpreter: seconds, peak RSS (MB), whether TF got loaded."""
    code = (
        ("import sys; sys.modules['tensorflow'] = None\n" if block else "")
        + "import json, resource, sys, time\n"
        + "t = time.perf_counter(); import flwr.simulation; dt = time.perf_counter() - t\n"
        + "tf = sys.modules.get('tensorflow') is not None\n"
        + "print(json.dumps({'seconds': dt, 'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,"
        + " 'tf_loaded': tf}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def actor_probe(block: bool, folder: Path) -> dict[str, float]:
    """Peak RSS of one Flower actor in a 10-client, 2-round plain simulation, in a fresh driver process."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--actor-probe", "block" if block else "noblock"]
    cmd += ["--workdir", str(folder)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _actor_probe_main(mode: str, folder: Path) -> None:
    if mode == "block":
        from uaap.cluster import block_tensorflow

        block_tensorflow()
    cfg = bench_config(10, 2, make_table(10, folder))
    run = run_plain(cfg, block_tf=mode == "block")
    tf_in_driver = sys.modules.get("tensorflow") is not None
    print(json.dumps({"actor_rss_mb": run.actor_rss_mb, "wall_s": run.wall_s, "tf_in_driver": tf_in_driver}))


# ---- our loop's per-round extras ------------------------------------------------------------------------


def loop_extras(cfg: RunConfig, repeats: int = 15) -> dict[str, float]:
    """Median ms of what server/federation.py does per round beyond Flower's loop, measured standalone.

    The checkpoint (npz + fsync), the metrics.jsonl line and the MLflow ``log_batch`` of the round's metrics
    (sqlite commit), plus MLflow's asynchronous variant (``synchronous=False``) for comparison.
    """
    from mlflow.entities import Metric

    from uaap import workspace
    from uaap.data import federated
    from uaap.models import build_model, get_weights
    from uaap.tracking import Tracker

    cfg = cfg.replace(run_id=workspace.new_run_id("extras"))
    _, test = federated(cfg, cfg.num_clients)
    weights = get_weights(build_model(cfg.model, test.n_features, test.n_classes, test.image_shape))
    rd = workspace.run_dir(cfg.run_id)
    rd.write_config(cfg)
    tracker = Tracker(cfg.experiment, cfg.run_id, kind="federated")
    metrics = {f"metric_{i}": float(i) for i in range(16)}  # a round logs ~16 metrics (train/fed/central/clients)

    def ms(fn: Any) -> float:
        times = []
        for step in range(repeats):
            t0 = time.perf_counter()
            fn(step)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    pending: list[Any] = []

    def log_async(step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in metrics.items()]
        pending.append(tracker._client.log_batch(tracker.mlflow_run_id, metrics=batch, synchronous=False))

    arrays = {f"{i:04d}": w for i, w in enumerate(weights)}
    result = {
        "checkpoint_ms": ms(lambda r: rd.save_checkpoint(workspace.Checkpoint(r + 1, arrays, {}))),
        "metrics_jsonl_ms": ms(lambda r: rd.log_event("round", round=r + 1, central=metrics)),
        "mlflow_sync_ms": ms(lambda r: tracker.log_metrics(metrics, step=r + 1)),
        "mlflow_async_ms": ms(log_async),
    }
    for op in pending:
        op.wait()
    tracker.finish()
    return result


# ---- report -----------------------------------------------------------------------------------------------


def pooled_median(runs: list[Run]) -> float:
    """Median round time over several runs of one app, each run's round 1 excluded."""
    return statistics.median(s for r in runs for s in (r.round_s[1:] or r.round_s))


def print_table(runs: list[Run], tax: dict[str, Any], extras: dict[str, float]) -> list[dict[str, Any]]:
    """Print the scale table, the ratio per client count and the TensorFlow tax; return the ratio rows."""
    print("\nScale (10% of clients sampled per round; round 1 excluded from medians)")
    print(
        f"{'app':<6} {'clients':>7} {'wall s':>8} {'peak RSS MB':>12} {'actor MB':>9} {'actors':>6} "
        f"{'median round s':>15}  rounds s"
    )
    for r in runs:
        rounds = " ".join(f"{s:.2f}" for s in r.round_s)
        print(
            f"{r.app:<6} {r.clients:>7} {r.wall_s:>8.1f} {r.peak_rss_mb:>12.0f} {r.actor_rss_mb:>9.0f} "
            f"{r.actors:>6} {r.median_round_s:>15.3f}  {rounds}"
        )
    ratios = []
    print("\nRound time, ours / plain Flower FedAvg (target <= 1.15; medians pooled over repeats)")
    for n in sorted({r.clients for r in runs}):
        ours_runs = [r for r in runs if r.app == "uaap" and r.clients == n]
        plain_runs = [r for r in runs if r.app == "plain" and r.clients == n]
        if ours_runs and plain_runs:
            ours, plain = pooled_median(ours_runs), pooled_median(plain_runs)
            ratio = ours / plain
            verdict = "ok" if ratio <= 1.15 else "MISSES target"
            ratios.append({"clients": n, "ours_s": ours, "plain_s": plain, "ratio": ratio, "runs": len(ours_runs)})
            print(
                f"  {n:>5} clients: ours {ours:.3f} s, plain {plain:.3f} s, ratio {ratio:.2f} ({verdict}; "
                f"{len(ours_runs)} run(s) each)"
            )
    if extras:
        print("\nOur loop's per-round extras, measured standalone (median ms)")
        print("  " + ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in extras.items()))
    print("\nTensorFlow tax")
    if not tax.get("installed"):
        print("  TensorFlow is not installed in this environment: the tax cannot be measured here")
        print("  (flwr imports it only when it is importable; the block costs nothing without it).")
    for key in ("import_blocked", "import_unblocked"):
        if key in tax:
            v = tax[key]
            print(
                f"  import flwr.simulation, {key.split('_')[1]:<9}: {v['seconds']:.2f} s (median of 3), "
                f"peak RSS {v['rss_mb']:.0f} MB, tensorflow loaded: {v['tf_loaded']}"
            )
    for key in ("actor_blocked", "actor_unblocked"):
        if key in tax:
            print(f"  Flower actor peak RSS, {key.split('_')[1]:<9}: {tax[key]['actor_rss_mb']:.0f} MB")
    return ratios


def plot(runs: list[Run], tax: dict[str, Any], path: Path) -> None:
    """Wall time, peak RSS and median round time per client count (ours vs plain), plus the TF tax."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for app, style in (("uaap", "o-"), ("plain", "s--")):
        xs = sorted({r.clients for r in runs if r.app == app})
        if not xs:
            continue
        groups = [[r for r in runs if r.app == app and r.clients == n] for n in xs]
        label = "uaap (ours)" if app == "uaap" else "plain Flower FedAvg"
        axes[0].plot(xs, [statistics.median(r.wall_s for r in g) for g in groups], style, label=label)
        axes[1].plot(xs, [max(r.peak_rss_mb for r in g) for g in groups], style, label=label)
        axes[2].plot(xs, [pooled_median(g) for g in groups], style, label=label)
    for ax, title, unit in zip(
        axes[:3],
        ("wall time (incl. Ray start)", "peak RSS, driver + Ray", "median round (round 1 excluded)"),
        ("s", "MB", "s"),
        strict=True,
    ):
        ax.set_xscale("log")
        ax.set_xlabel("simulated clients (10% per round)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    ax = axes[3]
    if "import_blocked" in tax and "import_unblocked" in tax:
        labels = ["import flwr.simulation (s)"]
        blocked = [tax["import_blocked"]["seconds"]]
        unblocked = [tax["import_unblocked"]["seconds"]]
        ax.bar([0], blocked, width=0.35, label="TF blocked")
        ax.bar([0.4], unblocked, width=0.35, label="TF not blocked")
        if "actor_blocked" in tax and "actor_unblocked" in tax:
            ax2 = ax.twinx()
            ax2.bar([1.2], [tax["actor_blocked"]["actor_rss_mb"]], width=0.35, color="C0")
            ax2.bar([1.6], [tax["actor_unblocked"]["actor_rss_mb"]], width=0.35, color="C1")
            ax2.set_ylabel("actor RSS (MB)")
            labels.append("actor RSS (MB, right)")
        ax.set_xticks([0.2, 1.4][: len(labels)], labels)
        ax.set_ylabel("s")
        ax.legend(loc="upper left")
        ax.set_title("TensorFlow tax" + ("" if tax.get("installed") else " (TF not installed)"))
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "TensorFlow tax not measured", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,100,1000", help="comma-separated client counts")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per simulation (round 1 is warm-up)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each app per client count (pooled)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain Flower app")
    parser.add_argument("--no-tf", action="store_true", help="skip the TensorFlow tax probes")
    parser.add_argument("--out", default=str(REPO / "artifacts"), help="folder for the PNG and JSON")
    parser.add_argument("--actor-probe", choices=("block", "noblock"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.actor_probe:
        _actor_probe_main(args.actor_probe, Path(args.workdir))
        return 0

    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="uaap-bench-") as tmp:
        folder = Path(tmp)
        os.environ["UAAP_HOME"] = str(folder / "uaap-home")  # our runs' workspace (MLflow sqlite, checkpoints)
        os.environ.pop("MLFLOW_TRACKING_URI", None)

        tax: dict[str, Any] = {"installed": tensorflow_installed()}
        if not args.no_tf:
            for block in (True, False):
                probes = [import_probe(block) for _ in range(3)]
                key = "import_blocked" if block else "import_unblocked"
                tax[key] = {
                    "seconds": statistics.median(p["seconds"] for p in probes),
                    "rss_mb": statistics.median(p["rss_mb"] for p in probes),
                    "tf_loaded": any(p["tf_loaded"] for p in probes),
                }
                print(f"... import flwr.simulation, TF {'blocked' if block else 'not blocked'}: {tax[key]}", flush=True)
            if tax["installed"]:
                tax["actor_blocked"] = actor_probe(True, folder)
                tax["actor_unblocked"] = actor_probe(False, folder)
                print(f"... actor RSS, TF blocked / not: {tax['actor_blocked']} / {tax['actor_unblocked']}", flush=True)

        from uaap.cluster import block_tensorflow

        block_tensorflow()  # the driver of both apps: the same setup as `uaap simulate`
        runs: list[Run] = []
        step = 0
        for n in counts:
            cfg = bench_config(n, args.rounds, make_table(n, folder))
            order: list[str] = []
            for _ in range(args.repeats):  # ABBA...: alternate which app goes first to spread load drift
                order += ["uaap", "plain"] if step % 2 == 0 else ["plain", "uaap"]
                step += 1
            for app in order:
                if app == "plain" and args.no_baseline:
                    continue
                print(f"... {app} app, {n} clients, {args.rounds} rounds", flush=True)
                run = run_ours(cfg) if app == "uaap" else run_plain(cfg)
                runs.append(run)
                print(
                    f"    wall {run.wall_s:.1f} s, peak RSS {run.peak_rss_mb:.0f} MB, actor {run.actor_rss_mb:.0f} MB, "
                    f"rounds {' '.join(f'{s:.2f}' for s in run.round_s)}",
                    flush=True,
                )
        extras = loop_extras(bench_config(counts[0], args.rounds, make_table(counts[0], folder)))
        ratios = print_table(runs, tax, extras)
    png, js = out / "simulation_benchmark.png", out / "simulation_benchmark.json"
    plot(runs, tax, png)
    payload = {
        "runs": [asdict(r) | {"median_round_s": r.median_round_s} for r in runs],
        "ratios": ratios,
        "tensorflow": tax,
        "loop_extras_ms": extras,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "rows_per_client": ROWS_PER_CLIENT,
        "cpus": os.cpu_count(),
        "total_s": time.perf_counter() - started,
    }
    js.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {png} and {js} ({payload['total_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
