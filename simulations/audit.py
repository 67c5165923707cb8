"""Federated audits of a finished simulated run, over Flower: its clients (the run's partitions, on Ray as ``uaap
simulate`` runs them) compute sums over their own rows; the server (``server/audit.py``) sums them and the report
is computed once from the totals (``uaap explain RUN --federated``, ``uaap fairness RUN --federated``, ``uaap
monitor --reference RUN --federated``).

Under secure aggregation the explanation sums reach the server as one CKKS ciphertext sum; this process then acts
as the key holder of the simulation (its secret context is the one the run's clients used) and decrypts the
totals, as ``uaap keys decrypt-model`` does for a model. A deployed federation (``flower-server``) is not wired.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from uaap import quiet
from uaap.cluster import block_tensorflow, connect
from uaap.config import RunConfig
from uaap.errors import ConfigError, DataError, RunFailedError

if TYPE_CHECKING:
    from flwr.serverapp import Grid

    from server.audit import Audited, Send
    from uaap.monitor.drift import Thresholds
    from uaap.monitor.reports import Written

T = TypeVar("T")
log = logging.getLogger("uaap.audit")


def over_flower(audit: Audited, job: Callable[[Grid, Send], T], *, ray_address: str | None = None) -> T:
    """Run ``job`` in a ServerApp over the run's ``num-clients`` simulated clients (UAAP's ClientApp on Ray)."""
    block_tensorflow()
    import ray
    from flwr.simulation import run_simulation

    from client.app import app as client_app
    from server.audit import make_app

    out: list[T] = []
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet.flower_banners()
    try:
        connect(ray_address)
        run_simulation(
            server_app=make_app(job, out, timeout=audit.cfg.round_timeout, min_clients=audit.cfg.num_clients),
            client_app=client_app,
            num_supernodes=audit.cfg.num_clients,
            backend_config={"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0}},
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if not out:
        raise RunFailedError(f"the federated audit of run {audit.rd.run_id} returned nothing; see the log above")
    return out[0]


def new_rows(audit: Audited, data: str) -> RunConfig:
    """The run config whose table is ``data``: each simulated client holds its partition of those rows."""
    from uaap.data.tables import read_config_table

    path = Path(data)
    if not path.is_file():
        raise DataError(f"--data {data!r} is not a file here; a simulated federation deals a local table's rows")
    cfg = audit.cfg.replace(data_path=str(path.resolve()))
    frame = read_config_table(cfg).frame  # the target column must be there: the simulation deals rows by label
    from uaap.monitor.drift import check_columns

    check_columns(list(audit.model.preprocessor.input_columns), [c for c in frame.columns if c != cfg.target])
    return cfg


def _publish(
    audit: Audited, outputs: dict[Path, Any], metrics: dict[str, float], event: str, values: dict[str, Any]
) -> list[Path]:
    from uaap.monitor.reports import publish

    return publish(audit.model, outputs, metrics, event, values)


def explain(
    run_id: str,
    *,
    target_class: str = "",
    points: int = 20,
    seed: int = 0,
    max_evals: int = 0,
    repeats: int = 5,
    ray_address: str | None = None,
) -> Written:
    """``uaap explain RUN --federated``: mean |SHAP|, mean SHAP, PDPs and permutation importance of the run's
    clients' rows, from sums."""
    from server import audit as server_audit
    from uaap import crypto
    from uaap.explain import federated as fx
    from uaap.explain.report import EXPLAIN_DIR
    from uaap.explain.shapley import choose_class
    from uaap.monitor.fairness import write_json
    from uaap.monitor.reports import Written, safe_name

    if points < 2:
        raise ConfigError(f"--grid-points {points}: give at least 2")
    fx.check_permutations(repeats, seed)  # before Ray starts
    audit = server_audit.audited(run_id)
    model = audit.model
    k = choose_class(model, target_class) if model.task == "classification" else 0
    secret = crypto.client_context(audit.cfg) if audit.public is not None else None  # the key holder's, checked first
    totals = over_flower(
        audit,
        lambda grid, send: server_audit.explain(
            grid, audit, send, points=points, seed=seed, max_evals=max_evals, repeats=repeats
        ),
        ray_address=ray_address,
    )
    total = dict(totals.plain)
    if totals.encrypted is not None and secret is not None:
        total.update(fx.open_sums(totals.encrypted, secret, totals.layout))
    report = fx.explain_report(total, model, totals.grids, k)
    report.update(run_id=run_id, federated=True, clients=totals.clients, left_out=audit.left_out,
                  secure_aggregation=audit.cfg.secure_aggregation)  # fmt: skip
    folder = audit.rd.path / EXPLAIN_DIR
    title = f"run {run_id}: {totals.clients} clients, {report['rows']} rows (federated sums)"
    outputs: dict[Path, Any] = {
        folder / "shap-federated.json": lambda p: write_json(report, p),
        folder / "shap-federated-bar.png": lambda p: fx.plot_bar(report, p, title),
        folder / "importance-federated.png": lambda p: fx.plot_importance(report, p, title),
    }
    if report["pdp"]:
        outputs[folder / "pdp-federated.png"] = lambda p: fx.plot_pdp(report, p, title)
    metrics = {f"shap_federated.{safe_name(c)}.mean_abs": v for c, v in report["mean_abs_shap"].items()}
    metrics |= {f"importance_federated.{safe_name(c)}.permutation": v
                for c, v in report["permutation_importance"].items()}  # fmt: skip
    metrics["importance_federated.base_loss"] = report["base_loss"]
    event = {"federated": True, "clients": totals.clients, "ranking": report["ranking"][:10],
             "importance_ranking": report["importance_ranking"][:10]}  # fmt: skip
    return Written(report, _publish(audit, outputs, metrics, "explain", event))


