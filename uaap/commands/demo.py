"""``uaap demo``: the main job on embedded defaults, end to end.

A 10-client federated simulation on Ray (digits, Dirichlet alpha=0.5, FedProx, 10 rounds) tracked
in MLflow, then central training of the same model on the pooled data as the baseline, a round
table, and an accuracy plot.
"""

from __future__ import annotations

import argparse

from uaap.config import RunConfig

DEMO = RunConfig(
    dataset="digits",
    model="mlp",
    strategy="fedprox",
    proximal_mu=0.01,
    num_rounds=10,
    num_clients=10,
    partition="dirichlet",
    dirichlet_alpha=0.5,
    experiment="uaap-demo",
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``demo`` command."""
    p = sub.add_parser("demo", help="run the main job on embedded defaults (federated + central baseline)")
    p.add_argument("--rounds", type=int, default=DEMO.num_rounds, help="federated rounds (default 10)")
    p.add_argument("--central-epochs", type=int, default=30, help="epochs of the central baseline (default 30)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Federated simulation, central baseline, table, plot."""
    from rich.console import Console

    from uaap.centralized import train_central
    from uaap.commands.simulate import print_results, simulate_with_progress
    from uaap.tracking import tracking_uri

    console = Console()
    cfg = DEMO.replace(num_rounds=args.rounds)
    console.rule("[bold]UAAP demo: federated simulation on Ray")
    console.print(
        f"{cfg.num_clients} clients, {cfg.dataset} split Dirichlet(alpha={cfg.dirichlet_alpha}), {cfg.strategy} "
        f"(mu={cfg.proximal_mu}), {cfg.num_rounds} rounds, model {cfg.model}"
    )
    rd = simulate_with_progress(cfg, console)
    console.rule("[bold]central baseline: same model, pooled data, same test set")
    central = train_central(cfg.replace(run_id=""), epochs=args.central_epochs)
    print_results(rd, console, central_accuracy=central.metrics["accuracy"])
    final = rd.events("round")[-1]
    fed_acc = final.get("central", {}).get("accuracy", final.get("evaluate", {}).get("accuracy", float("nan")))
    console.print(
        f"[bold]federated accuracy {fed_acc:.4f}[/] vs central {central.metrics['accuracy']:.4f} "
        f"(gap {central.metrics['accuracy'] - fed_acc:+.4f})\nMLflow: {tracking_uri()} "
        f"(experiment {cfg.experiment}; `mlflow ui --backend-store-uri {tracking_uri()}`)"
    )
    return 0
