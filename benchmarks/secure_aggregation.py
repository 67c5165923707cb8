"""Secure aggregation (CKKS) cost, measured side by side in one run.

Prints:
1. bytes per parameter on the wire: plaintext float32 Arrays vs the CKKS record (uaap.crypto wire format);
2. encrypt (client), aggregate (server, K clients) and decrypt (client) throughput for 10k, 100k, 1M
   parameters, with TenSEAL's own serialise/deserialise/add path as the reference for the server;
3. a K-client digits simulation with and without HE: median round time (rounds after the first), the ratio,
   and the final federated accuracy of both. Flower's simulation engine picks up queued messages on a 0.1 s
   tick, so single rounds move in 0.1 s steps: take the median of many rounds (default 10).

Writes ``artifacts/secure_aggregation.png`` and ``.json`` (git ignores ``artifacts/``).

Targets (issue 3): <= 32 bytes/parameter, server aggregation >= 50M parameter-additions/s, round-time ratio
HE/plaintext <= 1.25. Timings are medians; on a shared machine trust the ratios more than the seconds.

    python benchmarks/secure_aggregation.py [--clients 10] [--rounds 10] [--repeats 3] [--no-sim]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uaap import crypto  # noqa: E402
from uaap.models import to_record  # noqa: E402


def _median(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _wire_bytes(record: Any) -> int:
    return sum(len(record[k].data) for k in record)


def tenseal_reference_sum(blobs: list[bytes], public: crypto.HEContext) -> bytes:
    """The naive server: TenSEAL deserialise every client's vector, add, serialise."""
    import tenseal as ts

    total = ts.ckks_vector_from(public.context, blobs[0])
    for blob in blobs[1:]:
        total.add_(ts.ckks_vector_from(public.context, blob))
    return total.serialize()


