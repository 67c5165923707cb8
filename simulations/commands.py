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
# ``digits`` (Dirichlet alpha=0.5), FedProx, 10 rounds, CKKS secure aggregation, tracked in MLflow; then the
# same federation with both DP levels and a privacy budget; then central training of the same model on the
# pooled data as the baseline.

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
# Both DP levels on top. Measured here (10 clients, 10 rounds, HE on): DP-SGD alone at example-level
# epsilon 8 reaches ~0.74; any client-level noise that buys a meaningful user-level epsilon drowns a
# 9k-parameter update averaged over 10 clients (noise sigma*C/m per coordinate), and clipping DP-SGD's
# noisy updates slows learning further. So the demo runs client-level DP with a tiny noise multiplier and
# a clip that rarely binds, momentum 0.5 to keep DP-SGD's noise in check, and prints the epsilons as they
# are: a user-level guarantee needs hundreds of clients (see README, "Differential privacy").
PRIVATE = SECURE.replace(
    momentum=0.5,
    dp_local=True,
    dp_target_epsilon=8.0,
    dp_delta=1e-5,
    dp_clip_norm=1.0,
    dp_central=True,
    dp_noise_multiplier=0.02,
    dp_central_clip_norm=10.0,
)


def register_demo(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the ``demo`` command."""
    p = sub.add_parser("demo", help="run the main job on embedded defaults (secure + private federation, baseline)")
    p.add_argument("--rounds", type=int, default=SECURE.num_rounds, help="federated rounds (default 10)")
    p.add_argument("--central-epochs", type=int, default=30, help="epochs of the central baseline (default 30)")
    p.add_argument("--no-dp", action="store_true", help="skip the run with differential privacy")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Secure federation, private federation, central baseline; tables, plots and the privacy budget."""
    from rich.console import Console

    from uaap.centralized import train_central
    from uaap.report import comparison_table
    from uaap.tracking import tracking_uri

    console = Console()
    secure = SECURE.replace(num_rounds=args.rounds)
    console.rule("[bold]1/3 federated simulation on Ray with CKKS secure aggregation")
    console.print(
        f"{secure.num_clients} clients, {secure.dataset} split Dirichlet(alpha={secure.dirichlet_alpha}), "
        f"{secure.strategy} (mu={secure.proximal_mu}), {secure.num_rounds} rounds, model {secure.model}; "
        "the server only ever adds ciphertexts"
    )
    runs = [("federated, secure aggregation", simulate_with_progress(secure, console))]
    if not args.no_dp:
        private = PRIVATE.replace(num_rounds=args.rounds)
        console.rule("[bold]2/3 the same federation with DP-SGD on clients and client-level central DP")
        console.print(
            f"example level: target epsilon {private.dp_target_epsilon} at delta {private.dp_delta}; "
            f"client level: noise multiplier {private.dp_noise_multiplier}, clip {private.dp_central_clip_norm} "
            "(10 clients cannot buy a meaningful user-level epsilon: the ledger shows what was spent)"
        )
        runs.append(("federated, secure aggregation + DP", simulate_with_progress(private, console)))
    console.rule("[bold]3/3 central baseline: same model, pooled data, same test set")
    central = train_central(secure.replace(secure_aggregation="none", run_id=""), epochs=args.central_epochs)
    central_acc = central.metrics["accuracy"]

    rows: list[tuple[str, str, float, float | None, float | None, float | None]] = []
    for label, rd in runs:
        console.print(f"\n[bold]{label}")
        print_results(rd, console, central_accuracy=central_acc)
        final = rd.events("round")[-1]
        privacy = final.get("privacy", {})
        rows.append(
            (
                label,
                rd.run_id,
                _key_holder_accuracy(rd),
                final.get("evaluate", {}).get("accuracy"),
                privacy.get("user_epsilon"),
                privacy.get("example_epsilon_max"),
            )
        )
        if privacy:
            from uaap.privacy.report import budget_table

            console.print(budget_table(rd.run_id))
    rows.append(("central training (no federation)", central.run_dir.run_id, central_acc, None, None, None))
    console.print(comparison_table(rows))
    console.print(f"MLflow: {tracking_uri()} (experiment {secure.experiment}); privacy dashboard: `uaap dashboard`")
    return 0


def _key_holder_accuracy(rd: RunDir) -> float:
    """Decrypt the final model as a data owner would (`uaap keys decrypt-model`) and test it centrally."""
    from uaap import workspace
    from uaap.commands.keys import decrypt_model
    from uaap.data import load_split
    from uaap.training import evaluate

    cfg = rd.read_config()
    model, _ = workspace.load_model(decrypt_model(rd.run_id, cfg.he_secret_context))
    return evaluate(model, load_split(cfg).test)["accuracy"]
