"""SecAgg+ in a real Ray simulation of 5 clients, one of which dies after sharing its keys (tests/server/
secagg_clients.py): the round's model equals the plaintext FedAvg of the four survivors within the stated quantisation
bound. The reference is Flower's FedAvg (reply validation around it) in a plaintext twin of the federation run in
this process (tests/flower_helpers.LocalGrid: the same ClientApp functions, partitions and seeds), where the same
client never answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from uaap.config import RunConfig
from uaap.workspace import RunDir

SIM = RunConfig(num_clients=5, num_rounds=1, local_epochs=1, seed=5, experiment="tests-secagg", model="logreg")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunDir]]:
    from simulations.runner import simulate
    from tests.server import secagg_clients

    home = tmp_path_factory.mktemp("secagg-sim")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UAAP_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        from server.federation import run_federation
        from tests.flower_helpers import LocalGrid

        masked = simulate(SIM.replace(secure_aggregation="secagg+"), client_app=secagg_clients.app)
        twin = SIM.replace(run_id="secagg-plain-twin", round_timeout=3.0)  # node 5 (partition 4) never answers
        plain = run_federation(LocalGrid(5, silent=frozenset({5})), twin, num_partitions=5)
        yield {"secagg": masked, "plain": plain}


def _weights(rd: RunDir) -> list[np.ndarray]:
    with np.load(rd.model_file) as npz:
        return [npz[k] for k in sorted(npz.files) if k.startswith("w")]


def _round(rd: RunDir) -> dict:
    return [e for e in rd.events("round") if e["round"] == 1][0]


@pytest.mark.slow  # starts Ray
def test_secagg_federation_with_a_client_lost_after_sharing_keys_equals_plaintext_fedavg(
    runs: dict[str, RunDir], record_property: Callable[[str, object], None]
) -> None:
    from uaap.crypto.secagg import Params

    masked, plain = _round(runs["secagg"]), _round(runs["plain"])
    assert masked["replies"] == plain["replies"] == 4 and masked["failures"] == 1
    assert masked["train"]["secagg-clients"] == 4 and masked["train"]["secagg-dropped"] == 1
    bound = Params().step
    assert masked["train"]["secagg-error-bound"] == pytest.approx(bound)
    got, ref = _weights(runs["secagg"]), _weights(runs["plain"])
    diff = max(float(np.abs(g.astype(np.float64) - r).max()) for g, r in zip(got, ref, strict=True))
    record_property("max_abs_difference", diff)
    record_property("round_seconds", masked["seconds"])
    assert 0 < diff <= bound + 2e-7, f"SecAgg+ and plaintext FedAvg differ by {diff:.3g} (bound {bound:.3g})"
    assert masked["central"]["accuracy"] == pytest.approx(plain["central"]["accuracy"], abs=0.01)
    assert Path(runs["secagg"].model_file).exists(), "the aggregate is plaintext: the server keeps the model"
