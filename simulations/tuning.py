"""Federated hyperparameter search: every Ray Tune trial is a real Flower simulation on the same Ray cluster.

How trials and the simulations inside them share one cluster without deadlock:

* Ray is started once, by the driver, with TensorFlow blocked in every worker
  (:func:`uaap.cluster.connect`); inside a trial Ray is already up, so neither our runner nor
  Flower calls ``ray.init`` again.
* Flower sizes its actor pool from the *whole* cluster (``pool_size_from_resources`` reads
  ``ray.nodes()``: per node, floor(CPUs / client CPUs)), and Tune captures the actors a trial
  creates in the trial's placement group. So each trial reserves exactly that pool: a
  ``PlacementGroupFactory`` with an empty head bundle (the trial function needs no CPU of its own)
  plus one bundle of ``client_cpus`` per actor. A smaller reservation would leave actors pending
  forever (a silent deadlock); a larger one is impossible.
* Because every simulation's pool spans the whole cluster, at most one trial runs at a time
  (``max_concurrent_trials=1``); the parallelism lives inside the trial (one actor per
  ``client_cpus`` on every node: 2 actors on a 2-core machine, 64 on a 64-core cluster).
* Flower calls ``ray.shutdown()`` when its simulation ends; inside a trial that would cut the trial
  worker off from Ray, so it is a no-op there (:func:`ray_shutdown_disabled`).
* ``time_budget_s`` is always set: a mis-sized reservation cannot hang the search forever.

The default configuration is always evaluated first (Optuna's ``points_to_evaluate``), under the same
rounds, clients and seed as every other trial, so "better than the default" is measured side by side.

Length: over 500 lines because the reservation sizing, the trial function, the recorder and the leaderboard
rest on the same assumptions listed above; kept together, the no-deadlock argument reads in one place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from uaap import workspace
from uaap.automl.search import inert_callback
from uaap.config import RunConfig
from uaap.errors import ConfigError, UaapError
from uaap.metrics import HIGHER_IS_BETTER
from uaap.metrics import SEARCHABLE as METRICS

# name -> (kind, low, high, log); "clients_per_round" maps onto fraction_train.
SPACE: dict[str, tuple[str, float, float, bool]] = {
    "learning_rate": ("float", 0.003, 0.5, True),
    "local_epochs": ("int", 1, 5, False),
    "proximal_mu": ("float", 1e-4, 1.0, True),
    "clients_per_round": ("int", 0, 0, False),  # bounds come from the base config
    "dp_clip_norm": ("float", 0.1, 10.0, True),
    "dp_central_clip_norm": ("float", 0.1, 10.0, True),
}
GRID: dict[str, tuple[Any, ...]] = {
    "learning_rate": (0.01, 0.05, 0.2),
    "local_epochs": (1, 3),
    "proximal_mu": (0.001, 0.1),
    "dp_clip_norm": (0.5, 2.0),
    "dp_central_clip_norm": (0.5, 2.0),
}


@dataclass(frozen=True)
class TuneFederatedSettings:
    """Budget, search algorithm and the parameters to search."""

    num_trials: int = 8
    time_budget_s: float = 1800.0
    search: str = "tpe"
    params: tuple[str, ...] = ()
    metric: str = "accuracy"
    client_cpus: float = 1.0

    def __post_init__(self) -> None:
        if self.num_trials < 1:
            raise ConfigError(f"trials={self.num_trials} must be at least 1")
        if not self.time_budget_s > 0:
            raise ConfigError(f"time budget {self.time_budget_s} s must be positive: it bounds a stuck trial")
        if self.search not in ("tpe", "random", "grid"):
            raise ConfigError(f"search={self.search!r} is not supported; choose one of: tpe, random, grid")
        if self.metric not in METRICS:
            raise ConfigError(f"metric={self.metric!r} is not supported; choose one of: {', '.join(METRICS)}")
        if not self.client_cpus > 0:
            raise ConfigError(f"client-cpus={self.client_cpus} must be positive")
        names = tuple(p.strip().replace("-", "_") for p in self.params if p.strip())
        unknown = [n for n in names if n not in SPACE]
        if unknown:
            raise ConfigError(
                f"cannot tune {unknown[0]!r}; choose from: {', '.join(n.replace('_', '-') for n in SPACE)}"
            )
        object.__setattr__(self, "params", names)


@dataclass(frozen=True)
class TuneFederatedResult:
    """The leaderboard, the best and the default trial, and whether Ray's CPUs were free afterwards."""

    run_dir: workspace.RunDir
    leaderboard: list[dict[str, Any]]
    best: dict[str, Any]
    default: dict[str, Any] | None
    metric: str
    mode: str
    search_seconds: float
    resources_released: bool


