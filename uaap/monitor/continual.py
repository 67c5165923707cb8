"""When drift warrants retraining: the one line ``uaap monitor`` prints after its report.

Drifted input features mean the model now sees rows unlike those it learned from. A federated run of a model that
federates by its weights, in the clear, can go on from its final model on the new rows (continual training,
``uaap simulate --continue-from RUN``, server/continual.py), keeping its preprocessing and its privacy ledger's
totals; the line gives that command with the run's own settings file. Other runs are retrained from scratch.
"""

from __future__ import annotations

import shlex


def retrain_hint(run_id: str, data: str, drifted: list[str]) -> str | None:
    """What to run when input features drifted (None when none did, or the run's folder is not readable)."""
    from uaap import workspace
    from uaap.errors import UaapError
    from uaap.models import family

    features = [f for f in drifted if f != "(prediction)"]
    if not features:
        return None
    try:
        rd = workspace.existing_run(run_id)
        cfg = rd.read_config()
        federated = (rd.path / "checkpoints").is_dir() and any((rd.path / "checkpoints").glob("round-*.npz"))
        weights = family(cfg.model).capabilities.federated == "weights"
    except (UaapError, OSError, ValueError):
        return None
    why = f"{len(features)} feature(s) drifted ({', '.join(features[:3])}{', ...' if len(features) > 3 else ''})"
    if federated and weights and not cfg.secure and cfg.dataset == "csv":
        command = shlex.join(
            ["uaap", "simulate", "--config", str(rd.path / "config.toml"), "--continue-from", run_id, "--data", data]
        )
        return f"{why}: continue training on the new rows with `{command}`"
    return (
        f"{why}: retrain on the new rows (continual training, --continue-from, goes on from a federated run of a "
        "network or linear model on a table, in the clear)"
    )
