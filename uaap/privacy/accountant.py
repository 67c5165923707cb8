"""A thin layer over Opacus' accountants: chosen by name, state as plain data, offline queries.

A history is a list of ``(sigma, q, steps)``: ``steps`` releases of the Poisson-subsampled Gaussian
mechanism with noise multiplier ``sigma`` and sampling probability ``q``. The same history describes a
client's DP-SGD (one entry per optimizer step setting) and the server's central DP (one step per
round), so one accountant class serves both levels. ``rdp`` (default) is Opacus' RDP accountant
(Mironov et al.); ``prv`` is its PRV accountant (Gopi et al.), tighter but ~1-3 s per query, so
queries are cached by history.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

from uaap.errors import ConfigError

MECHANISMS = ("rdp", "prv")
Step = tuple[float, float, int]


def _check_mechanism(mechanism: str) -> str:
    if mechanism not in MECHANISMS:
        raise ConfigError(f"dp-accountant={mechanism!r} is not supported; choose one of: {', '.join(MECHANISMS)}")
    return mechanism


def normalise(history: Iterable[Sequence[Any]]) -> tuple[Step, ...]:
    """Validated ``(sigma, q, steps)`` tuples, with consecutive equal settings merged."""
    out: list[Step] = []
    for entry in history:
        if len(entry) != 3:
            raise ConfigError(f"accountant history entry {entry!r} is not (sigma, q, steps)")
        sigma, q, steps = float(entry[0]), float(entry[1]), int(entry[2])
        if sigma < 0 or not 0.0 < q <= 1.0 or steps < 0:
            raise ConfigError(
                f"accountant history entry (sigma={sigma}, q={q}, steps={steps}) is invalid; "
                "need sigma >= 0, 0 < q <= 1 and steps >= 0"
            )
        if steps == 0:
            continue
        if out and out[-1][0] == sigma and out[-1][1] == q:
            out[-1] = (sigma, q, out[-1][2] + steps)
        else:
            out.append((sigma, q, steps))
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _epsilon(history: tuple[Step, ...], delta: float, mechanism: str) -> float:
    from opacus.accountants import create_accountant

    if not history:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in history):
        return math.inf  # no noise: no finite guarantee
    acc = create_accountant(mechanism=mechanism)
    acc.history = list(history)
    if mechanism == "prv":
        import warnings

        with warnings.catch_warnings():  # Opacus' PRV grid takes log(0) at the domain edge, harmlessly
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(acc.get_epsilon(delta=delta))
    return float(acc.get_epsilon(delta=delta))


def epsilon_of(history: Iterable[Sequence[Any]], delta: float, mechanism: str = "rdp") -> float:
    """Epsilon spent by ``history`` at ``delta`` (0 for an empty history, inf without noise)."""
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"dp-delta={delta!r} is outside (0, 1); pick e.g. 1e-5 (below 1/number of records)")
    return _epsilon(normalise(history), float(delta), _check_mechanism(mechanism))


def noise_multiplier(target_epsilon: float, delta: float, q: float, steps: int, mechanism: str = "rdp") -> float:
    """The smallest noise multiplier (Opacus' search, 0.01 tolerance) reaching ``target_epsilon`` after ``steps``."""
    from opacus.accountants.utils import get_noise_multiplier

    if target_epsilon <= 0:
        raise ConfigError(f"dp-target-epsilon={target_epsilon!r} must be > 0")
    if steps < 1:
        raise ConfigError(f"planned steps={steps} must be >= 1 to calibrate DP-SGD noise")
    import warnings

    try:
        with warnings.catch_warnings():  # the search visits huge sigmas whose optimal RDP order is the largest
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=q,
                    steps=steps,
                    accountant=_check_mechanism(mechanism),
                )
            )
    except ValueError as exc:
        raise ConfigError(
            f"dp-target-epsilon={target_epsilon} cannot be reached with q={q:.4g} over {steps} steps at "
            f"delta={delta:g} (noise multiplier would exceed 1e6); raise the target epsilon or train fewer steps"
        ) from exc


class Accountant:
    """One privacy subject's accountant (a client's examples, or the run's users); state is plain data."""

    def __init__(self, mechanism: str = "rdp", history: Iterable[Sequence[Any]] = ()) -> None:
        self.mechanism = _check_mechanism(mechanism)
        self.history: list[Step] = list(normalise(history))

    def step(self, sigma: float, q: float, steps: int = 1) -> None:
        """Record ``steps`` more releases with noise ``sigma`` and sampling probability ``q``."""
        self.history = list(normalise([*self.history, (sigma, q, steps)]))

    @property
    def steps(self) -> int:
        """Total releases recorded."""
        return sum(n for _, _, n in self.history)

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta``."""
        return epsilon_of(self.history, delta, self.mechanism)

    def epsilon_after(self, delta: float, sigma: float, q: float, steps: int = 1) -> float:
        """Epsilon if ``steps`` more releases ``(sigma, q)`` happened (the accountant is not changed)."""
        return epsilon_of([*self.history, (sigma, q, steps)], delta, self.mechanism)

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state (same keys as Opacus' ``IAccountant.state_dict``)."""
        return {"mechanism": self.mechanism, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the mechanism must match."""
        if state.get("mechanism", self.mechanism) != self.mechanism:
            raise ConfigError(
                f"accountant state was written by mechanism {state.get('mechanism')!r}, this run uses "
                f"dp-accountant={self.mechanism!r}; resume with the run's original dp-accountant"
            )
        self.history = list(normalise(state.get("history", [])))

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Accountant:
        """A new accountant from :meth:`state_dict` output."""
        return cls(state.get("mechanism", "rdp"), state.get("history", []))
