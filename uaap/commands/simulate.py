"""``uaap simulate``: the UAAP Flower app for N clients on Ray, with progress, table and plot."""

from __future__ import annotations

import argparse
from typing import Any

from uaap.commands.common import add_config_flags, config_from_args


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``simulate`` command."""
    p = sub.add_parser("simulate", help="run a federated simulation of N clients on Ray")
    add_config_flags(p)
    p.add_argument("--resume", metavar="RUN_ID", help="continue a run from its last checkpoint")
    p.add_argument("--ray-address", default=None, help="attach to an existing Ray cluster (or set RAY_ADDRESS)")
    p.add_argument("--client-cpus", type=float, default=1.0, help="CPUs reserved per simulated client (default 1)")
    p.add_argument("--client-gpus", type=float, default=0.0, help="GPUs reserved per simulated client (default 0)")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate, simulate, then print the round table and write the accuracy plot."""
    from rich.console import Console

    from uaap import workspace
    from uaap.errors import WorkspaceError

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
    cfg: Any,
    console: Any,
    *,
    ray_address: str | None = None,
    client_cpus: float = 1.0,
    client_gpus: float = 0.0,
    verbose: bool = False,
) -> Any:
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


def print_results(rd: Any, console: Any, central_accuracy: float | None = None) -> None:
    """Round table, plot path and where everything lives."""
    from uaap.report import accuracy_plot, summary_table

    console.print(summary_table(rd, central_accuracy))
    end = rd.events("end")[-1]
    if end.get("reason"):
        console.print(f"[yellow]stopped early:[/] {end['reason']}")
    plot = accuracy_plot(rd, central_accuracy=central_accuracy)
    console.print(f"plot: {plot}\nrun folder: {rd.path}")
