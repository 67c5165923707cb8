"""The inference API over loopback HTTP against onnxruntime called in-process, in the same run (issue 16).

Setup, in a fresh workspace: `uaap train` a logistic regression on breast_cancer, `uaap export` it to ONNX,
`uaap register` it as ``bench@champion``, `uaap api-keys create`. Then two real `uaap serve` processes (uvicorn, one
worker): one with the prediction cache, one with ``--cache-size 0``. Measured against each:

* **single row**: ``--requests`` sequential POSTs of one raw row over one keep-alive connection (httpx), after a
  warm-up; p50 and p99 of the client-side wall time. With the cache every row repeats (hits); without it the
  rows cycle through the 114 held-out rows (each one a model call).
* **batch**: ``--batches`` POSTs of ``--batch`` rows; rows per second and the per-row time.
* **load**: ``--clients`` threads posting single rows for ``--seconds`` (a fixed duration, loopback only, an
  equivalent of a headless locust run): requests/s held, p99, errors.
* the API process's resident memory after the runs (VmRSS) and at its peak (VmHWM).

It exits 1 when any request of the load test failed.

**direct**: the same raw rows standardised and run through an onnxruntime session (one thread, as the API's)
in this process: the floor the API's overhead (HTTP, validation, JSON, auth, metrics, logs) sits on. Ratios are
API / direct. Prints a table and writes ``artifacts/serving.json``.

    nice python benchmarks/serving.py [--requests 2000] [--batch 1000] [--batches 30] [--clients 4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path and its name shadows the `serving` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def setup(home: Path) -> tuple[str, list[dict[str, float]], Any]:
    """Train, export, register and make a key in ``home``; the token, the raw held-out rows and the run config."""
    os.environ["UAAP_HOME"] = str(home)
    from serving import keys
    from uaap import workspace
    from uaap.cli import main
    from uaap.data import load_bundled, train_test

    assert main(["train", "--dataset", "breast_cancer", "--model", "logreg", "--epochs", "5"]) == 0
    (run,) = workspace.list_runs()
    assert main(["export", run, "--to", "onnx"]) == 0
    assert main(["register", run, "--name", "bench", "--alias", "champion"]) == 0
    token, _ = keys.create("bench", ("predict", "admin"), rate_per_minute=100_000_000)
    cfg = workspace.existing_run(run).read_config()
    raw = train_test(load_bundled(cfg.dataset), cfg.test_fraction, cfg.seed).test
    rows = [{n: float(v) for n, v in zip(raw.feature_names, r, strict=True)} for r in raw.X]
    return token, rows, workspace.existing_run(run)


class Server:
    """One `uaap serve` process on a free loopback port."""

    def __init__(self, home: Path, cache_size: int, max_batch: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "uaap.cli", "serve", "--port", str(self.port), "--cache-size", str(cache_size)]
        cmd += ["--max-batch", str(max_batch), "--preload", "bench"]
        env = {**os.environ, "UAAP_HOME": str(home)}
        self.log = open(home / f"serve-{self.port}.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uaap serve exited {self.proc.returncode}: see {self.log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("uaap serve did not become ready in 120 s")

    def memory_mb(self, field: str = "VmRSS") -> float:
        """The API process's ``field`` of /proc/PID/status in MB (VmRSS: now; VmHWM: its peak)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def api_single(url: str, token: str, rows: list[dict[str, float]], n: int, repeat: bool) -> dict[str, float]:
    import httpx

    out: list[float] = []
    with httpx.Client(base_url=url, headers={"X-API-Key": token}) as c:
        for i in range(n + 200):
            row = rows[0] if repeat else rows[i % len(rows)]
            t = time.perf_counter()
            r = c.post("/v1/models/bench/predict", json={"row": row})
            dt = time.perf_counter() - t
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
            if i >= 200:
                out.append(dt)
    return _percentiles(out)


def api_batch(url: str, token: str, rows: list[dict[str, float]], batch: int, batches: int) -> dict[str, float]:
    import httpx

    body = {"rows": [rows[i % len(rows)] for i in range(batch)]}
    with httpx.Client(base_url=url, headers={"X-API-Key": token}, timeout=60) as c:
        c.post("/v1/models/bench/predict", json=body)
        t = time.perf_counter()
        for _ in range(batches):
            r = c.post("/v1/models/bench/predict", json=body)
            assert r.status_code == 200, r.text[:300]
        dt = time.perf_counter() - t
    return {"rows_per_s": batch * batches / dt, "ms_per_row": dt / (batch * batches) * 1000}


