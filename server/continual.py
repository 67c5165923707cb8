"""Continual training: a new run (phase) that starts from a finished run's final model on new data.

``continue-from=RUN`` (``uaap simulate --continue-from RUN``, ``flower-server --continue-from RUN``) makes the round
loop start from RUN's last checkpoint instead of a seeded model, with RUN's preprocessing plan (the model reads the
features it was trained on) and RUN's privacy accountants: the new run's ledger rows go on from the parent's
totals, so epsilon accumulates across phases. The lineage lands in MLflow (the ``continue-from`` param, the
``uaap.parent_*`` tags) and in ``metrics.jsonl`` (a ``continue`` event).

Only what can go on is accepted, checked before Ray or Flower start (:func:`load_parent`): a parent that ended
(completed or stopped by its budget), whose family federates by weights, in the clear (a run under CKKS keeps only
ciphertext), with the same model, task, data kind, target and preprocessing, and the same accountant for every DP
level it used (which the new run must keep on). Array names and shapes are compared when the new data's shapes are
known (:meth:`Parent.start`).

Example-level accountants are keyed by the client's authenticated node id. A deployment keeps node ids across runs
(a digest of each SuperNode's key: server/superlink.py), so a returning client goes on from its own history; a
client the parent never saw (every client of a new simulation, whose node ids are drawn afresh) is charged, after
each round, the parent client history that makes its epsilon largest: an upper bound of its own accountant's, equal
to it when the parent's clients spent alike.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from uaap import workspace
from uaap.config import RunConfig, settings
from uaap.errors import ConfigError

if TYPE_CHECKING:
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import Strategy

log = logging.getLogger("uaap.server")

# settings the parent and the new phase must share: what the model is and what it reads
SAME = ("model", "task", "target", "hidden_sizes", "n_clusters", "n_components")
ENDED = ("completed", "stopped")


@dataclass(frozen=True)
class Parent:
    """A finished run a new phase starts from: its config, final arrays and checkpointed state."""

    run_id: str
    cfg: RunConfig
    round: int
    arrays: dict[str, np.ndarray]
    state: dict[str, Any]
    plan: str  # the parent's preprocessing plan (JSON path), "" without one

    def privacy(self) -> dict[str, Any]:
        """The parent's accountants as :class:`strategies.dp_accounting.PrivacyAccounting` checkpoints them."""
        part = self.state.get("privacy", self.state.get("strategy"))
        return dict(part) if isinstance(part, dict) else {}

    def totals(self, delta: float) -> dict[str, float]:
        """The parent's privacy totals at ``delta``: user-level epsilon, largest example-level epsilon, rounds."""
        from uaap.privacy.accountant import Accountant

        state = self.privacy()
        out: dict[str, float] = {"rounds": float(self.round)}
        user = Accountant.from_state(state["user"]) if state.get("user") else None
        if user is not None and user.history:
            out["user_epsilon"] = user.epsilon(delta)
        clients = [Accountant.from_state(s) for s in state.get("clients", {}).values()]
        if clients:
            out["example_epsilon_max"] = max(a.epsilon(delta) for a in clients)
        return out

    def seed_run_folder(self, rd: workspace.RunDir) -> None:
        """Give the new run the parent's preprocessing plan (the round loop then loads it instead of fitting)."""
        from pathlib import Path

        from server.preprocess import plan_file

        target = Path(plan_file(rd))
        if self.plan and not target.exists():  # a resumed phase keeps the copy it made
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.plan, target)

    def start(self, cfg: RunConfig, initial: ArrayRecord, strategy: Strategy, rd: workspace.RunDir) -> ArrayRecord:
        """Round 1's global model (the parent's final one) after checking it against ``initial``'s names and
        shapes; the strategy's privacy layer inherits the parent's accountants. Logs the ``continue`` event."""
        from flwr.app import Array, ArrayRecord

        from strategies.dp_accounting import PrivacyAccounting
        from strategies.wrapper import layers

        check_shapes(self.run_id, {k: v.numpy() for k, v in initial.items()}, self.arrays)
        privacy = self.privacy()
        inherited = False
        for layer in layers(strategy):
            if isinstance(layer, PrivacyAccounting) and privacy:
                layer.inherit(privacy)
                inherited = True
        if not privacy and (cfg.dp_central or cfg.dp_local):
            text = (f"continue-from={self.run_id}: the parent made no DP release, so its training rows have no DP "
                    "guarantee; this run's ledger accounts only its own releases")  # fmt: skip
            log.warning(text)
            rd.log_event("warning", text=text)
        totals = self.totals(cfg.dp_delta)
        rd.log_event("continue", parent=self.run_id, parent_round=self.round, privacy=inherited, **totals)
        log.info("run %s continues %s from its round %d %s", rd.run_id, self.run_id, self.round, totals)
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in self.arrays.items()})

    def lineage(self, delta: float) -> dict[str, str]:
        """MLflow tags naming the parent and its totals."""
        tags = {"uaap.parent_run": self.run_id}
        tags |= {f"uaap.parent_{k}": f"{v:.6g}" for k, v in self.totals(delta).items()}
        return tags