def fairness(
    run_id: str, sensitive: str, *, data: str = "", positive: str = "", ray_address: str | None = None
) -> Written:
    """``uaap fairness RUN --sensitive COL --federated``: the report of the clients' summed per-group counts."""
    from server import audit as server_audit
    from uaap import crypto
    from uaap.monitor import fairness as fair
    from uaap.monitor.reports import MONITOR_DIR, Written, safe_name

    audit = server_audit.audited(run_id)
    model = audit.model
    if model.task != "classification":
        raise DataError(f"run {run_id!r} is a {model.task} model; group fairness needs a classifier")
    if sensitive not in model.preprocessor.input_columns and sensitive != model.target:
        raise DataError(
            f"sensitive column {sensitive!r} is not a column of run {run_id!r}'s table; its columns are: "
            f"{', '.join(model.preprocessor.input_columns)}"
        )
    chosen = fair.choose_positive(model.classes, positive)
    current = new_rows(audit, data) if data else None
    secret = crypto.client_context(audit.cfg) if audit.public is not None else None  # the key holder's, checked first
    totals = over_flower(audit, lambda grid, send: server_audit.fairness(grid, audit, send, sensitive, cfg=current),
                         ray_address=ray_address)  # fmt: skip
    total = dict(totals.plain)
    if totals.encrypted is not None and secret is not None:
        total.update(fair.open_counts(totals.encrypted, secret, totals.layout, len(model.classes)))
    groups = [key[len(fair.GROUP) :] for key in total]
    fair.check_groups(np.asarray(groups, dtype=object), sensitive)
    result = fair.fairness_from_counts(total, model.classes, chosen)
    result.update(run_id=run_id, data=data or "the clients' training rows", sensitive=sensitive, federated=True,
                  left_out=audit.left_out, secure_aggregation=audit.cfg.secure_aggregation)  # fmt: skip
    stem = audit.rd.path / MONITOR_DIR / f"fairness-{safe_name(sensitive)}-federated"
    title = f"run {run_id}: fairness by {sensitive!r}, federated ({audit.cfg.num_clients} clients)"
    outputs: dict[Path, Any] = {
        stem.with_suffix(".json"): lambda p: fair.write_json(result, p),
        stem.with_suffix(".png"): lambda p: fair.plot(result, p, title),
    }
    metrics = {f"fairness_federated.{safe_name(sensitive)}.{m}": float(result[m]) for m in fair.SUMMARY}
    return Written(result, _publish(audit, outputs, metrics, "fairness", {"sensitive": sensitive, "federated": True}))


def monitor(run_id: str, data: str, *, thresholds: Thresholds | None = None, ray_address: str | None = None) -> Written:
    """``uaap monitor --reference RUN --federated --data NEW``: each client compares its partition of the new rows
    with its training rows; the server sees the summed sketches only."""
    from server import audit as server_audit
    from uaap.monitor import drift as dr
    from uaap.monitor.fairness import write_json
    from uaap.monitor.reports import MONITOR_DIR, Written, safe_name

    audit = server_audit.audited(run_id)
    current = new_rows(audit, data)
    reference, now = over_flower(audit, lambda grid, send: server_audit.drift(grid, audit, send, current),
                                 ray_address=ray_address)  # fmt: skip
    result = dr.drift_report(reference, now, thresholds)
    result.update(run_id=run_id, data=data, reference="the clients' training rows", federated=True,
                  left_out=audit.left_out)  # fmt: skip
    stem = audit.rd.path / MONITOR_DIR / f"drift-federated-{time.strftime('%Y%m%d-%H%M%S')}"
    title = f"run {run_id}: drift of {Path(data).name} on {audit.cfg.num_clients} clients (federated sketches)"
    outputs: dict[Path, Any] = {
        stem.with_suffix(".json"): lambda p: write_json(result, p),
        stem.with_suffix(".png"): lambda p: dr.plot(result, p, title),
    }
    metrics: dict[str, float] = {"drift_federated.features_drifted": float(len(result["drifted"]))}
    for name, row in result["features"].items():
        for stat in ("psi", "ks", "wasserstein_std", "cramers_v"):
            if stat in row:
                metrics[f"drift_federated.{safe_name(name)}.{stat}"] = float(row[stat])
    event = {"data": data, "federated": True, "drifted": result["drifted"]}
    return Written(result, _publish(audit, outputs, metrics, "drift", event))