def default_params(base: RunConfig) -> tuple[str, ...]:
    """What to search when nothing is named: lr, local epochs, mu (FedProx), clients per round, clip norms (DP)."""
    names = ["learning_rate", "local_epochs"]
    if base.strategy == "fedprox":
        names.append("proximal_mu")
    if base.num_clients > base.min_clients:
        names.append("clients_per_round")
    if base.dp_local:
        names.append("dp_clip_norm")
    if base.dp_central:
        names.append("dp_central_clip_norm")
    return tuple(names)


def clients_per_round(base: RunConfig) -> int:
    """Clients sampled per round under ``base`` (Flower: max(int(n * fraction), min))."""
    return max(int(base.num_clients * base.fraction_train), base.min_clients)


def apply(base: RunConfig, config: dict[str, Any]) -> RunConfig:
    """The run configuration of one trial (validated: a bad value fails the trial with a clear message)."""
    changes = dict(config)
    if "clients_per_round" in changes:
        k = int(changes.pop("clients_per_round"))
        changes["fraction_train"] = k / base.num_clients
    return RunConfig.from_mapping({**json.loads(base.to_json()), **changes})


class FederatedSpace:
    """Optuna define-by-run space over the chosen federated parameters (picklable, unlike a closure)."""

    def __init__(self, names: tuple[str, ...], base: RunConfig) -> None:
        self.names = names
        self.min_k = base.min_clients
        self.max_k = base.num_clients

    def __call__(self, trial: Any) -> None:
        """Suggest one configuration on ``trial``."""
        for name in self.names:
            kind, low, high, log = SPACE[name]
            if name == "clients_per_round":
                trial.suggest_int(name, self.min_k, self.max_k)
            elif kind == "float":
                trial.suggest_float(name, low, high, log=log)
            else:
                trial.suggest_int(name, int(low), int(high))


def _default_point(base: RunConfig, names: tuple[str, ...]) -> dict[str, Any]:
    point: dict[str, Any] = {}
    for name in names:
        point[name] = clients_per_round(base) if name == "clients_per_round" else getattr(base, name)
    return point


@contextlib.contextmanager
def ray_shutdown_disabled() -> Iterator[None]:
    """Inside a trial, Flower's (and our runner's) ``ray.shutdown()`` would disconnect the trial worker."""
    import ray

    original = ray.shutdown
    ray.shutdown = lambda *args, **kwargs: None
    try:
        yield
    finally:
        ray.shutdown = original


def final_metrics(rd: workspace.RunDir) -> dict[str, float]:
    """The last round's central test metrics (federated evaluation when central evaluation is off)."""
    rounds = [e for e in rd.events("round") if e["round"] > 0]
    if not rounds:
        raise UaapError(f"simulation {rd.run_id} finished no round; see {rd.metrics_file}")
    last = rounds[-1]
    metrics = last.get("central") or last.get("evaluate") or {}
    return {**{k: float(v) for k, v in metrics.items()}, "rounds": float(last["round"])}


