"""``uaap simulate``, ``uaap tune-federated`` and ``uaap demo``: the commands that need simulations/.

They register with the library's ``uaap`` CLI through the ``uaap.commands`` entry-point group (see
``pyproject.toml`` and :mod:`uaap.cli`), so ``uaap`` never imports this floor. Heavy imports (Ray, Flower,
rich) happen inside the command functions: ``uaap --help`` only reads the flags.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from uaap.commands.common import add_config_flags, config_from_args
from uaap.config import RunConfig
from uaap.metrics import SEARCHABLE

if TYPE_CHECKING:
    from rich.console import Console

    from uaap.workspace import RunDir


# ---- simulate -------------------------------------------------------------------------------------


def register_simulate(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``simulate`` command."""
    p = sub.add_parser("simulate", help="run a federated simulation of N clients on Ray")
    add_config_flags(p, command="simulate")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a run from its last checkpoint")
    p.add_argument("--ray-address", default=None, help="attach to an existing Ray cluster (or set RAY_ADDRESS)")
    p.add_argument("--client-cpus", type=float, default=1.0, help="CPUs reserved per simulated client (default 1)")
    p.add_argument("--client-gpus", type=float, default=0.0, help="GPUs reserved per simulated client (default 0)")
    p.add_argument(
        "--register",
        default=None,
        metavar="NAME[@ALIAS]",
        help="register the finished run's model in MLflow's model registry (`uaap serve` serves it); a run under "
        "secure aggregation keeps no plaintext model: decrypt it and `uaap register` it instead",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="show Flower's, Ray's and MLflow's own logs and notices"
    )
    p.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    """Validate, simulate, then print the round table and write the accuracy plot."""
    from rich.console import Console

    from uaap import quiet, workspace
    from uaap.errors import WorkspaceError

    quiet.VERBOSE = args.verbose
    console = Console()
    if args.register:  # a bad name fails before the simulation, not after
        from uaap.model_registry import register_spec

        register_spec(args.register)
    if args.resume:
        rd = workspace.existing_run(args.resume)
        cfg = config_from_args(args, base=rd.read_config())
        done = rd.latest_checkpoint()
        console.print(f"resuming [bold]{rd.run_id}[/] after round {done.round if done else 0}")
    else:
        cfg = config_from_args(args)
        if cfg.run_id and cfg.run_id in workspace.list_runs():
            raise WorkspaceError(f"run {cfg.run_id!r} already exists; continue it with --resume {cfg.run_id}")
    rd = simulate_with_progress(
        cfg,
        console,
        ray_address=args.ray_address,
        client_cpus=args.client_cpus,
        client_gpus=args.client_gpus,
        verbose=args.verbose,
    )
    print_results(rd, console)
    if args.register:
        from uaap.model_registry import register_run, register_spec

        name, alias = register_spec(args.register)
        registered = register_run(rd.run_id, name, alias=alias)
        at = f", alias @{registered.alias}" if registered.alias else ""
        console.print(f"registered {registered.name} version {registered.version} (runtime {registered.runtime}{at})")
    return 0


def simulate_with_progress(
    cfg: RunConfig,
    console: Console,
    *,
    ray_address: str | None = None,
    client_cpus: float = 1.0,
    client_gpus: float = 0.0,
    verbose: bool = False,
) -> RunDir:
    """Run :func:`simulations.runner.simulate` behind a rich progress bar."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from simulations.runner import ClientResources, simulate

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(
            f"{cfg.num_clients} clients, {cfg.strategy}", total=cfg.num_rounds, status="starting Ray"
        )

        def on_event(event: dict[str, Any]) -> None:
            if event["kind"] == "start":
                progress.update(task, completed=event["round"] - 1, status="round 1 (actors warming up)")
            elif event["kind"] == "round" and event["round"] > 0:
                acc = event.get("central", {}).get("accuracy", event.get("evaluate", {}).get("accuracy"))
                eps = event.get("privacy", {}).get("epsilon")
                status = f"accuracy {acc:.3f}" if acc is not None else ""
                status += f"  epsilon {eps:.2f}" if eps is not None else ""
                progress.update(task, completed=event["round"], status=status)
            elif event["kind"] == "end":
                progress.update(task, status=event["status"] + (f": {event['reason']}" if event.get("reason") else ""))

        return simulate(
            cfg,
            ray_address=ray_address,
            resources=ClientResources(client_cpus, client_gpus),
            on_event=on_event,
            verbose=verbose,
        )


def print_results(rd: RunDir, console: Console, central_accuracy: float | None = None) -> None:
    """Round table, plot path and where everything lives."""
    from uaap.report import accuracy_plot, summary_table

    console.print(summary_table(rd, central_accuracy))
    end = rd.events("end")[-1]
    if end.get("reason"):
        console.print(f"[yellow]stopped early:[/] {end['reason']}")
    plot = accuracy_plot(rd, central_accuracy=central_accuracy)
    console.print(f"plot: {plot}\nrun folder: {rd.path}")


# ---- tune-federated -------------------------------------------------------------------------------


def register_tune_federated(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``tune-federated`` command."""
    p = sub.add_parser(
        "tune-federated", help="search federated hyperparameters; each trial is a Flower simulation on Ray"
    )
    add_config_flags(p, command="tune-federated")
    p.add_argument("--trials", type=int, default=8, help="number of simulations (default 8)")
    p.add_argument("--time-budget", type=float, default=1800.0, help="seconds for the whole search (default 1800)")
    p.add_argument(
        "--search",
        choices=("tpe", "random", "grid"),
        default="tpe",
        help="tpe (Optuna, Bayesian), random or grid (default tpe)",
    )
    p.add_argument(
        "--tune",
        default="",
        help="comma-separated parameters to search (default: learning-rate, local-epochs, proximal-mu, "
        "clients-per-round, plus the clip norm when DP is on)",
    )
    p.add_argument(
        "--metric",
        choices=SEARCHABLE,
        default=None,
        help="final central test metric to optimise (default: accuracy, or r2 for a regression)",
    )
    p.add_argument("--client-cpus", type=float, default=1.0, help="CPUs per simulated client (default 1)")
    p.add_argument("--ray-address", default=None, help="attach to an existing Ray cluster (or set RAY_ADDRESS)")
    p.set_defaults(func=run_tune_federated)