def check_shapes(parent: str, expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    """Refuse a parent whose arrays are not the new model's (names and shapes), naming the first difference."""
    want = {k: tuple(v.shape) for k, v in expected.items()}
    have = {k: tuple(v.shape) for k, v in got.items()}
    if want == have:
        return
    if list(want) != list(have):
        raise ConfigError(
            f"continue-from={parent}: its model has arrays {list(have)}, this run's model {list(want)}; continue a "
            "run of the same model family"
        )
    name = next(k for k in want if want[k] != have[k])
    raise ConfigError(
        f"continue-from={parent}: its array {name!r} has shape {have[name]}, this run's model needs {want[name]} (the "
        "new data give other features or classes); continue with data of the parent's columns and classes, or "
        "start a fresh run"
    )


def load_parent(cfg: RunConfig) -> Parent | None:
    """The run ``cfg.continue_from`` names, checked against ``cfg``; None when it names none.

    Raises :class:`uaap.errors.ConfigError` (or ``WorkspaceError`` for a run that does not exist) naming what does
    not match and what to do.
    """
    name = cfg.continue_from
    if not name:
        return None
    if name == cfg.run_id:
        raise ConfigError(f"continue-from={name} names this run itself; resume it with --resume {name} instead")
    rd = workspace.existing_run(name)
    parent = rd.read_config()
    ends = rd.events("end")
    status = str(ends[-1].get("status")) if ends else "running or killed"
    if status not in ENDED:
        raise ConfigError(
            f"continue-from={name}: that run is {status}, not finished ({' or '.join(ENDED)}); resume it with "
            f"--resume {name}, or continue from a finished run (`uaap runs`)"
        )
    _check_settings(name, parent, cfg)
    ckpt = rd.latest_checkpoint()
    if ckpt is None:
        raise ConfigError(f"continue-from={name}: that run has no checkpoint to start from; it ran no round")
    from server.preprocess import plan_file

    plan = plan_file(rd)
    from pathlib import Path

    return Parent(name, parent, ckpt.round, ckpt.arrays, ckpt.state, plan if Path(plan).is_file() else "")


def _check_settings(name: str, parent: RunConfig, cfg: RunConfig) -> None:
    from uaap.models import family

    fed = family(parent.model).capabilities.federated
    if fed != "weights":
        raise ConfigError(
            f"continue-from={name}: its model {parent.model!r} federates by {fed or 'nothing'}, not by weights; "
            "continual training starts a network or linear model from its weights (start a fresh run instead)"
        )
    if parent.secure:
        raise ConfigError(
            f"continue-from={name}: that run used secure-aggregation=ckks, so the server holds only ciphertext of "
            "its model; continue from a run in the clear"
        )
    names = [*SAME, *(s.name for s in settings() if s.group == "preprocessing")]
    if (parent.dataset == "csv") != (cfg.dataset == "csv") or (cfg.dataset != "csv" and parent.dataset != cfg.dataset):
        names.insert(0, "dataset")
    differ = [n for n in dict.fromkeys(names) if getattr(parent, n, None) != getattr(cfg, n, None)]
    if differ:
        what = ", ".join(f"{n.replace('_', '-')}={getattr(cfg, n)!r} (parent: {getattr(parent, n)!r})" for n in differ)
        raise ConfigError(
            f"continue-from={name}: this run differs from its parent in {what}; a new phase keeps the parent's "
            "model and preprocessing (only the data and training settings change)"
        )
    levels = [(flag, on) for flag, on in (("dp-central", parent.dp_central), ("dp-local", parent.dp_local)) if on]
    off = [flag for flag, _ in levels if not getattr(cfg, flag.replace("-", "_"))]
    if off:
        raise ConfigError(
            f"continue-from={name}: the parent ran with {', '.join(off)} on; keep it on "
            f"({' '.join('--' + f for f in off)}) so the ledger goes on from its totals"
        )
    if levels and parent.dp_accountant != cfg.dp_accountant:
        raise ConfigError(
            f"continue-from={name}: dp-accountant={cfg.dp_accountant!r}, the parent accounted with "
            f"{parent.dp_accountant!r}; continue with --dp-accountant {parent.dp_accountant}"
        )
