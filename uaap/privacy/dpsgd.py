"""Example-level DP-SGD for one client (Opacus), with the accountant carried across rounds.

:class:`DPSGD` is the ``privacy`` engine :func:`uaap.training.local_train` takes: its
``make_private(model, optimizer, loader)`` returns Opacus' DP versions (Poisson sampling, per-sample
clipping, Gaussian noise). A fresh Opacus ``PrivacyEngine`` is built every round (ClientApps are
rebuilt per message) but its accountant is loaded with the client's history first, so epsilon keeps
growing across rounds. The noise multiplier is computed once, for the planned steps of the whole run
(``num_rounds * local_epochs * batches``), and stored with the history.

Randomness: Poisson batch sampling and noise come from a generator seeded from the OS (never from the
run's public seed: a server that can replay the noise or the batches voids the guarantee and the
amplification by sampling). Tests pass their own seeded generator to make runs exact.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from uaap.config import RunConfig
from uaap.errors import ConfigError
from uaap.privacy.accountant import Accountant, noise_multiplier

if TYPE_CHECKING:
    import torch
    from flwr.app import RecordDict
    from torch import nn
    from torch.utils.data import DataLoader

    from uaap.training import DPOptimizerLike

STATE_KEY = "uaap-dpsgd"


@dataclass(frozen=True)
class DPSGDPlan:
    """Noise calibrated once for the whole run: ``sigma`` for ``planned_steps`` steps at rate ``q``."""

    sigma: float
    q: float
    steps_per_round: int
    planned_steps: int


def plan(cfg: RunConfig, num_examples: int) -> DPSGDPlan:
    """The DP-SGD plan of a client holding ``num_examples`` training rows.

    Opacus' Poisson loader samples each row with ``q = 1 / batches`` and keeps ``batches`` steps per
    epoch, so the run takes ``num_rounds * local_epochs * batches`` steps if the client is sampled
    every round (the worst case: a client sampled less often spends less).
    """
    if num_examples < 1:
        raise ConfigError("a DP-SGD client needs at least one training example")
    batches = math.ceil(num_examples / cfg.batch_size)
    steps_per_round = cfg.local_epochs * batches
    planned = cfg.num_rounds * steps_per_round
    q = 1.0 / batches
    sigma = noise_multiplier(cfg.dp_target_epsilon, cfg.dp_delta, q, planned, cfg.dp_accountant)
    return DPSGDPlan(sigma=sigma, q=q, steps_per_round=steps_per_round, planned_steps=planned)


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """Replace layers DP-SGD cannot handle (BatchNorm -> GroupNorm) with Opacus' ``ModuleValidator.fix``.

    Apply it where the model is BUILT, identically on server and clients, so both hold the same
    architecture and weight layout. Our registry has no BatchNorm, so this returns those models unchanged.
    """
    from opacus.validators import ModuleValidator

    if ModuleValidator.is_valid(model):
        return model
    return cast("nn.Module", ModuleValidator.fix(model))  # Opacus is untyped


def secret_generator() -> torch.Generator:
    """A torch generator seeded from the OS entropy pool (not reproducible from the run config)."""
    import torch

    return torch.Generator().manual_seed(secrets.randbits(63))


class DPSGD:
    """One client's DP-SGD session for one round; implements ``uaap.training.PrivacyEngineLike``."""

    def __init__(
        self,
        noise_multiplier: float,
        max_grad_norm: float,
        *,
        mechanism: str = "rdp",
        history: list[Any] | tuple[Any, ...] = (),
        generator: torch.Generator | None = None,
        on_step: Callable[[DPSGD], None] | None = None,
        fast: bool = True,
    ) -> None:
        if noise_multiplier < 0 or not max_grad_norm > 0:
            raise ConfigError(
                f"DP-SGD needs noise multiplier >= 0 and clip norm > 0; got {noise_multiplier} and {max_grad_norm}"
            )
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.accountant = Accountant(mechanism, history)
        self.generator = generator
        self.on_step = on_step
        self.fast = fast  # linear stacks through uaap.privacy.fastdp (False: Opacus' hooks for every model)
        self.sample_rate: float | None = None
        self.round_steps = 0
        self._engine: Any = None

    def make_private(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Any]
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader[Any]]:
        """Opacus' DP model, optimizer and Poisson loader, the accountant preloaded with past rounds."""
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator
        from torch.utils.data import DataLoader

        from uaap.privacy import fastdp

        generator = self.generator if self.generator is not None else secret_generator()
        self._engine = PrivacyEngine(accountant=self.accountant.mechanism)
        if self.accountant.history:
            self._engine.accountant.load_state_dict(self.accountant.state_dict())
        if self.fast and fastdp.supports(model):  # linear stacks: clipped sums from ghost norms (uaap.privacy.fastdp)
            stack, fast, loader = fastdp.make_private(
                model, optimizer, loader, noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.max_grad_norm, generator=generator,
            )  # fmt: skip
            fast.attach_step_hook(self._engine.accountant.get_optimizer_hook_fn(sample_rate=1.0 / len(loader)))
            self.sample_rate = 1.0 / len(loader)
            self._chain_hook(cast("DPOptimizerLike", fast))
            return cast("nn.Module", stack), cast("torch.optim.Optimizer", fast), loader
        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            raise ConfigError(
                f"model is not DP-SGD compatible ({problems[0]}); build it through "
                "uaap.privacy.dpsgd.make_dp_compatible on both the server and the clients"
            )
        # Same rows and batch size, but a secret generator: Opacus' Poisson sampler inherits it.
        loader = DataLoader(loader.dataset, batch_size=loader.batch_size, generator=generator)
        model, optimizer, loader = self._engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            poisson_sampling=True,
            noise_generator=generator,
        )
        self.sample_rate = 1.0 / len(loader)
        self._chain_hook(cast("DPOptimizerLike", optimizer))  # Opacus' DPOptimizer (untyped)
        return model, optimizer, loader

    def _chain_hook(self, dp_optimizer: DPOptimizerLike) -> None:
        """After the accountant's step hook, copy its state into ours and count the step."""
        accountant_hook = dp_optimizer.step_hook

        def hook(opt: Any) -> None:
            accountant_hook(opt)
            self.accountant.load_state_dict(self._engine.accountant.state_dict())
            self.round_steps += 1
            if self.on_step is not None:
                self.on_step(self)

        dp_optimizer.attach_step_hook(hook)

    def epsilon(self, delta: float) -> float:
        """Example-level epsilon spent so far (all rounds)."""
        return self.accountant.epsilon(delta)

    def state(self) -> dict[str, Any]:
        """JSON-ready state: noise, clip norm, sample rate and the accountant history."""
        return {
            "version": 1,
            "sigma": self.noise_multiplier,
            "clip": self.max_grad_norm,
            "q": self.sample_rate,
            "round_steps": self.round_steps,
            **self.accountant.state_dict(),
        }