def run_tune_federated(args: argparse.Namespace) -> int:
    """Run the federated search and print its leaderboard (default configuration included)."""
    from rich.console import Console

    from simulations.tuning import TuneFederatedSettings, leaderboard_table, tune_federated
    from uaap.data import describe

    # Leaderboards are wide: do not fold them to 80 columns when the output is a file or a pipe.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    base = config_from_args(args)
    settings = TuneFederatedSettings(
        num_trials=args.trials,
        time_budget_s=args.time_budget,
        search=args.search,
        params=tuple(p for p in args.tune.split(",") if p.strip()) if args.tune else (),
        metric=args.metric or ("r2" if describe(base).regression else "accuracy"),
        client_cpus=args.client_cpus,
    )

    def on_trial(row: dict[str, Any]) -> None:
        value = row.get("score")
        shown = "-" if value is None else f"{value:.4f}"
        console.print(f"  trial {row['trial']:<12} {row['status']:<9} {settings.metric} {shown} {row.get('error', '')}")

    result = tune_federated(
        base,
        settings,
        ray_address=args.ray_address,
        on_trial=on_trial,
        on_stage=lambda s: console.print(f"[bold]{s}"),
    )
    console.print(leaderboard_table(result))
    console.print(f"leaderboard: {result.run_dir.path / 'leaderboard.csv'}")
    return 0


# ---- demo -----------------------------------------------------------------------------------------
# The main job on embedded defaults, end to end: ten simulated clients on Ray over a non-IID split of
# ``digits`` (Dirichlet alpha=0.5), FedProx, 10 rounds, CKKS secure aggregation, tracked in MLflow; then
# client-level DP where it means something, a cross-device population of 1000 small clients, against its
# non-private twin; then central training of the first federation's model on the pooled data as its baseline.

SECURE = RunConfig(
    dataset="digits",
    model="mlp",
    strategy="fedprox",
    proximal_mu=0.01,
    num_rounds=10,
    num_clients=10,
    partition="dirichlet",
    dirichlet_alpha=0.5,
    secure_aggregation="ckks",
    experiment="uaap-demo",
)
# Client-level DP needs many clients: the noise on the average is sigma*C/(q*N) per coordinate, so 10 clients
# cannot buy a meaningful user-level epsilon (the old 10-client run printed 13,862). A cross-device population
# can: 1000 clients of FedProx's synthetic data with one shared labelling model and per-client feature shift
# (beta=1), 20 to 60 examples each; Poisson sampling q=0.1 (about 100 clients a round), noise multiplier 1,
# 30 rounds, delta 1e-4 (1/(10 N)): user-level epsilon 4.05 (Opacus RDP). Logistic regression: 610 weights,
# so the noise's norm (sqrt(610) * sigma*C/(qN) = 0.25 C) stays below the clipped mean's. What limits accuracy
# here is FedAvg's progress in 30 rounds on clients that each see one or two labels, more than the noise:
# measured 0.571 against the twin's 0.657 (a NumPy replay: 0.62 vs 0.67 at 100 rounds, epsilon 6.8).
CROSS_DEVICE = RunConfig(
    dataset="synthetic",
    synthetic_size=40,
    synthetic_shared_model=True,
    synthetic_beta=1.0,
    num_clients=1000,
    model="logreg",
    strategy="fedavg",
    num_rounds=30,
    local_epochs=5,
    learning_rate=0.5,
    momentum=0.0,
    fraction_train=0.1,
    fraction_evaluate=0.0,  # the server tests the global model on the clients' pooled held-out rows
    dp_central=True,
    dp_noise_multiplier=1.0,
    dp_central_clip_norm=2.0,
    dp_delta=1e-4,
    experiment="uaap-demo",
)


