"""Deployment vs simulation, same app and data, measured side by side in one run.

Prints:
* per-round wall time (median over rounds) of the UAAP app run by `flower-server` + N `flower-client`
  processes on localhost (TLS, SuperNode auth), with Flower's SuperNode as shipped (`flower-client --cold`),
  with the short polls, quick object pulls and forked ClientApps of client/warm.py but Flower's SQLite SuperLink
  state (`flower-server --state-db`), and as shipped (warm clients, the SuperLink's state in memory:
  server/superlink.py), beside the Ray simulation (`simulations.runner.simulate`) of the same federation, for
  each N of `--clients` (2 and 5);
* the per-message overhead of a deployed client: a fresh process importing the ClientApp (what every
  `flwr-clientapp` does per message in Flower 1.42) against the in-process cost of one train message.

Usage: python benchmarks/deployment.py [--rounds 3] [--clients 2 5]   (takes a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _round_seconds(metrics: Path) -> list[float]:
    events = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [e["seconds"] for e in events if e["kind"] == "round" and e.get("round", 0) > 0]


def config_flags(rounds: int, clients: int) -> list[str]:
    return [
        "--dataset", "breast_cancer", "--model", "logreg", "--partition", "iid", "--num-rounds", str(rounds),
        "--num-clients", str(clients), "--min-clients", str(clients), "--local-epochs", "1",
    ]  # fmt: skip


def run_deployment(
    root: Path, rounds: int, clients: int, *, cold: bool = False, state_db: bool = False
) -> tuple[list[float], float]:
    """Per-round seconds and total wall time of a localhost deployment (``cold``: Flower's SuperNode as shipped,
    ``flower-client --cold``; else the default: the short polls and forked ClientApps of client/warm.py;
    ``state_db``: the SuperLink's state in Flower's SQLite database, ``flower-server --state-db``)."""
    from uaap.certs import init_certs
    from uaap.processes import free_port

    root = root / ("cold" if cold else "warm-db" if state_db else "warm")
    certs = init_certs(root / "certs", clients=clients)
    env = {**os.environ, "UAAP_HOME": str(root / "ws-deploy"), "FLWR_TELEMETRY_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    port = free_port()
    procs = []
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [str(BIN / "flower-server"), "--port", str(port), "--certs", str(certs.out), "--auth-keys", str(certs.out),
         "--run-id", "bench-deploy", "--quiet", *(["--state-db"] if state_db else []), *config_flags(rounds, clients)],
        env=env, start_new_session=True,
    )  # fmt: skip
    try:
        for i in range(clients):
            log = open(root / f"client-{i}.log", "wb")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "flower-client"),
                        "--server",
                        f"127.0.0.1:{port}",
                        "--root-certificates",
                        str(certs.ca_cert),
                        "--auth-key",
                        str(certs.client_keys[i]),
                        "--partition-id",
                        str(i),
                        "--num-partitions",
                        str(clients),
                        "--max-wait-time",
                        "120",
                        "--quiet",
                        *(["--cold"] if cold else []),
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            )
        rc = server.wait(timeout=3600)
        wall = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"flower-server failed with code {rc}")
    finally:
        from uaap.processes import stop_tree

        for p in [server, *procs]:
            stop_tree(p.pid, grace=5)
    return _round_seconds(root / "ws-deploy" / "runs" / "bench-deploy" / "metrics.jsonl"), wall


def run_simulation(root: Path, rounds: int, clients: int) -> tuple[list[float], float]:
    """Per-round seconds and total wall time of the same federation in the Ray simulation (own process)."""
    code = (
        "from uaap.commands.common import add_config_flags, config_from_args; import argparse, sys;"
        "p = argparse.ArgumentParser(); add_config_flags(p); a = p.parse_args(sys.argv[1:]);"
        "from simulations.runner import simulate; simulate(config_from_args(a).replace(run_id='bench-sim'))"
    )
    env = {**os.environ, "UAAP_HOME": str(root / "ws-sim")}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *config_flags(rounds, clients)], env=env, check=True, cwd=root)
    wall = time.perf_counter() - t0
    return _round_seconds(root / "ws-sim" / "runs" / "bench-sim" / "metrics.jsonl"), wall


def message_overhead(repeats: int = 3) -> tuple[float, float]:
    """(median seconds a fresh process needs to import the ClientApp, median in-process train message)."""
    cold = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import client.app"], check=True, cwd=REPO)
        cold.append(time.perf_counter() - t0)
    code = r"""
import time, statistics
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
from client.app import train
from uaap.protocol import RUN_CONFIG
from server.federation import initial_arrays
from uaap.config import RunConfig
cfg = RunConfig(dataset="breast_cancer", model="logreg", partition="iid", num_clients=3, local_epochs=1)
content = RecordDict({"arrays": initial_arrays(cfg),
                      "config": ConfigRecord({RUN_CONFIG: cfg.to_json(), "server-round": 1, "proximal-mu": 0.01})})
times = []
for i in range(4):
    msg = Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 3}, state=RecordDict(),
                  run_config={})
    t0 = time.perf_counter(); train(msg, ctx); times.append(time.perf_counter() - t0)
print(statistics.median(times[1:]))
"""
    warm = float(subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True,
                                text=True).stdout.strip().splitlines()[-1])  # fmt: skip
    return statistics.median(cold), warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 5])
    args = parser.parse_args()
    print(f"UAAP deployment vs simulation: breast_cancer, logreg, {args.rounds} rounds")
    print(
        f"{'clients':>8}{'simulation':>12}{'cold':>10}{'warm+db':>10}{'warm':>10}{'warm - sim':>12}{'cold/warm':>11}"
        "  (median s/round)"
    )
    for clients in args.clients:
        with tempfile.TemporaryDirectory(prefix="uaap-bench-deploy-") as tmp:
            root = Path(tmp)
            sim_rounds, _ = run_simulation(root, args.rounds, clients)
            cold_rounds, _ = run_deployment(root, args.rounds, clients, cold=True)
            db_rounds, _ = run_deployment(root, args.rounds, clients, state_db=True)
            warm_rounds, _ = run_deployment(root, args.rounds, clients)
        sim, cold, db, warm = (statistics.median(r) for r in (sim_rounds, cold_rounds, db_rounds, warm_rounds))
        print(
            f"{clients:8d}{sim:12.2f}{cold:10.2f}{db:10.2f}{warm:10.2f}{warm - sim:12.2f}{cold / warm:11.1f}",
            flush=True,
        )
        rounds = {"simulation": sim_rounds, "cold": cold_rounds, "warm+db": db_rounds, "warm": warm_rounds}
        print(f"{'':8}rounds: " + ", ".join(f"{k} {[round(x, 2) for x in v]}" for k, v in rounds.items()), flush=True)
    cold_import, warm_message = message_overhead()
    print(f"(machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end)")
    print("\nper-message cost of a cold deployed client (Flower 1.42 starts one flwr-clientapp process per message):")
    print(f"  fresh process importing client.app (torch, flwr, sklearn): {cold_import:.2f} s")
    print(f"  one train message handled in a warm process:               {warm_message:.3f} s")


if __name__ == "__main__":
    main()