def api_load(url: str, token: str, rows: list[dict[str, float]], clients: int, seconds: float) -> dict[str, float]:
    import httpx

    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": token}, timeout=30) as c:
            i = k
            while time.monotonic() < stop:
                t = time.perf_counter()
                try:
                    ok = c.post("/v1/models/bench/predict", json={"row": rows[i % len(rows)]}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                lat[k].append(time.perf_counter() - t)
                errors[k] += 0 if ok else 1
                i += clients

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    every = [x for part in lat for x in part]
    return {"requests_per_s": len(every) / wall, **_percentiles(every), "errors": sum(errors), "clients": clients}


def direct(run: Any, rows: list[dict[str, float]], n: int, batch: int, batches: int) -> dict[str, Any]:
    """onnxruntime in this process on the same raw rows (standardised as the API does)."""
    import onnxruntime as ort

    manifest = json.loads((run.exports_dir / "onnx" / "manifest.json").read_text())
    pre = manifest["input"]["preprocessing"]
    mean, std = np.asarray(pre["mean"], np.float32), np.asarray(pre["std"], np.float32)
    names = list(rows[0])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(run.exports_dir / "onnx" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def predict(chunk: list[dict[str, float]]) -> np.ndarray:
        X = (np.asarray([[r[c] for c in names] for r in chunk], dtype=np.float32) - mean) / std
        return np.asarray(sess.run(None, {name: X})[0])

    single: list[float] = []
    for i in range(n + 200):
        t = time.perf_counter()
        predict([rows[i % len(rows)]])
        if i >= 200:
            single.append(time.perf_counter() - t)
    chunk = [rows[i % len(rows)] for i in range(batch)]
    predict(chunk)
    t = time.perf_counter()
    for _ in range(batches):
        predict(chunk)
    dt = time.perf_counter() - t
    return {
        "single": _percentiles(single),
        "batch": {"rows_per_s": batch * batches / dt, "ms_per_row": dt / (batch * batches) * 1000},
    }


def main() -> None:
    """Measure, print the table, write artifacts/serving.json."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="single-row requests per case")
    parser.add_argument("--batch", type=int, default=1000, help="rows per batch request")
    parser.add_argument("--batches", type=int, default=30, help="batch requests per case")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients of the load test")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the load test")
    parser.add_argument("--out", default=str(REPO / "artifacts"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="uaap-bench-serving-") as tmp:
        home = Path(tmp)
        token, rows, run = setup(home)
        result: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "requests": args.requests}
        result["direct"] = direct(run, rows, args.requests, args.batch, args.batches)
        for label, cache in (("cache", 10_000), ("no_cache", 0)):
            server = Server(home, cache, max(args.batch, 1000))
            try:
                single = api_single(server.url, token, rows, args.requests, repeat=cache > 0)
                batch = api_batch(server.url, token, rows, args.batch, args.batches)
                load = api_load(server.url, token, rows, args.clients, args.seconds)
                memory = {"rss_mb": server.memory_mb(), "peak_rss_mb": server.memory_mb("VmHWM")}
                result[label] = {"single": single, "batch": batch, "load": load, **memory}
            finally:
                server.stop()

    d = result["direct"]
    rows_out = [
        ("direct onnxruntime", d["single"]["p50_ms"], d["single"]["p99_ms"], d["batch"]["rows_per_s"], "-", "-", "-"),
    ]
    for label in ("cache", "no_cache"):
        r = result[label]
        r["ratio_p50"] = r["single"]["p50_ms"] / d["single"]["p50_ms"]
        r["ratio_batch_throughput"] = d["batch"]["rows_per_s"] / r["batch"]["rows_per_s"]
        rows_out.append(
            (
                f"API {label.replace('_', ' ')}",
                r["single"]["p50_ms"],
                r["single"]["p99_ms"],
                r["batch"]["rows_per_s"],
                f"{r['load']['requests_per_s']:.0f} rps, p99 {r['load']['p99_ms']:.1f} ms, {r['load']['errors']} err",
                f"{r['rss_mb']:.0f} (peak {r['peak_rss_mb']:.0f})",
                f"{r['ratio_p50']:.1f}x / {r['ratio_batch_throughput']:.1f}x",
            )
        )
    print("| case | single row p50 ms | p99 ms | batch rows/s | load | RSS MB | p50 ratio / batch ratio vs direct |")
    print("|---|---|---|---|---|---|---|")
    for name, p50, p99, rps, load_text, rss, ratio in rows_out:
        print(f"| {name} | {p50:.3f} | {p99:.3f} | {rps:,.0f} | {load_text} | {rss} | {ratio} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'serving.json'}")
    failed = {label: result[label]["load"]["errors"] for label in ("cache", "no_cache")}
    if any(failed.values()):
        raise SystemExit(f"the load test had failed requests: {failed}")


if __name__ == "__main__":
    main()