def _federated_trial(
    config: dict[str, Any], base_json: str = "", parent: str = "", client_cpus: float = 1.0, metric: str = "accuracy"
) -> None:
    """One trial: a full Flower simulation with this configuration; reports its final test metrics once."""
    from ray import tune

    from simulations.runner import ClientResources, simulate
    from uaap.cluster import block_tensorflow

    block_tensorflow()
    base = RunConfig.from_json(base_json)
    cfg = apply(base, config).replace(run_id=f"{parent}-{tune.get_context().get_trial_id()}")
    with ray_shutdown_disabled():
        rd = simulate(cfg, resources=ClientResources(client_cpus))
    final = final_metrics(rd)
    tune.report({"score": final[metric], **final, "sim_run_id": rd.run_id})


def _recorder(rows: dict[str, dict[str, Any]], tracker: Any, on_trial: Callable[[dict[str, Any]], None] | None) -> Any:
    from ray.tune import Callback

    class Recorder(Callback):
        def __reduce__(self) -> tuple[Any, tuple[()]]:
            # Tune pickles its callbacks with the experiment state; this one holds live objects
            # (MLflow client, progress display) that neither pickle nor mean anything after a restore.
            return (inert_callback, ())

        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            config = dict(trial.config)
            row = rows[trial.trial_id] = {
                "trial": trial.trial_id,
                "params": config,
                "status": "running",
                "started": time.time(),
                "error": "",
            }
            row["child"] = tracker.start_child(f"{tracker.run_id}/{trial.trial_id}", config)

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
            row = rows[trial.trial_id]
            row.update(
                score=float(result["score"]),
                metrics={k: float(result[k]) for k in (*METRICS, "rounds") if k in result},
                sim_run_id=str(result.get("sim_run_id", "")),
            )
            tracker.log_child(row["child"], row["metrics"], step=int(row["metrics"].get("rounds", 0)))

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._finish(rows[trial.trial_id], "completed", "FINISHED")

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            row = rows[trial.trial_id]
            text = ""
            with contextlib.suppress(OSError):
                if trial.error_file and Path(trial.error_file).is_file():
                    text = Path(trial.error_file).read_text(encoding="utf-8", errors="replace")
            lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("Traceback", "  "))]
            row["error"] = (lines[-1] if lines else "failed (no error details)")[:300]
            self._finish(row, "error", "FAILED")

        def _finish(self, row: dict[str, Any], status: str, mlflow_status: str) -> None:
            row["status"] = status
            row["ended"] = time.time()
            tags = {"uaap.status": status, "uaap.error": row["error"], "uaap.sim_run_id": row.get("sim_run_id", "")}
            tracker.finish_child(row["child"], mlflow_status, tags)
            if on_trial is not None:
                on_trial(row)

    return Recorder()


def actor_pool_size(client_cpus: float) -> int:
    """Actors Flower will create on the connected cluster (its own formula: per node, floor(CPUs / client CPUs))."""
    import ray

    total = 0
    for node in ray.nodes():
        resources = node.get("Resources") or {}
        if node.get("Alive", True) and resources:
            total += int(resources.get("CPU", 0) / client_cpus)
    return total