# ---- the client's side: state in context.state (plus a file, so a resumed run continues) ----------


def _state_file(cfg: RunConfig, client_key: str) -> Path | None:
    from uaap import workspace

    if not cfg.run_id:
        return None
    return workspace.home() / "clients" / cfg.run_id / client_key / "dpsgd.json"


def load_state(cfg: RunConfig, store: RecordDict, client_key: str) -> dict[str, Any] | None:
    """The client's DP-SGD state: ``context.state`` first, else the client's file (after a server restart)."""
    state: dict[str, Any]
    if STATE_KEY in store.config_records:
        state = json.loads(str(store.config_records[STATE_KEY]["json"]))
        return state
    path = _state_file(cfg, client_key)
    if path is not None and path.is_file():
        state = json.loads(path.read_text())
        return state
    return None


def parent_history(cfg: RunConfig, client_key: str) -> list[Any]:
    """This client's DP-SGD history in the run ``cfg.continue_from`` names (empty: none, or no DP-SGD there).

    The noise of the new phase is planned afresh for its own steps; its accountant starts from this history, so
    the client's epsilon (and its policy's limit) covers both phases.
    """
    if not cfg.continue_from:
        return []
    path = _state_file(cfg.replace(run_id=cfg.continue_from), client_key)
    if path is None or not path.is_file():
        return []
    state = json.loads(path.read_text())
    if state.get("mechanism") != cfg.dp_accountant:
        raise ConfigError(
            f"this client's DP-SGD history in {cfg.continue_from} was accounted with {state.get('mechanism')!r}, the "
            f"run asks for dp-accountant={cfg.dp_accountant!r}; continue with the parent's accountant"
        )
    return list(state.get("history", []))


def save_state(cfg: RunConfig, store: RecordDict, client_key: str, state: dict[str, Any], *, to_disk: bool) -> None:
    """Keep ``state`` in ``context.state`` (and, once per round, in the client's file)."""
    from flwr.app import ConfigRecord

    text = json.dumps(state, sort_keys=True)
    store[STATE_KEY] = ConfigRecord({"json": text})
    path = _state_file(cfg, client_key)
    if to_disk and path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def client_engine(
    cfg: RunConfig,
    num_examples: int,
    store: RecordDict,
    client_key: str,
    *,
    generator: torch.Generator | None = None,
) -> DPSGD:
    """The DP-SGD engine for this round: the stored noise and history, or a fresh plan on first use."""
    state = load_state(cfg, store, client_key)
    if state is None:  # a continued run (continue-from) goes on from this client's history there
        sigma, history = plan(cfg, num_examples).sigma, parent_history(cfg, client_key)
    elif state.get("mechanism") != cfg.dp_accountant:
        raise ConfigError(
            f"this client's DP-SGD history was accounted with {state.get('mechanism')!r}, the run now asks for "
            f"dp-accountant={cfg.dp_accountant!r}; resume with the original accountant"
        )
    else:  # noise fixed at the first round; the history keeps growing
        sigma, history = float(state["sigma"]), state["history"]
    engine = DPSGD(
        sigma,
        cfg.dp_clip_norm,
        mechanism=cfg.dp_accountant,
        history=history,
        generator=generator,
        on_step=lambda e: save_state(cfg, store, client_key, e.state(), to_disk=False),
    )
    save_state(cfg, store, client_key, engine.state(), to_disk=False)
    return engine


def client_report(cfg: RunConfig, store: RecordDict, client_key: str) -> dict[str, float]:
    """Reply metrics after a DP-SGD round (``dp-sigma``, ``dp-q``, ``dp-steps``, ``dp-epsilon``); persists state."""
    state = load_state(cfg, store, client_key)
    if state is None or state.get("q") is None:
        return {}
    save_state(cfg, store, client_key, state, to_disk=True)
    acc = Accountant.from_state(state)
    return {
        "dp-sigma": float(state["sigma"]),
        "dp-q": float(state["q"]),
        "dp-steps": int(state["round_steps"]),
        "dp-total-steps": acc.steps,
        "dp-epsilon": acc.epsilon(cfg.dp_delta),
    }
