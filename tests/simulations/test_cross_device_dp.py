"""The demo's cross-device scenario: 1000 small clients, and its user-level epsilon against an independent
accountant (Opacus' RDPAccountant fed the same noise multiplier, sampling rate and steps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from simulations.commands import CROSS_DEVICE
from uaap.data import federated
from uaap.privacy.ledger import Ledger


def opacus_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian releases, computed here, not by UAAP's accountant."""
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    return float(accountant.get_epsilon(delta))


def test_scenario_is_cross_device_and_its_planned_epsilon_is_meaningful() -> None:
    cfg = CROSS_DEVICE
    clients, test = federated(cfg, cfg.num_clients)
    assert len(clients) == cfg.num_clients >= 1000
    sizes = np.array([len(c.train.y) + len(c.test.y) for c in clients])
    assert sizes.min() >= 20 and sizes.max() <= 60, "tens of examples per client"
    assert len(test.y) == sum(len(c.test.y) for c in clients)
    assert cfg.dp_central and cfg.fraction_train < 1.0  # Poisson sampling: amplification applies
    assert cfg.dp_delta <= 1 / cfg.num_clients
    planned = opacus_epsilon(cfg.dp_noise_multiplier, cfg.fraction_train, cfg.num_rounds, cfg.dp_delta)
    assert planned <= 8.0
    assert planned == pytest.approx(4.05, abs=0.01)  # the figure README and the demo's comment quote


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_scenario_user_epsilon_in_the_ledger_matches_opacus(uaap_home: Path) -> None:
    from simulations.runner import simulate

    cfg = CROSS_DEVICE.replace(num_rounds=2)
    rd = simulate(cfg)
    assert rd.events("end")[-1]["status"] == "completed"
    users = Ledger().releases(rd.run_id, level="user")
    assert [r.round for r in users] == [1, 2]
    assert all(r.sigma == 1.0 and r.q == cfg.fraction_train and r.delta == cfg.dp_delta for r in users)
    expected = [opacus_epsilon(cfg.dp_noise_multiplier, cfg.fraction_train, k, cfg.dp_delta) for k in (1, 2)]
    assert [r.epsilon for r in users] == pytest.approx(expected, rel=1e-9)
    assert rd.events("round")[-1]["privacy"]["user_epsilon"] == pytest.approx(expected[-1], rel=1e-9)
    sampled = [e["train"]["dp-sampled"] for e in rd.events("round") if e["round"] > 0]
    assert all(40 <= s <= 160 for s in sampled), sampled  # Poisson, about q N = 100 a round