def tune_federated(
    base: RunConfig,
    settings: TuneFederatedSettings | None = None,
    *,
    ray_address: str | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> TuneFederatedResult:
    """Search federated hyperparameters of ``base``; every trial is a Flower simulation (see module doc)."""
    from uaap.cluster import block_tensorflow, connect, quiet_env

    settings = settings or TuneFederatedSettings()
    stage = on_stage or (lambda text: None)
    names = settings.params or default_params(base)
    if not names:
        raise ConfigError("nothing to tune: name parameters with --tune (e.g. learning-rate,local-epochs)")
    if "clients_per_round" in names and base.num_clients <= base.min_clients:
        raise ConfigError(
            f"clients-per-round cannot vary with num-clients={base.num_clients} and min-clients={base.min_clients}; "
            "add clients or lower min-clients"
        )
    mode = "max" if settings.metric in HIGHER_IS_BETTER else "min"
    default = _default_point(base, names)
    apply(base, default)  # the base configuration must be valid before Ray starts
    rd = workspace.run_dir(base.run_id or workspace.new_run_id("tunefed"))
    base = base.replace(run_id="")
    rd.write_config(base.replace(run_id=rd.run_id))
    (rd.path / "tune_federated.json").write_text(
        json.dumps({**asdict(settings), "params": list(names)}, indent=2) + "\n"
    )

    quiet_env()
    block_tensorflow()
    import ray
    from ray import tune

    from uaap.automl.tracking import SearchTracker

    tracker = SearchTracker(base.experiment, rd.run_id, kind="tune-federated", child_kind="tune-federated-trial")
    tracker.parent.log_params(
        {**base.to_flower(), "tuned": ",".join(names), "trials": settings.num_trials, "search": settings.search}
    )
    rows: dict[str, dict[str, Any]] = {}
    started = not ray.is_initialized()
    released = False
    try:
        stage("starting Ray" if not ray_address else f"attaching to Ray at {ray_address}")
        connect(ray_address)
        pool = actor_pool_size(settings.client_cpus)
        if pool < 1:
            raise ConfigError(
                f"client-cpus={settings.client_cpus} leaves no room for a single client actor on this cluster "
                f"({ray.cluster_resources().get('CPU', 0):g} CPUs); lower --client-cpus"
            )
        bundles = [{}] + [{"CPU": settings.client_cpus}] * pool
        search_alg, param_space, num_samples = _search(settings, names, base, default, mode)
        trainable = tune.with_resources(
            tune.with_parameters(
                _federated_trial,
                base_json=base.to_json(),
                parent=rd.run_id,
                client_cpus=settings.client_cpus,
                metric=settings.metric,
            ),
            tune.PlacementGroupFactory(bundles),
        )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg,
                num_samples=num_samples,
                max_concurrent_trials=1,
                time_budget_s=settings.time_budget_s,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(
                name="search",
                storage_path=str((rd.path / "tune").resolve()),
                verbose=0,
                callbacks=[_recorder(rows, tracker, on_trial)],
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            ),
        )
        stage(
            f"{settings.num_trials} simulations of {base.num_clients} clients x {base.num_rounds} rounds, "
            f"one at a time, {pool} client actors each; budget {settings.time_budget_s:g} s"
        )
        t0 = time.perf_counter()
        quiet = logging.getLogger("ray.tune")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # trial errors are reported by the recorder; the rest is Tune chatter
        try:
            tuner.fit()
        finally:
            quiet.setLevel(level)
        seconds = time.perf_counter() - t0
        released = _wait_released()
    except BaseException:
        tracker.parent.finish("FAILED")
        raise
    finally:
        if started and ray.is_initialized():
            ray.shutdown()
    for row in rows.values():
        if row["status"] == "running":
            row["status"] = "budget"
            tracker.finish_child(row.get("child"), "KILLED", {"uaap.status": "budget"})
    board = _leaderboard(rows, mode, default)
    _write(rd, board)
    done = [r for r in board if r["status"] == "completed"]
    default_row = next((r for r in board if r["is_default"] and r["status"] == "completed"), None)
    if not done:
        tracker.parent.finish("FAILED")
        raise UaapError(
            f"no federated trial finished within {settings.time_budget_s:g} s ({len(board)} started); "
            "raise --time-budget or use fewer rounds/clients"
        )
    best = done[0]
    summary = {
        "best_score": best["score"],
        "trials": len(board),
        "trials_completed": len(done),
        "trials_failed": sum(r["status"] == "error" for r in board),
        "search_seconds": seconds,
    }
    if default_row is not None:
        summary["default_score"] = default_row["score"]
    tracker.parent.log_metrics(summary, step=len(board))
    tracker.parent.log_params({f"best_{k}": v for k, v in best["params"].items()})
    tracker.parent.log_artifact(str(rd.path / "leaderboard.csv"))
    tracker.parent.set_tags({"uaap.status": "completed", "uaap.best_sim_run_id": best.get("sim_run_id", "")})
    tracker.parent.finish()
    rd.log_event("end", status="completed", best=best, default=default_row, metric=settings.metric)
    return TuneFederatedResult(rd, board, best, default_row, settings.metric, mode, seconds, released)


