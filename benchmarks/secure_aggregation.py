"""Secure aggregation cost, CKKS and SecAgg+ side by side in one run.

Prints:
1. bytes per parameter on the wire: plaintext float32 Arrays vs the CKKS record (uaap.crypto wire format);
2. encrypt (client), aggregate (server, K clients) and decrypt (client) throughput for 10k, 100k, 1M
   parameters, with TenSEAL's own serialise/deserialise/add path as the reference for the server;
3. SecAgg+ (uaap.crypto.secagg, the functions the protocol runs): bytes per parameter (the masked vector plus
   the round's keys, envelopes and shares), a client's time (encode and mask; its key stages apart) and the
   server's (sum K vectors, remove K self masks and one dropped client's pairwise masks) for the same sizes;
4. a K-client digits simulation without secure aggregation, with CKKS and with SecAgg+: median round time
   (rounds after the first), the ratio to plaintext, and the final federated accuracy of each. Flower's
   simulation engine picks up queued messages on a 0.1 s tick, so single rounds move in 0.1 s steps: take the
   median of many rounds (default 10). A SecAgg+ round is four exchanges, so it pays that tick four times.

Writes ``artifacts/secure_aggregation.png`` and ``.json`` (git ignores ``artifacts/``).

Targets (issue 3): <= 32 bytes/parameter, server aggregation >= 50M parameter-additions/s, round-time ratio
HE/plaintext <= 1.25. Timings are medians; on a shared machine trust the ratios more than the seconds.

    python benchmarks/secure_aggregation.py [--clients 10] [--rounds 10] [--repeats 3] [--no-sim]
                                            [--schemes ckks,secagg+] [--sizes 10000,100000,1000000]
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


def bench_crypto(keys: crypto.KeyFiles, clients: int, repeats: int, sizes: tuple[int, ...]) -> dict[str, Any]:
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
    for n in sizes:
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
    return {"bytes_per_param": {"plaintext": plain, "ckks": ckks}, "throughput": rows, "clients": clients}


def bench_secagg(clients: int, repeats: int, sizes: tuple[int, ...]) -> dict[str, Any]:
    """SecAgg+ costs with the protocol's own functions: one client's stages, the server's unmasking."""
    from client.secagg import collect, setup, share_keys
    from uaap.crypto import secagg

    params = secagg.Params()
    k = min(params.num_shares, clients)  # each client's neighbourhood, itself included
    print(f"\n== SecAgg+ ({clients} clients, neighbourhoods of {k}, threshold {params.threshold}, one dropped) ==")
    # the key stages of one neighbourhood, as the clients run them (independent of the model's size)
    t0 = time.perf_counter()
    states, adverts = {}, {}
    for node in range(1, k + 1):
        states[node], adverts[node] = setup(node, 1)
    t_setup = (time.perf_counter() - t0) / k
    nodes = list(range(1, k + 1))
    record = {"secagg-threshold": params.threshold, "secagg-nodes": nodes,
              "secagg-pk1": [adverts[n]["secagg-pk1"] for n in nodes],
              "secagg-pk2": [adverts[n]["secagg-pk2"] for n in nodes]}  # fmt: skip
    t0 = time.perf_counter()
    sealed = {n: share_keys(states[n], record, 1, params) for n in nodes}
    t_share = (time.perf_counter() - t0) / k
    t0 = time.perf_counter()
    for n in nodes:
        srcs = [m for m in nodes if m != n]
        blobs = [sealed[m]["secagg-envelopes"][sealed[m]["secagg-destinations"].index(n)] for m in srcs]
        collect(states[n], {"secagg-sources": srcs, "secagg-envelopes": blobs, "secagg-noise-count": k}, 1, params)
    t_open = (time.perf_counter() - t0) / k
    key_bytes = sum(len(v) for v in adverts[1].values())  # its two public keys, up
    key_bytes += sum(len(adverts[n]["secagg-pk1"]) + len(adverts[n]["secagg-pk2"]) for n in nodes)  # neighbours', down
    key_bytes += 2 * sum(len(b) for b in sealed[1]["secagg-envelopes"])  # its envelopes up, as many down
    share_bytes = 2 * len(states[1]["seed_shares"][0]) * k  # unmask: about one share per neighbour
    print(f"client key stages: setup {t_setup * 1e3:.1f} ms, share keys {t_share * 1e3:.1f} ms, open envelopes "
          f"{t_open * 1e3:.1f} ms; {key_bytes + share_bytes} bytes of keys, envelopes, shares a round")  # fmt: skip
    header = (
        f"{'params':>9} | {'bytes/param':>11} | {'client mask s':>13} | {'M params/s':>10} | {'server unmask s':>15}"
    )
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    rows = []
    pair = secagg.agree(states[1]["sk1"], adverts[2]["secagg-pk1"])
    holders = {n: [int(v) for v in states[n]["holders"]] for n in nodes}
    seed_shares = [states[n]["seed_shares"][holders[n].index(1)] for n in nodes][: params.threshold]  # node 1's
    for n in sizes:
        delta = rng.normal(0, 0.01, n)

        def client(delta: np.ndarray = delta) -> np.ndarray:
            vec, _ = secagg.encode(delta, 100, params)
            vec = secagg.apply_mask(vec, b"s" * 32, 1)
            for i in range(k - 1):  # one pairwise mask per neighbour (each an ECDH agreement and a PRG stream)
                vec = secagg.apply_mask(vec, secagg.agree(states[1]["sk1"], adverts[2 + i % (k - 1)]["secagg-pk1"]), 1)
            return vec

        t_client, vec = _median(client, repeats)
        vectors = [vec] * clients

        def server(vectors: list[np.ndarray] = vectors) -> np.ndarray:
            total = np.zeros_like(vectors[0])
            for v in vectors[:-1]:  # the last client dropped after sharing its keys
                total += v
            for _ in range(clients - 1):  # each survivor's self mask, from its rebuilt seed
                total = secagg.apply_mask(total, secagg.combine(seed_shares), -1)
            for _ in range(k - 1):  # the dropped client's masks with its neighbours, from its rebuilt key
                total = secagg.apply_mask(total, pair, -1)
            return total

        t_server, _ = _median(server, repeats)
        per_param = (vec.nbytes + key_bytes + share_bytes) / n
        rows.append({"params": n, "bytes_per_param": per_param, "client_s": t_client, "server_s": t_server,
                     "client_m_per_s": n / t_client / 1e6})  # fmt: skip
        print(f"{n:>9,} | {per_param:>11.2f} | {t_client:>13.3f} | {n / t_client / 1e6:>10.2f} | {t_server:>15.3f}")
    return {"clients": clients, "neighbourhood": k, "setup_s": t_setup, "share_keys_s": t_share,
            "open_envelopes_s": t_open, "key_bytes": key_bytes + share_bytes, "rows": rows}  # fmt: skip