def bench_crypto(keys: crypto.KeyFiles, clients: int, repeats: int) -> dict[str, Any]:
    import tenseal as ts

    secret, public = crypto.load_context(keys.secret), crypto.server_context(keys.public)
    rng = np.random.default_rng(0)
    print("\n== wire size (1M parameters) ==")
    weights = [rng.normal(0, 0.1, 1_000_000).astype(np.float32)]
    plain = _wire_bytes(to_record(weights)) / 1e6
    record = crypto.encrypt_weights(weights, 100.0, secret, max_summands=clients)
    ckks = _wire_bytes(record) / 1e6
    print(
        f"plaintext float32: {plain:6.2f} B/param   CKKS (N=8192, [60,60], 2 values/slot): {ckks:6.2f} B/param   "
        f"x{ckks / plain:.1f}"
    )

    print(f"\n== throughput (median of {repeats}; aggregate = {clients} clients summed by the server) ==")
    header = (
        f"{'params':>9} | {'encrypt M/s':>11} | {'TenSEAL encrypt':>15} | {'aggregate M adds/s':>18} | "
        f"{'TenSEAL-object sum':>18} | "
        f"{'decrypt M/s':>11} | {'max abs err':>11}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for n in (10_000, 100_000, 1_000_000):
        ws = [rng.normal(0, 0.1, n).astype(np.float32)]
        t_enc, rec = _median(lambda ws=ws: crypto.encrypt_weights(ws, 50.0, secret, max_summands=clients), repeats)
        recs = [rec] * clients

        def aggregate(recs: list[Any] = recs) -> Any:
            acc = crypto.EncryptedSum(public)
            for r in recs:
                acc.add(r)
            return acc.result()

        t_agg, total = _median(aggregate, repeats)
        enc = crypto.parse_record(total, secret)
        coeffs = np.concatenate(enc.chunks)
        t_dec, _ = _median(lambda c=coeffs, n=n: crypto.decrypt_vector(c, n, secret), repeats)  # uncached
        out = crypto.decrypt_global(total, secret)
        err = float(np.abs(out[0].astype(np.float64) - ws[0]).max())  # clients' updates identical: mean == ws
        # reference: TenSEAL's own path (real packing, 4096 values per ciphertext, public-key encryption; fed
        # 4096 values at a time, it warns on stdout for longer vectors), then its objects summed by the server
        scaled = ws[0].astype(np.float64) * 50.0
        t0 = time.perf_counter()
        blobs = [ts.ckks_vector(secret.context, scaled[i : i + 4096]).serialize() for i in range(0, n, 4096)]
        t_ref_enc = time.perf_counter() - t0
        t_ref = _time(lambda blobs=blobs: [tenseal_reference_sum([b] * clients, public) for b in blobs])
        adds = clients * n
        rows.append(
            {
                "params": n,
                "encrypt_m_per_s": n / t_enc / 1e6,
                "tenseal_encrypt_m_per_s": n / t_ref_enc / 1e6,
                "aggregate_m_adds_per_s": adds / t_agg / 1e6,
                "tenseal_aggregate_m_adds_per_s": adds / t_ref / 1e6,
                "decrypt_m_per_s": n / t_dec / 1e6,
                "max_abs_error": err,
            }
        )
        print(
            f"{n:>9,} | {n / t_enc / 1e6:>11.2f} | {n / t_ref_enc / 1e6:>15.2f} | {adds / t_agg / 1e6:>18.1f} | "
            f"{adds / t_ref / 1e6:>18.1f} | {n / t_dec / 1e6:>11.2f} | {err:>11.2e}"
        )
    return {"bytes_per_param": {"plaintext": plain, "ckks": ckks}, "throughput": rows}


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_simulation(clients: int, rounds: int) -> dict[str, Any]:
    from simulations.runner import simulate
    from uaap.config import RunConfig

    print(f"\n== {clients}-client digits simulation, {rounds} rounds (plaintext vs CKKS) ==")
    base = RunConfig(num_clients=clients, num_rounds=rounds, seed=11, central_eval=False, experiment="bench-he")
    rows, curves = {}, {}
    for name, cfg in (("plaintext", base), ("ckks", base.replace(secure_aggregation="ckks"))):
        rd = simulate(cfg)
        events = [e for e in rd.events("round") if e["round"] > 0]
        later = [e["seconds"] for e in events[1:]] or [events[0]["seconds"]]
        curves[name] = [e["seconds"] for e in events]
        rows[name] = (statistics.median(later), events[-1]["evaluate"]["accuracy"], events[0]["seconds"])
        print(
            f"{name:>9}: median round {rows[name][0]:.3f} s (round 1 incl. warm-up {rows[name][2]:.1f} s), "
            f"final federated accuracy {rows[name][1]:.4f}"
        )
    ratio = rows["ckks"][0] / rows["plaintext"][0]
    gap = rows["ckks"][1] - rows["plaintext"][1]
    print(f"round-time ratio HE/plaintext: {ratio:.2f}   accuracy difference: {gap:+.4f}")
    return {
        "clients": clients,
        "round_seconds": curves,
        "median_round_s": {k: v[0] for k, v in rows.items()},
        "accuracy": {k: v[1] for k, v in rows.items()},
        "ratio": ratio,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Throughput against TenSEAL's own path, and round times with and without HE, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["crypto"]["throughput"]
    sizes = [f"{r['params']:,}" for r in rows]
    x = np.arange(len(rows))
    sim = result.get("simulation")
    fig, axes = plt.subplots(1, 3 if sim else 2, figsize=(16 if sim else 11, 4.2))
    for ax, (ours, ref, title, unit) in zip(
        axes,
        (
            ("encrypt_m_per_s", "tenseal_encrypt_m_per_s", "client: encrypt", "M params/s"),
            ("aggregate_m_adds_per_s", "tenseal_aggregate_m_adds_per_s", "server: sum of 10", "M additions/s"),
        ),
        strict=False,
    ):
        ax.bar(x - 0.2, [r[ours] for r in rows], 0.4, label="UAAP (2 values/slot, raw coefficients)")
        ax.bar(x + 0.2, [r[ref] for r in rows], 0.4, label="TenSEAL ckks_vector objects")
        ax.set_xticks(x, sizes)
        ax.set_xlabel("parameters")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.set_ylim(top=1.35 * max(max(r[ours], r[ref]) for r in rows))
        ax.legend(fontsize=8, loc="upper left")
    if sim:
        ax = axes[2]
        for name, style in (("plaintext", "s--"), ("ckks", "o-")):
            secs = sim["round_seconds"][name]
            label = f"{name} (median {sim['median_round_s'][name]:.3f} s)"
            ax.plot(range(2, len(secs) + 1), secs[1:], style, label=label)
        ax.set_xlabel("round (round 1 holds the warm-up)")
        ax.set_ylabel("seconds")
        ax.set_title(f"{sim['clients']}-client digits round, HE/plaintext {sim['ratio']:.2f}")
        ax.set_ylim(bottom=0, top=1.35 * max(max(v[1:] or v) for v in sim["round_seconds"].values()))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Run every measurement and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sim", action="store_true", help="skip the simulation pair")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "artifacts"), help="PNG + JSON")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="uaap-bench-he-")
    os.environ["UAAP_HOME"] = home
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; workspace {home}")
    keys = crypto.generate_keys(Path(home) / "keys")
    result: dict[str, Any] = {"load_average": os.getloadavg()[0]}
    result["crypto"] = bench_crypto(keys, args.clients, args.repeats)
    if not args.no_sim:
        result["simulation"] = bench_simulation(args.clients, args.rounds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "secure_aggregation.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "secure_aggregation.png")
    print(f"\nwrote {out / 'secure_aggregation.png'} and {out / 'secure_aggregation.json'}")


if __name__ == "__main__":
    main()
