"""``uaap train``: central training with the clients' own training code (in-process or Ray Train)."""

from __future__ import annotations

import argparse

from uaap.commands.common import add_config_flags, config_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``train`` command."""
    p = sub.add_parser("train", help="train the same model centrally (baseline for federated runs)")
    add_config_flags(p, command="train")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    p.add_argument("--workers", type=int, default=0, help="data-parallel Ray Train workers (0 = in-process)")
    p.add_argument("--ray-address", default=None, help="attach to an existing Ray cluster (or set RAY_ADDRESS)")
    p.add_argument(
        "--register",
        default=None,
        metavar="NAME[@ALIAS]",
        help="register the finished run's model in MLflow's model registry (what `uaap register RUN --name NAME "
        "--alias ALIAS` does; `uaap serve` serves it)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, print per-epoch progress and the final test metrics."""
    from rich.console import Console
    from rich.progress import Progress

    from uaap.centralized import train_central

    console = Console()
    cfg = config_from_args(args)
    if args.register:  # a bad name fails before training, not after
        from uaap.model_registry import register_spec

        register_spec(args.register)
    with Progress(console=console) as progress:
        task = progress.add_task(f"central {cfg.model} on {cfg.dataset}", total=args.epochs)
        result = train_central(
            cfg,
            epochs=args.epochs,
            workers=args.workers,
            ray_address=args.ray_address,
            on_epoch=lambda epoch, m: progress.update(task, completed=epoch),
        )
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    rd = result.run_dir
    estimator_file = rd.path / "model.skops"  # the estimator families (uaap.workspace.ESTIMATOR_FILE)
    console.print(f"test: {metrics}\nmodel: {estimator_file if estimator_file.is_file() else rd.model_file}")
    if args.register:
        from uaap.model_registry import register_run, register_spec

        name, alias = register_spec(args.register)
        done = register_run(rd.run_id, name, alias=alias)
        at = f", alias @{done.alias}" if done.alias else ""
        console.print(f"registered {done.name} version {done.version} (runtime {done.runtime}{at})")
    return 0