def _time(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_simulation(clients: int, rounds: int, schemes: tuple[str, ...] = ("ckks",)) -> dict[str, Any]:
    from simulations.runner import simulate
    from uaap.config import RunConfig

    print(f"\n== {clients}-client digits simulation, {rounds} rounds (plaintext vs {', '.join(schemes)}) ==")
    base = RunConfig(num_clients=clients, num_rounds=rounds, seed=11, central_eval=False, experiment="bench-he")
    rows, curves = {}, {}
    runs = [("plaintext", base)] + [(name, base.replace(secure_aggregation=name)) for name in schemes]
    for name, cfg in runs:
        rd = simulate(cfg)
        events = [e for e in rd.events("round") if e["round"] > 0]
        later = [e["seconds"] for e in events[1:]] or [events[0]["seconds"]]
        curves[name] = [e["seconds"] for e in events]
        rows[name] = (statistics.median(later), events[-1]["evaluate"]["accuracy"], events[0]["seconds"])
        print(
            f"{name:>9}: median round {rows[name][0]:.3f} s (round 1 incl. warm-up {rows[name][2]:.1f} s), "
            f"final federated accuracy {rows[name][1]:.4f}"
        )
    ratios = {name: rows[name][0] / rows["plaintext"][0] for name in schemes}
    for name in schemes:
        gap = rows[name][1] - rows["plaintext"][1]
        print(f"round-time ratio {name}/plaintext: {ratios[name]:.2f}   accuracy difference: {gap:+.4f}")
    return {
        "clients": clients,
        "round_seconds": curves,
        "median_round_s": {k: v[0] for k, v in rows.items()},
        "accuracy": {k: v[1] for k, v in rows.items()},
        "ratio": ratios.get("ckks", next(iter(ratios.values()), 1.0)),
        "ratios": ratios,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Throughput against TenSEAL's own path, and round times with and without HE, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = result.get("simulation")
    rows = result["crypto"]["throughput"] if "crypto" in result else []
    panels = 2 if rows else 0
    fig, axes = plt.subplots(1, panels + (1 if sim else 0), figsize=(5.5 * (panels + (1 if sim else 0)), 4.2))
    axes = np.atleast_1d(axes)
    sizes = [f"{r['params']:,}" for r in rows]
    x = np.arange(len(rows))
    for ax, (ours, ref, title, unit) in zip(
        axes[:panels],
        (
            ("encrypt_m_per_s", "tenseal_encrypt_m_per_s", "client: encrypt", "M params/s"),
            ("aggregate_m_adds_per_s", "tenseal_aggregate_m_adds_per_s", "server: sum of K clients", "M additions/s"),
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
        ax = axes[-1]
        for name, style in zip(sim["round_seconds"], ("s--", "o-", "^-"), strict=False):
            secs = sim["round_seconds"][name]
            label = f"{name} (median {sim['median_round_s'][name]:.3f} s)"
            ax.plot(range(2, len(secs) + 1), secs[1:], style, label=label)
        ax.set_xlabel("round (round 1 holds the warm-up)")
        ax.set_ylabel("seconds")
        ratios = ", ".join(f"{k}/plaintext {v:.2f}" for k, v in sim["ratios"].items())
        ax.set_title(f"{sim['clients']}-client digits round: {ratios}", fontsize=9)
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
    parser.add_argument("--no-sim", action="store_true", help="skip the simulations")
    parser.add_argument("--schemes", default="ckks,secagg+", help="comma-separated: ckks, secagg+")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="parameter counts of the crypto tables")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "artifacts"), help="PNG + JSON")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="uaap-bench-he-")
    os.environ["UAAP_HOME"] = home
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; workspace {home}")
    schemes = tuple(s.strip() for s in args.schemes.split(",") if s.strip())
    sizes = tuple(int(n) for n in args.sizes.split(","))
    result: dict[str, Any] = {"load_average": os.getloadavg()[0]}
    if "ckks" in schemes:
        keys = crypto.generate_keys(Path(home) / "keys")
        result["crypto"] = bench_crypto(keys, args.clients, args.repeats, sizes)
    if "secagg+" in schemes:
        result["secagg"] = bench_secagg(args.clients, args.repeats, sizes)
    if not args.no_sim:
        result["simulation"] = bench_simulation(args.clients, args.rounds, schemes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "secure_aggregation.json").write_text(json.dumps(result, indent=2))
    if "crypto" in result or "simulation" in result:
        plot(result, out / "secure_aggregation.png")
    print(f"\nwrote {out / 'secure_aggregation.png'} and {out / 'secure_aggregation.json'}")


if __name__ == "__main__":
    main()
