"""uaap.privacy.accountant against Google's dp_accounting (independent code, fixed reference values).

The reference values in tests/fixtures/dp_accounting_reference.json were computed once by
tests/fixtures/make_dp_reference.py in its own venv (dp_accounting pins attrs<24, which clashes with ours).
RDP mode is compared with dp_accounting's RDP accountant (same analysis, independent implementation);
PRV mode with dp_accounting's PLD accountant (both tight numerical accountants).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from uaap.errors import ConfigError
from uaap.privacy.accountant import Accountant, epsilon_of, noise_multiplier

REFERENCE = json.loads((Path(__file__).parents[1] / "fixtures" / "dp_accounting_reference.json").read_text())
SETTINGS = REFERENCE["settings"]


def test_reference_values_obey_the_laws_of_the_two_analyses():
    # The fixture is dp_accounting's output; these relations hold for any correct run of it, so a corrupted or
    # hand-edited reference fails here: PLD is tight, never above the RDP bound of the same history.
    assert REFERENCE["adjacency"] == "add/remove one" and len(SETTINGS) >= 5
    for s in SETTINGS:
        assert 0 < s["pld_epsilon"] <= s["rdp_epsilon"], s["name"]
    assert len({json.dumps(s["history"]) for s in SETTINGS}) == len(SETTINGS), "each setting is a different history"


@pytest.mark.parametrize("setting", SETTINGS, ids=[s["name"] for s in SETTINGS])
def test_rdp_epsilon_matches_dp_accounting_within_1_percent(setting):
    ours = epsilon_of(setting["history"], setting["delta"], "rdp")
    assert ours == pytest.approx(setting["rdp_epsilon"], rel=0.01)


def test_published_value_100_clients_10_per_round():
    # 100 clients, 10 per round (Poisson, q=0.1), sigma 1.0, 50 rounds, delta 1e-5 -> eps ~5.885 (RDP)
    acc = Accountant("rdp")
    for _ in range(50):
        acc.step(1.0, 0.1, 1)
    assert acc.history == [(1.0, 0.1, 50)]
    assert acc.epsilon(1e-5) == pytest.approx(5.885, rel=0.01)


@pytest.mark.parametrize("index", [0, 2, 7])
def test_prv_epsilon_matches_dp_accounting_pld_within_1_percent(index):
    setting = SETTINGS[index]
    ours = epsilon_of(setting["history"], setting["delta"], "prv")
    assert ours == pytest.approx(setting["pld_epsilon"], rel=0.01)
    assert ours < setting["rdp_epsilon"]  # the tight accountant beats the RDP bound


def test_epsilon_grows_monotonically_and_state_round_trips():
    acc = Accountant("rdp")
    seen = [acc.epsilon(1e-5)]
    for _ in range(6):
        acc.step(1.2, 0.2, 1)
        seen.append(acc.epsilon(1e-5))
    assert seen[0] == 0.0
    assert all(b > a for a, b in zip(seen, seen[1:], strict=False))
    state = json.loads(json.dumps(acc.state_dict()))  # state is plain JSON data
    again = Accountant.from_state(state)
    assert again.epsilon(1e-5) == seen[-1]
    assert acc.epsilon_after(1e-5, 1.2, 0.2, 1) > seen[-1]
    assert acc.epsilon(1e-5) == seen[-1]  # peeking does not change the accountant
    with pytest.raises(ConfigError, match="dp-accountant='prv'"):
        Accountant("prv").load_state_dict(state)


def test_noise_multiplier_reaches_target_epsilon():
    sigma = noise_multiplier(3.0, 1e-5, 0.05, 400, "rdp")
    eps = epsilon_of([(sigma, 0.05, 400)], 1e-5)
    assert 2.98 <= eps <= 3.0  # Opacus' search stops within 0.01 below the target
    assert epsilon_of([(sigma * 0.97, 0.05, 400)], 1e-5) > 3.0


def test_bad_inputs_are_named():
    with pytest.raises(ConfigError, match="dp-accountant='gdp'"):
        Accountant("gdp")
    with pytest.raises(ConfigError, match="q=1.5"):
        epsilon_of([(1.0, 1.5, 3)], 1e-5)
    assert epsilon_of([(0.0, 0.1, 3)], 1e-5) == float("inf")


@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
def test_epsilon_after_peeks_one_more_release_with_the_accountants_own_mechanism(mechanism):
    # The published setting (sigma 1, q 0.1, 50 rounds) as 49 releases plus the one epsilon_after peeks at.
    setting = SETTINGS[0]
    assert setting["history"] == [[1.0, 0.1, 50]]
    peeked = Accountant(mechanism, [(1.0, 0.1, 49)]).epsilon_after(1e-5, 1.0, 0.1)  # one step by default
    assert peeked == Accountant(mechanism, [(1.0, 0.1, 50)]).epsilon(1e-5)
    reference = setting["rdp_epsilon"] if mechanism == "rdp" else setting["pld_epsilon"]
    assert peeked == pytest.approx(reference, rel=0.01)


def test_the_noise_search_takes_its_bounds_mechanism_and_default_exactly():
    import warnings

    # one full-batch step (q = 1) keeps the search instant; RDP is the default mechanism
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sigma = noise_multiplier(4.0, 1e-5, 1.0, 1)  # the search passes sigmas whose best RDP order is the largest
    assert not [w for w in caught if str(w.message).startswith("Optimal order")], "Opacus' search noise is silenced"
    assert sigma == noise_multiplier(4.0, 1e-5, 1.0, 1, "rdp")
    assert 3.99 <= epsilon_of([(sigma, 1.0, 1)], 1e-5) <= 4.0
    assert epsilon_of([(noise_multiplier(1.0, 1e-5, 1.0, 6), 1.0, 6)], 1e-5) <= 1.0  # a target of exactly 1
    prv = noise_multiplier(4.0, 1e-5, 1.0, 6, "prv")
    assert prv < noise_multiplier(4.0, 1e-5, 1.0, 6, "rdp"), "PRV's tighter analysis needs less noise"
    assert 3.99 <= epsilon_of([(prv, 1.0, 6)], 1e-5, "prv") <= 4.0
    for target, steps, message in (
        (0.0, 6, "dp-target-epsilon=0.0 must be > 0"),
        (4.0, 0, "planned steps=0 must be >= 1 to calibrate DP-SGD noise"),
        (1e-6, 6, "dp-target-epsilon=1e-06 cannot be reached with q=1 over 6 steps at delta=1e-05 (noise multiplier "
         "would exceed 1e6); raise the target epsilon or train fewer steps"),
    ):  # fmt: skip
        with pytest.raises(ConfigError) as err:
            noise_multiplier(target, 1e-5, 1.0, steps)
        assert str(err.value) == message


def test_an_accountant_from_a_partial_state_falls_back_to_rdp_and_no_history():
    empty = Accountant.from_state({})  # a state written before mechanism and history were stored
    assert (empty.mechanism, empty.history, empty.epsilon(1e-5)) == ("rdp", [], 0.0)
    prv = Accountant.from_state({"mechanism": "prv", "history": [[1.0, 0.5, 2], [1.0, 0.5, 3]]})
    assert (prv.mechanism, prv.history) == ("prv", [(1.0, 0.5, 5)])
    only_history = Accountant.from_state({"history": [[2.0, 0.1, 4]]})
    assert (only_history.mechanism, only_history.history) == ("rdp", [(2.0, 0.1, 4)])


def test_one_release_by_default_and_another_mechanisms_state_refused_word_for_word():
    acc = Accountant()
    acc.step(1.0, 0.5)
    assert acc.history == [(1.0, 0.5, 1)] and acc.steps == 1
    with pytest.raises(ConfigError) as err:
        Accountant("prv").load_state_dict(acc.state_dict())
    assert str(err.value) == (
        "accountant state was written by mechanism 'rdp', this run uses dp-accountant='prv'; "
        "resume with the run's original dp-accountant"
    )
