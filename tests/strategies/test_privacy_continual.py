"""A continued run's accountants (PrivacyAccounting.inherit, server/continual.py) without a federation: the parent's
histories go on, an unseen client is charged the parent history that makes its epsilon largest, each checked
against Opacus' RDPAccountant over both phases; the state survives a checkpoint."""

from __future__ import annotations

from typing import Any

import pytest
from flwr.serverapp.strategy import FedAvg

from strategies import wrap_privacy
from strategies.dp_accounting import PrivacyAccounting
from tests.strategies.test_privacy_central import _reply, _start
from uaap.config import RunConfig
from uaap.models import to_record
from uaap.privacy.ledger import Ledger


def _rdp(history: list[tuple[float, float, int]]) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = list(history)
    return float(acc.get_epsilon(delta=1e-5))


def _release(sigma: float, q: float, steps: int, total: int) -> dict[str, Any]:
    return {"dp-sigma": sigma, "dp-q": q, "dp-steps": steps, "dp-total-steps": total}


def _dp(run_id: str) -> PrivacyAccounting:
    cfg = RunConfig(dp_local=True, dp_central=True, fraction_train=1.0, run_id=run_id)
    dp = wrap_privacy(cfg, FedAvg())
    assert isinstance(dp, PrivacyAccounting)
    return dp


def test_a_continued_run_goes_on_from_the_parents_accountants(uaap_home: Any) -> None:
    start = _start()
    parent = _dp("parent")
    assert parent.noise is not None
    parent.noise.start_round(to_record(start), [1, 2])
    parent.aggregate_train(1, [_reply(1, start, 3, **_release(2.0, 0.05, 30, 30)),
                               _reply(2, start, 3, **_release(1.0, 0.1, 10, 10))])  # fmt: skip
    child = _dp("child")
    child.inherit(parent.state_dict())
    assert child.noise is not None
    child.noise.start_round(to_record(start), [1, 9])
    # node 1 returns under its node id; node 9 is new: its own history was 10 steps at (1.0, 0.1), it reports them
    child.aggregate_train(1, [_reply(1, start, 3, **_release(2.0, 0.05, 10, 40)),
                              _reply(9, start, 3, **_release(1.5, 0.05, 20, 30))])  # fmt: skip
    eps = child.example_epsilons()
    assert eps["node-1"] == pytest.approx(_rdp([(2.0, 0.05, 40)]), rel=1e-9)
    candidates = [
        [(2.0, 0.05, 30), (1.5, 0.05, 20)],  # node 1's parent history, then node 9's 20 new steps
        [(1.0, 0.1, 10), (1.5, 0.05, 20)],  # node 2's (node 9's own: 10 + 20 steps, the 30 it reports in total)
    ]
    assert eps["node-9"] == pytest.approx(max(_rdp(h) for h in candidates), rel=1e-9)
    assert eps["node-9"] >= _rdp([(1.0, 0.1, 10), (1.5, 0.05, 20)]) - 1e-12  # never less than its own accountant
    assert child.user_epsilon() == pytest.approx(_rdp([(1.0, 1.0, 2)]), rel=1e-9)  # one central step per phase
    rows = Ledger().releases("child")
    assert {r.round for r in rows} == {1} and len(Ledger().releases("parent")) == 3

    # a resumed continued run (its checkpoint) charges node 9 the same way
    again = _dp("child")
    again.load_state_dict(child.state_dict())
    assert again.example_epsilons() == pytest.approx(eps)
    assert again.priors == child.priors and again.fresh == child.fresh == {"node-9": [(1.5, 0.05, 20)]}


def test_parent_start_hands_over_its_model_and_says_when_it_had_no_dp(uaap_home: Any) -> None:
    import numpy as np

    from server.continual import Parent
    from uaap import workspace
    from uaap.errors import ConfigError

    start = _start()
    record = to_record(start)
    final = {k: v.numpy() + 1.0 for k, v in record.items()}  # not the seeded model
    parent = Parent("plain", RunConfig(), 3, final, {}, "")  # a parent without DP: no privacy state
    cfg = RunConfig(dp_central=True, fraction_train=1.0, run_id="child", continue_from="plain")
    rd = workspace.run_dir("child")
    rd.path.mkdir(parents=True)
    got = parent.start(cfg, record, wrap_privacy(cfg, FedAvg()), rd)
    assert all(np.array_equal(got[k].numpy(), v) for k, v in zip(got, final.values(), strict=True))
    assert "no DP guarantee" in rd.events("warning")[-1]["text"]
    event = rd.events("continue")[-1]
    assert (event["parent"], event["parent_round"], event["privacy"], event["rounds"]) == ("plain", 3, False, 3.0)
    wrong = Parent("plain", RunConfig(), 3, {**final, "0000": final["0000"][:1]}, {}, "")
    with pytest.raises(ConfigError, match=r"array '0000' has shape \(1, 50\), this run's model needs \(40, 50\)"):
        wrong.start(cfg, record, wrap_privacy(cfg, FedAvg()), rd)