def register_demo(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``demo`` command."""
    p = sub.add_parser(
        "demo", help="run the main job on embedded defaults (secure federation, cross-device DP, baseline)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"rounds of every federation (default {SECURE.num_rounds} secure, {CROSS_DEVICE.num_rounds} cross-device)",
    )
    p.add_argument("--central-epochs", type=int, default=30, help="epochs of the central baseline (default 30)")
    p.add_argument("--no-dp", action="store_true", help="skip the cross-device runs with client-level DP")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Secure federation, cross-device client-level DP vs its twin, central baseline; tables, plots, budget."""
    from rich.console import Console

    from uaap.centralized import train_central
    from uaap.report import comparison_table
    from uaap.tracking import tracking_uri

    console = Console()
    secure = SECURE.replace(num_rounds=args.rounds or SECURE.num_rounds)
    console.rule("[bold]1/3 federated simulation on Ray with CKKS secure aggregation")
    console.print(
        f"{secure.num_clients} clients, {secure.dataset} split Dirichlet(alpha={secure.dirichlet_alpha}), "
        f"{secure.strategy} (mu={secure.proximal_mu}), {secure.num_rounds} rounds, model {secure.model}; "
        "the server only ever adds ciphertexts"
    )
    rd = simulate_with_progress(secure, console)
    cross: list[tuple[str, RunDir]] = []
    if not args.no_dp:
        private = CROSS_DEVICE.replace(num_rounds=args.rounds or CROSS_DEVICE.num_rounds)
        console.rule("[bold]2/3 cross-device: 1000 clients, client-level DP vs non-private twin")
        console.print(
            f"{private.num_clients} clients of synthetic data ({private.synthetic_size // 2} to "
            f"{private.synthetic_size * 3 // 2} examples each), Poisson sampling q={private.fraction_train}, "
            f"noise multiplier {private.dp_noise_multiplier}, clip {private.dp_central_clip_norm}, "
            f"{private.num_rounds} rounds, model {private.model}, delta {private.dp_delta:g}"
        )
        cross.append(("client-level DP", simulate_with_progress(private, console)))
        cross.append(("non-private twin", simulate_with_progress(private.replace(dp_central=False), console)))
    console.rule("[bold]3/3 central baseline: same model, pooled data, same test set")
    central = train_central(secure.replace(secure_aggregation="none", run_id=""), epochs=args.central_epochs)
    central_acc = central.metrics["accuracy"]

    console.print("\n[bold]federated, secure aggregation")
    print_results(rd, console, central_accuracy=central_acc)
    final = rd.events("round")[-1]
    rows: list[tuple[str, str, float, float | None, float | None, float | None]] = [
        (
            "federated, secure aggregation",
            rd.run_id,
            _key_holder_accuracy(rd),
            final.get("evaluate", {}).get("accuracy"),
            None,
            None,
        ),
        ("central training (no federation)", central.run_dir.run_id, central_acc, None, None, None),
    ]
    for label, run in cross:
        console.print(f"\n[bold]cross-device, {label}")
        print_results(run, console)
        if run.read_config().dp_central:
            from uaap.privacy.report import budget_table

            console.print(budget_table(run.run_id))
    console.print(comparison_table(rows))
    if cross:
        console.print(cross_device_table(cross))
    console.print(f"MLflow: {tracking_uri()} (experiment {secure.experiment}); privacy dashboard: `uaap dashboard`")
    return 0


def cross_device_table(runs: list[tuple[str, RunDir]]) -> Any:
    """The DP scenario against its twin: final test accuracy (server, pooled held-out rows) and, from the
    privacy ledger, the user-level epsilon at its delta."""
    from uaap.privacy.ledger import Ledger
    from uaap.report import fmt, fmt_epsilon, narrow_table

    table = narrow_table(
        "cross-device, 1000 clients: client-level DP vs its non-private twin",
        ["run", "rounds", "test\nacc.", "user\nepsilon", "delta"],
        "test: the final global model on the clients' pooled held-out rows; epsilon: from the privacy ledger",
        first="left",
    )
    ledger = Ledger()
    for label, run in runs:
        final = run.events("round")[-1]
        users = ledger.releases(run.run_id, level="user")
        table.add_row(
            f"{label}\n[dim]{run.run_id}[/]",
            str(final["round"]),
            fmt(final.get("central", {}).get("accuracy")),
            fmt_epsilon(users[-1].epsilon if users else None),
            f"{users[-1].delta:g}" if users else "-",
            end_section=True,
        )
    return table


def _key_holder_accuracy(rd: RunDir) -> float:
    """Decrypt the final model as a data owner would (`uaap keys decrypt-model`) and test it centrally."""
    from uaap import workspace
    from uaap.commands.keys import decrypt_model
    from uaap.data import load_split
    from uaap.training import evaluate

    cfg = rd.read_config()
    model, _ = workspace.load_model(decrypt_model(rd.run_id, cfg.he_secret_context))
    return evaluate(model, load_split(cfg).test)["accuracy"]