def _search(
    settings: TuneFederatedSettings, names: tuple[str, ...], base: RunConfig, default: dict[str, Any], mode: str
) -> tuple[Any, dict[str, Any], int]:
    from ray import tune

    if settings.search == "grid":
        import itertools

        axes = []
        for name in names:
            if name == "clients_per_round":
                axes.append(sorted({base.min_clients, clients_per_round(base), base.num_clients}))
            else:
                axes.append(list(GRID[name]))
        points = [default] + [dict(zip(names, values, strict=True)) for values in itertools.product(*axes)]
        unique = list({json.dumps(p, sort_keys=True): p for p in points}.values())[: settings.num_trials]
        return None, {"point": tune.grid_search(unique)}, 1
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler: Any = (
        optuna.samplers.TPESampler(seed=base.seed, n_startup_trials=min(4, settings.num_trials))
        if settings.search == "tpe"
        else optuna.samplers.RandomSampler(seed=base.seed)
    )
    search = OptunaSearch(
        space=FederatedSpace(names, base),
        metric="score",
        mode=mode,
        sampler=sampler,
        points_to_evaluate=[default],
    )
    return search, {}, settings.num_trials


def _wait_released(timeout: float = 30.0) -> bool:
    """True once every CPU of the cluster is free again (trial placement groups and client actors gone)."""
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = ray.cluster_resources().get("CPU", 0.0)
        free = ray.available_resources().get("CPU", 0.0)
        if math.isclose(total, free):
            return True
        time.sleep(0.5)
    return False


def _leaderboard(rows: dict[str, dict[str, Any]], mode: str, default: dict[str, Any]) -> list[dict[str, Any]]:
    order = {"completed": 0, "budget": 1, "running": 1, "error": 2}
    sign = -1.0 if mode == "max" else 1.0
    board = []
    for row in rows.values():
        params = dict(row["params"].get("point", row["params"]))
        board.append(
            {
                "trial": row["trial"],
                "params": params,
                "is_default": params == default,
                "score": row.get("score"),
                "metrics": row.get("metrics", {}),
                "status": row["status"],
                "error": row["error"],
                "sim_run_id": row.get("sim_run_id", ""),
                "seconds": round(row.get("ended", time.time()) - row["started"], 1),
                "started": row["started"],
            }
        )
    board.sort(
        key=lambda r: (order.get(r["status"], 3), sign * r["score"] if r["score"] is not None else 0.0, r["started"])
    )
    for i, row in enumerate(board, 1):
        row["rank"] = i
    return board


def _write(rd: workspace.RunDir, board: list[dict[str, Any]]) -> None:
    from uaap.automl.results import write_leaderboard

    cols = ("rank", "trial", "score", "status", "is_default", "seconds", "sim_run_id", "params", "error")
    write_leaderboard(rd, board, cols, events=False)  # each trial is a simulation run of its own (sim_run_id)


def leaderboard_table(result: TuneFederatedResult) -> Any:
    """A rich table of the federated trials, the default configuration marked."""
    from rich.table import Table

    table = Table(title=f"federated search {result.run_dir.run_id} (final central {result.metric})")
    for col in ("rank", result.metric, "status", "seconds", "parameters", "simulation run"):
        table.add_column(col)
    for row in result.leaderboard:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
        label = "default" if row["is_default"] else row["status"]
        if row["status"] == "error":
            label = f"error: {row['error'][:60]}"
        score = "-" if row["score"] is None else f"{row['score']:.4f}"
        table.add_row(str(row["rank"]), score, label, f"{row['seconds']:.0f}", params, row["sim_run_id"])
    if result.default is not None:
        table.caption = (
            f"best {result.best['score']:.4f} vs default {result.default['score']:.4f}; "
            f"{len(result.leaderboard)} trials in {result.search_seconds:.0f} s; "
            f"Ray CPUs free afterwards: {result.resources_released}"
        )
    return table
