"""``uaap demo``: the main job on embedded defaults, end to end.

Ten simulated clients on Ray over a non-IID split of ``digits`` (Dirichlet alpha=0.5), FedProx, 10
rounds, CKKS secure aggregation, tracked in MLflow; then the same federation with both DP levels and
a privacy budget; then central training of the same model on the pooled data as the baseline.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from uaap.config import RunConfig

if TYPE_CHECKING:
    from uaap.workspace import RunDir

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


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``demo`` command."""
    p = sub.add_parser("demo", help="run the main job on embedded defaults (secure + private federation, baseline)")
    p.add_argument("--rounds", type=int, default=SECURE.num_rounds, help="federated rounds (default 10)")
    p.add_argument("--central-epochs", type=int, default=30, help="epochs of the central baseline (default 30)")
    p.add_argument("--no-dp", action="store_true", help="skip the run with differential privacy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Secure federation, private federation, central baseline; tables, plots and the privacy budget."""
    from rich.console import Console
    from rich.table import Table

    from uaap.centralized import train_central
    from uaap.commands.simulate import print_results, simulate_with_progress
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

    summary = Table(title="UAAP demo: the same held-out test set for every model")
    for col in ("run", "run id", "test accuracy", "clients' validation", "privacy"):
        summary.add_column(col)
    for label, rd in runs:
        console.print(f"\n[bold]{label}")
        print_results(rd, console, central_accuracy=central_acc)
        final = rd.events("round")[-1]
        fed_acc = final.get("evaluate", {}).get("accuracy", float("nan"))
        privacy = final.get("privacy", {})
        eps = ", ".join(f"{k} {v:.2f}" for k, v in privacy.items() if "epsilon" in k) or "-"
        summary.add_row(label, rd.run_id, f"{_key_holder_accuracy(rd):.4f}", f"{fed_acc:.4f}", eps)
        if privacy:
            from uaap.privacy.report import budget_table

            console.print(budget_table(rd.run_id))
    summary.add_row("central training (no federation)", central.run_dir.run_id, f"{central_acc:.4f}", "-", "-")
    console.print(summary)
    console.print(f"MLflow: {tracking_uri()} (experiment {secure.experiment}); privacy dashboard: `uaap dashboard`")
    return 0


def _key_holder_accuracy(rd: RunDir) -> float:
    """Decrypt the final model as a data owner would (`uaap keys decrypt-model`) and test it centrally."""
    from uaap import workspace
    from uaap.crypto import decrypt_model
    from uaap.data import load_split
    from uaap.training import evaluate

    cfg = rd.read_config()
    model, _ = workspace.load_model(decrypt_model(rd.run_id, cfg.he_secret_context))
    return evaluate(model, load_split(cfg).test)["accuracy"]
