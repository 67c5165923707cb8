"""Privacy accounting as a wrapper: releases become epsilon, ledger rows and the budget stop.

:class:`PrivacyAccounting` sits outermost. Each round it accounts

* the clients' example-level DP-SGD releases, as they report them (``dp-sigma``, ``dp-q``, ``dp-steps``),
  one accountant per client keyed by its authenticated node id, recomputed on the server (a client's own
  ``dp-epsilon`` is not trusted). Only replies that reply validation accepted reach this layer, so a
  rejected reply leaves the ledger unchanged;
* the server's client-level release, when a :class:`strategies.dp_noise.CentralDPNoise` layer is in the
  stack: one Poisson-subsampled Gaussian step with its ``noise_multiplier`` and ``sample_rate``.

Every release lands in the privacy ledger (:mod:`uaap.privacy.ledger`); ``before_round`` stops the run
before a round that would take any epsilon above ``max_epsilon``; the accountants are checkpointed
(:class:`strategies.wrapper.Stateful`) so a resumed run continues the same accountant.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flwr.serverapp.strategy import Strategy

from strategies.dp_noise import CentralDPNoise
from strategies.wrapper import StrategyWrapper, find_layer
from uaap.privacy.accountant import Accountant, normalise
from uaap.privacy.ledger import EXAMPLE, SERVER_CLIENT, USER, Budget, Ledger, Release
from uaap.protocol import (
    DP_EXAMPLE_EPSILON_MAX,
    DP_Q,
    DP_RELEASE,
    DP_SIGMA,
    DP_STEPS,
    DP_TOTAL_STEPS,
    as_float,
    as_int,
)

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Message, MetricRecord

log = logging.getLogger("uaap.privacy")

CENTRAL_MECHANISM = "central-gaussian"
LOCAL_MECHANISM = "dp-sgd"


def client_key(msg: Message) -> str:
    """The ledger's name for the client that sent ``msg``: the node id Flower authenticated, never a claim.

    In a simulation node ids are drawn afresh when the run starts, so a resumed simulation accounts its
    clients under new names. Their epsilon does not restart from zero: each release is accounted with at
    least the steps the client's own (persisted) accountant reports (``dp-total-steps``), so a client can
    make its recorded epsilon larger, never smaller. A deployment keeps its node ids across server restarts
    (each is a digest of the SuperNode's public key: server/superlink.py).
    """
    return f"node-{int(msg.metadata.src_node_id)}"


class PrivacyAccounting(StrategyWrapper):
    """Accountants (user level and per client), the privacy ledger and the budget stop."""

    state_key = "privacy"

    def __init__(
        self,
        strategy: Strategy,
        *,
        run_id: str,
        delta: float,
        accountant: str = "rdp",
        max_epsilon: float = 0.0,
        dp_local: bool = False,
        ledger: Ledger | None = None,
    ) -> None:
        super().__init__(strategy)
        self.noise = find_layer(strategy, CentralDPNoise)
        self.run_id = run_id
        self.delta = delta
        self.mechanism = accountant
        self.max_epsilon = max_epsilon
        self.user = Accountant(accountant)
        self.clients: dict[str, Accountant] = {}
        self.client_round: dict[str, tuple[float, float, int]] = {}  # largest per-round (sigma, q, steps)
        self.ledger_round = 0
        # a continued run (inherit): the parent's client histories, and this run's own steps of each client the
        # parent did not see under its node id (charged the parent history that makes its epsilon largest)
        self.priors: list[list[tuple[float, float, int]]] = []
        self.fresh: dict[str, list[tuple[float, float, int]]] = {}
        self.ledger = ledger if ledger is not None else (Ledger() if run_id else None)
        if self.ledger is not None:
            levels = "+".join(x for x, on in ((USER, self.noise is not None), (EXAMPLE, dp_local)) if on) or "none"
            self.ledger.set_budget(Budget(run_id, max_epsilon, delta, accountant, levels))

    @property
    def central(self) -> bool:
        """Whether the server releases with client-level noise (a CentralDPNoise layer is in the stack)."""
        return self.noise is not None

    def summary(self) -> None:
        """Log the accounting settings and the inner strategy's summary."""
        log.info(
            "privacy accounting: user level=%s accountant=%s delta=%g max-epsilon=%s",
            self.central,
            self.mechanism,
            self.delta,
            self.max_epsilon,
        )
        self.strategy.summary()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate, then account this round's releases (clients' DP-SGD and the server's noise)."""
        replies = list(replies)
        releases = self._local_releases(server_round, replies)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if self.noise is not None:
            sigma, q = self.noise.noise_multiplier, self.noise.sample_rate
            self.user.step(sigma, q, 1)
            releases.append(
                Release(
                    self.run_id,
                    server_round,
                    SERVER_CLIENT,
                    USER,
                    CENTRAL_MECHANISM,
                    sigma,
                    q,
                    1,
                    self.delta,
                    self.user.epsilon(self.delta),
                    self.user.mechanism,
                )
            )
        if self.ledger is not None and self.run_id:
            self.ledger.record(releases)
        self.ledger_round = server_round
        if metrics is not None:  # averages of per-client releases mean nothing; the ledger keeps each one
            for key in DP_RELEASE & set(metrics.keys()):
                del metrics[key]
            if examples := [r.epsilon for r in releases if r.level == EXAMPLE]:
                metrics[DP_EXAMPLE_EPSILON_MAX] = max(examples)
        return arrays, metrics

    def _local_releases(self, server_round: int, replies: list[Message]) -> list[Release]:
        out = []
        for msg in replies:
            if msg.has_error():
                continue
            for rec in msg.content.metric_records.values():
                if DP_SIGMA not in rec:
                    continue
                sigma, q, steps = (
                    as_float(rec[DP_SIGMA], DP_SIGMA),
                    as_float(rec[DP_Q], DP_Q),
                    as_int(rec[DP_STEPS], DP_STEPS),
                )
                if steps < 1:
                    continue
                key = client_key(msg)
                total = as_int(rec[DP_TOTAL_STEPS], DP_TOTAL_STEPS) if DP_TOTAL_STEPS in rec else 0
                if self.priors and (key in self.fresh or key not in self.clients):
                    acc = self._charge_fresh(key, sigma, q, steps, total)
                else:
                    acc = self.clients.setdefault(key, Accountant(self.mechanism))
                    acc.step(sigma, q, steps)
                    if total > acc.steps:  # the client's own accountant has seen more (it joined under a new node id)
                        acc.step(sigma, q, total - acc.steps)
                prev = self.client_round.get(key)
                self.client_round[key] = (sigma, q, max(steps, prev[2] if prev else 0))
                out.append(
                    Release(
                        self.run_id,
                        server_round,
                        key,
                        EXAMPLE,
                        LOCAL_MECHANISM,
                        sigma,
                        q,
                        steps,
                        self.delta,
                        acc.epsilon(self.delta),
                        acc.mechanism,
                    )
                )
        return out

    def _charge_fresh(self, key: str, sigma: float, q: float, steps: int, total: int) -> Accountant:
        """The accountant of a client the parent run did not see under its node id: each parent client history is
        a candidate for what it spent before, followed by this run's steps (and, as for any client, the steps it
        reports in ``total`` beyond those, at this round's setting); it is charged the candidate whose epsilon is
        largest, so the ledger never records less than its own accountant."""
        own = Accountant(self.mechanism, self.fresh.get(key, []))
        own.step(sigma, q, steps)
        self.fresh[key] = own.history
        candidates = []
        for prior in self.priors:
            acc = Accountant(self.mechanism, [*prior, *own.history])
            if total > acc.steps:
                acc.step(sigma, q, total - acc.steps)
            candidates.append(acc)
        acc = max(candidates, key=lambda a: a.epsilon(self.delta))
        self.clients[key] = acc
        return acc

    # ---- server-loop hooks -------------------------------------------------------------------------
    def user_epsilon(self) -> float | None:
        """Client-level epsilon spent so far (None without central DP)."""
        return self.user.epsilon(self.delta) if self.central else None

    def example_epsilons(self) -> dict[str, float]:
        """Each client's example-level epsilon so far (server-side recomputation from reported releases)."""
        return {k: acc.epsilon(self.delta) for k, acc in sorted(self.clients.items())}

    def before_round(self, server_round: int) -> str | None:
        """Why round ``server_round`` must not run (it would exceed max-epsilon), or None."""
        if self.max_epsilon <= 0:
            return None
        if self.noise is not None:
            now = self.user.epsilon(self.delta)
            nxt = self.user.epsilon_after(self.delta, self.noise.noise_multiplier, self.noise.sample_rate, 1)
            if nxt > self.max_epsilon:
                return (
                    f"privacy budget: round {server_round} would raise the user-level epsilon from {now:.4f} to "
                    f"{nxt:.4f}, above max-epsilon={self.max_epsilon:g} (delta={self.delta:g}, "
                    f"{self.user.mechanism}); stopped with epsilon {now:.4f} spent. Raise max-epsilon, add noise "
                    "or sample fewer clients to train further"
                )
        for key, acc in sorted(self.clients.items()):
            sigma, q, steps = self.client_round[key]
            nxt = acc.epsilon_after(self.delta, sigma, q, steps)
            if nxt > self.max_epsilon:
                now = acc.epsilon(self.delta)
                return (
                    f"privacy budget: round {server_round} would raise {key}'s example-level epsilon from {now:.4f} "
                    f"to {nxt:.4f}, above max-epsilon={self.max_epsilon:g} (delta={self.delta:g}, {acc.mechanism}); "
                    "stopped before it. Raise max-epsilon or lower dp-target-epsilon to train further"
                )
        return None

    def round_report(self, server_round: int) -> dict[str, float]:
        """Metrics for the round: ``epsilon`` (user level under central DP, else the largest client's) and more."""
        report: dict[str, float] = {"delta": self.delta}
        user = self.user_epsilon()
        examples = self.example_epsilons()
        if user is not None and self.noise is not None:
            report |= {
                "user_epsilon": user,
                "noise_multiplier": self.noise.noise_multiplier,
                "sample_rate": self.noise.sample_rate,
                "sampled": self.noise.last_sampled,
            }
        if examples:
            report["example_epsilon_max"] = max(examples.values())
        headline = user if user is not None else report.get("example_epsilon_max")
        if headline is not None:
            report["epsilon"] = headline
            if self.max_epsilon > 0:
                report["budget_used"] = headline / self.max_epsilon
        return report

    def state_dict(self) -> dict[str, Any]:
        """Accountants and ledger position, for checkpoints (resume continues the same accountant)."""
        return {
            "user": self.user.state_dict(),
            "clients": {k: a.state_dict() for k, a in self.clients.items()},
            "client_round": {k: list(v) for k, v in self.client_round.items()},
            "ledger_round": self.ledger_round,
        } | (  # a continued run's parent histories and its unmatched clients' own steps
            {
                "priors": [[list(h) for h in p] for p in self.priors],
                "fresh": {k: [list(h) for h in v] for k, v in self.fresh.items()},
            }
            if self.priors
            else {}
        )

    def inherit(self, state: dict[str, Any]) -> None:
        """Start a new run (a continual-training phase, :mod:`server.continual`) from a parent run's
        :meth:`state_dict`: its user-level history and its clients' accountants go on, so epsilon accumulates
        across phases. A client the parent did not see under its node id is charged, each round, the parent client
        history that makes its epsilon largest (an upper bound on what it spent there). The new run's ledger starts
        at its round 1."""
        self.user.load_state_dict(state.get("user", {}))
        self.clients = {k: Accountant.from_state(s) for k, s in state.get("clients", {}).items()}
        self.client_round = {k: (float(v[0]), float(v[1]), int(v[2])) for k, v in state.get("client_round", {}).items()}
        self.priors = list({tuple(a.history): a.history for a in self.clients.values() if a.history}.values())
        self.fresh = {}
        self.ledger_round = 0

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; ledger rows of rounds after the checkpoint are dropped (they rerun)."""
        self.user.load_state_dict(state.get("user", {}))
        self.clients = {k: Accountant.from_state(s) for k, s in state.get("clients", {}).items()}
        self.client_round = {k: (float(v[0]), float(v[1]), int(v[2])) for k, v in state.get("client_round", {}).items()}
        self.ledger_round = int(state.get("ledger_round", 0))
        self.priors = [list(normalise(p)) for p in state.get("priors", [])]
        self.fresh = {k: list(normalise(v)) for k, v in state.get("fresh", {}).items()}
        if self.ledger is not None and self.run_id:
            dropped = self.ledger.truncate(self.run_id, self.ledger_round)
            if dropped:
                log.warning(
                    "resume: dropped %d ledger rows of rounds after %d (they rerun)", dropped, self.ledger_round
                )
