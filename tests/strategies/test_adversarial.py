"""One federation, two attackers, every class of malformed reply: the run completes on the honest replies alone.

Real Ray simulations of UAAP's Flower app (5 clients, 3 rounds) in which partitions 3 and 4 train honestly,
then break one rule per round (``tests/strategies/attacks.py``): unexpected and absurd metrics, a claimed
identity with a bigger model, integer or NaN arrays, a second record, another federation's key, a deeply
nested or size-inflated ciphertext header, a weight that disagrees with the ciphertext, plaintext under HE,
and out-of-range evaluation metrics. The honest clients write every reply they send; the references are
computed from those alone:

* plaintext: Flower's own FedAvg over the honest replies reproduces each round's checkpoint exactly, and the
  privacy ledger holds exactly the honest clients' DP-SGD releases, recomputed by a fresh accountant;
* CKKS: the modular sum of the honest ciphertexts is each round's checkpoint, bit for bit, and it decrypts
  to the num-examples weighted mean of the honest updates.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from strategies.base import sort_replies
from tests.flower_helpers import reply_from
from uaap.config import RunConfig
from uaap.workspace import RunDir

pytestmark = pytest.mark.slow

HONEST = (0, 1, 2)
ROUNDS = 3
BASE = RunConfig(
    dataset="digits", num_clients=5, num_rounds=ROUNDS, local_epochs=1, partition="iid", seed=13,
    experiment="tests-adversarial",
)  # fmt: skip
EXPECTED = {  # what each round's rejections must name (attacker 3's reason, attacker 4's reason)
    "plain": [("unexpected ['backdoor']", "partition-id='not-an-int'"), ("num-examples=1e+308", "non-finite"),
              ("shape", "dtype")],
    "he": [("fingerprint", "he-weight"), ("nests deeper", "array records"), ("2000000000000", "plaintext")],
}  # fmt: skip


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("adversarial") / "home"
    old = os.environ.get("UAAP_HOME")
    os.environ["UAAP_HOME"] = str(path)
    yield path
    if old is None:
        os.environ.pop("UAAP_HOME")
    else:
        os.environ["UAAP_HOME"] = old


@pytest.fixture(scope="module")
def runs(home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[RunDir, Path]]:
    import ray.cloudpickle

    from simulations.runner import simulate
    from tests.strategies import attacks

    ray.cloudpickle.register_pickle_by_value(attacks)  # the test module is not installed in the Ray workers
    out = {}
    for name, cfg, plan in (
        ("plain", BASE.replace(run_id="adv-plain", dp_local=True, dp_target_epsilon=8.0), attacks.PLAINTEXT),
        ("he", BASE.replace(run_id="adv-he", secure_aggregation="ckks"), attacks.ENCRYPTED),
    ):
        dump = tmp_path_factory.mktemp(f"dump-{name}")
        out[name] = (simulate(cfg, client_app=attacks.federation_app(plan, str(dump))), dump)
    return out


def _honest(dump: Path, server_round: int) -> list:
    """The honest replies of one round, rebuilt as the Flower messages the server received."""
    replies = []
    for pid in HONEST:
        meta = json.loads((dump / f"r{server_round}-p{pid}.json").read_text())
        with np.load(dump / f"r{server_round}-p{pid}.npz") as npz:
            record = ArrayRecord({k: Array(npz[k]) for k in meta.pop("order")})
        replies.append(reply_from(100 + pid, RecordDict({"arrays": record, "metrics": MetricRecord(meta)})))
    return replies


def _checkpoint(rd: RunDir, server_round: int) -> ArrayRecord:
    with np.load(rd.checkpoint_dir / f"round-{server_round:04d}.npz") as npz:
        return ArrayRecord({k: Array(npz[k]) for k in npz.files if k != "__state__"})


@pytest.mark.parametrize("name", ["plain", "he"])
def test_every_attack_is_rejected_with_its_reason_and_the_run_completes(runs, name: str):
    rd, _ = runs[name]
    assert rd.events("end")[-1]["status"] == "completed"
    rejected = rd.events("rejected")
    for server_round, reasons in enumerate(EXPECTED[name], start=1):
        train = [e["reason"] for e in rejected if e["round"] == server_round and e["phase"] == "train"]
        assert len(train) == 2, train
        for needle in reasons:
            assert any(needle in r for r in train), f"round {server_round}: no reason names {needle!r}: {train}"
        evaluate = [e["reason"] for e in rejected if e["round"] == server_round and e["phase"] == "evaluate"]
        assert len(evaluate) == 2 and all("loss-sum=-7.0" in r for r in evaluate)
    rounds = [e for e in rd.events("round") if e["round"] > 0]
    assert [e["train"]["rejected-replies"] for e in rounds] == [2] * ROUNDS
    assert all(e["replies"] == 5 and e["failures"] == 0 for e in rounds)  # the attackers did reply


def test_plaintext_aggregate_and_ledger_are_the_honest_replies_alone(runs):
    from flwr.serverapp.strategy import FedAvg

    from uaap.privacy.accountant import Accountant
    from uaap.privacy.ledger import Ledger

    rd, dump = runs["plain"]
    accountants = {pid: Accountant("rdp") for pid in HONEST}
    expected_releases = []
    for server_round in range(1, ROUNDS + 1):
        honest = sort_replies(_honest(dump, server_round))
        reference, _ = FedAvg(min_train_nodes=1).aggregate_train(server_round, honest)
        got = _checkpoint(rd, server_round)
        assert list(got.keys()) == list(reference.keys())
        for key in got:
            np.testing.assert_array_equal(got[key].numpy(), reference[key].numpy())
        for msg in honest:
            m = msg.content.metric_records["metrics"]
            acc = accountants[int(msg.metadata.src_node_id) - 100]
            acc.step(m["dp-sigma"], m["dp-q"], m["dp-steps"])
            expected_releases.append((server_round, m["dp-sigma"], m["dp-q"], m["dp-steps"], acc.epsilon(1e-5)))
    ledger = Ledger().releases("adv-plain", level="example")
    got_releases = [(r.round, r.sigma, r.q, r.steps, r.epsilon) for r in ledger]
    np.testing.assert_allclose(np.array(sorted(got_releases)), np.array(sorted(expected_releases)), rtol=1e-12)
    assert len({r.client for r in ledger}) == len(HONEST), "no release was accounted for an attacker"


def test_encrypted_aggregate_is_the_sum_of_the_honest_ciphertexts(runs, home: Path):
    from uaap import crypto

    rd, dump = runs["he"]
    keys = home / "keys" / "adv-he"
    public, secret = crypto.load_context(keys / crypto.PUBLIC_FILE), crypto.load_context(keys / crypto.SECRET_FILE)
    for server_round in range(1, ROUNDS + 1):
        honest = _honest(dump, server_round)
        acc = crypto.EncryptedSum(public)
        for msg in honest:
            acc.add(msg.content.array_records["arrays"])
        reference, got = acc.result(), _checkpoint(rd, server_round)
        assert reference is not None and sorted(got.keys()) == sorted(reference.keys())
        for key in got:  # integer arithmetic mod q: the same set of ciphertexts gives the same bits
            np.testing.assert_array_equal(got[key].numpy(), reference[key].numpy())
        weights = [float(m.content.metric_records["metrics"]["num-examples"]) for m in honest]
        updates = [crypto.decrypt_global(m.content.array_records["arrays"], secret) for m in honest]
        mean = [
            sum(w * u[i] for w, u in zip(weights, updates, strict=True)) / sum(weights) for i in range(len(updates[0]))
        ]
        decrypted = crypto.decrypt_global(got, secret)
        assert max(float(np.abs(d - e).max()) for d, e in zip(decrypted, mean, strict=True)) < 1e-6
