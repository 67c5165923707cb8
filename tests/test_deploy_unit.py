"""Deployment pieces without a federation: certificates, reply validation, client checks, node config.

Real components: the cryptography library, Flower messages and FedAvg, a real TLS socket server.
"""

from __future__ import annotations

import math
import socket
import ssl
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from tests.flower_helpers import reply_from


# ---- certificates ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):
    from uaap.certs import init_certs

    return init_certs(tmp_path_factory.mktemp("certs") / "fed", hosts=["server.example"], clients=2)


def test_certs_files_modes_and_chain(certs):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    for key in (certs.ca_key, certs.server_key, *certs.client_keys):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE(certs.out.stat().st_mode) == 0o700
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the chain is wrong
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "server.example" in san.get_values_for_type(x509.DNSName)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert any(str(ip) == "127.0.0.1" for ip in san.get_values_for_type(x509.IPAddress))
    # SuperNode keys: ECDSA P-384 in OpenSSH format, the .pub matches the private key
    from uaap.certs import public_key_of

    for key, pub in zip(certs.client_keys, certs.client_pubs, strict=True):
        priv = serialization.load_ssh_private_key(key.read_bytes(), password=None)
        assert priv.curve.name == "secp384r1"
        assert pub.read_text().split()[:2] == public_key_of(key).split()[:2]
    assert len((certs.out / "supernodes.txt").read_text().splitlines()) == 2


def test_certs_refuse_overwrite_and_foreign_ca(certs, tmp_path):
    from uaap.certs import check_certificate, init_certs
    from uaap.errors import KeyMaterialError

    with pytest.raises(KeyMaterialError, match="already holds a CA"):
        init_certs(certs.out)
    other = init_certs(tmp_path / "other", clients=0)
    with pytest.raises(KeyMaterialError, match="not issued by the CA"):
        check_certificate(certs.server_cert, other.ca_cert)
    check_certificate(certs.server_cert, certs.ca_cert)


def test_certs_cli(tmp_path):
    from uaap.cli import main

    assert main(["certs", "init", "--out", str(tmp_path / "c"), "--clients", "1", "--host", "10.0.0.5"]) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "ca.key",
        "ca.pem",
        "client-0.key",
        "client-0.pub",
        "server.key",
        "server.pem",
        "supernodes.txt",
    ]
    assert main(["certs", "init", "--out", str(tmp_path / "c")]) == 2  # exists: clear error, no overwrite


# ---- reply validation -----------------------------------------------------------------------------
SHAPES = {"w": (3, 2), "b": (2,)}


def _arrays(seed: int, shapes: dict[str, tuple[int, ...]] = SHAPES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def _train_reply(node: int, arrays: dict[str, np.ndarray], n: float) -> Message:
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return reply_from(node, RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": n, "loss": 0.5})}))


def _task_identity() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # as tests.flower_helpers does


class _Grid:
    """The two Grid calls a strategy's configure_* make (no SuperLink needed to build messages)."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        _task_identity()
        return self.nodes

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id)


def test_validation_rejects_malformed_and_matches_fedavg_of_the_rest(uaap_home):
    from flwr.serverapp.strategy import FedAvg

    from strategies.validation import ValidateReplies
    from uaap import workspace

    strategy = ValidateReplies(FedAvg(min_available_nodes=1, min_train_nodes=1), run_id="val-run")
    glob = ArrayRecord({k: Array(v) for k, v in _arrays(0).items()})
    msgs = list(strategy.configure_train(1, glob, ConfigRecord({}), _Grid([1, 2, 3, 4, 5, 6, 7])))
    assert len(msgs) == 7
    good = {1: (_arrays(1), 10.0), 2: (_arrays(2), 30.0)}
    nan = _arrays(3)
    nan["w"][0, 0] = np.nan
    inf = _arrays(4)
    inf["b"][1] = np.inf
    replies = [
        _train_reply(1, *good[1]),
        _train_reply(2, *good[2]),
        _train_reply(3, nan, 10.0),
        _train_reply(4, inf, 10.0),
        _train_reply(5, _arrays(5, {"w": (2, 3), "b": (2,)}), 10.0),  # transposed weight
        _train_reply(6, _arrays(6, {"w": (3, 2)}), 10.0),  # a layer missing
        _train_reply(7, _arrays(7), float("nan")),  # weight NaN
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    # independent reference: the num-examples weighted mean of the two good replies
    for name in SHAPES:
        expected = (good[1][0][name] * 10 + good[2][0][name] * 30) / 40
        np.testing.assert_allclose(arrays[name].numpy(), expected, rtol=1e-6)
    assert metrics["rejected-replies"] == 5
    reasons = {r["node"]: r["reason"] for r in strategy.rejected}
    assert sorted(reasons) == [3, 4, 5, 6, 7]
    assert "non-finite" in reasons[3] and "non-finite" in reasons[4]
    assert "shape" in reasons[5] and "missing ['b']" in reasons[6] and "num-examples" in reasons[7]
    logged = workspace.run_dir("val-run").events("rejected")
    assert sorted(e["node"] for e in logged) == [3, 4, 5, 6, 7]


def test_validation_all_bad_gives_no_model_and_evaluate_drops_nan_metrics(uaap_home):
    from flwr.serverapp.strategy import FedAvg

    from strategies.validation import ValidateReplies

    strategy = ValidateReplies(FedAvg(min_available_nodes=1, min_train_nodes=1))
    glob = ArrayRecord({k: Array(v) for k, v in _arrays(0).items()})
    list(strategy.configure_train(1, glob, ConfigRecord({}), _Grid([1])))
    bad = _arrays(1)
    bad["b"][:] = np.nan
    arrays, _ = strategy.aggregate_train(1, [_train_reply(1, bad, 5.0)])
    assert arrays is None  # the server loop keeps the old model and warns

    def eval_reply(node: int, acc: float, n: float) -> Message:
        content = RecordDict({"metrics": MetricRecord({"num-examples": n, "accuracy": acc})})
        return reply_from(node, content, MessageType.EVALUATE)

    out = strategy.aggregate_evaluate(1, [eval_reply(1, 0.8, 10), eval_reply(2, math.nan, 10), eval_reply(3, 0.5, 0)])
    # node 2 (NaN accuracy) and node 3 (0 examples) are rejected: the mean is node 1's alone
    assert out is not None and out["accuracy"] == pytest.approx(0.8)
    assert [r["node"] for r in strategy.rejected] == [1, 2, 3]  # node 1's train reply, then the two evaluations
    assert "non-finite metric" in strategy.rejected[1]["reason"]


def test_build_strategy_puts_validation_innermost():
    from flwr.serverapp.strategy import FedAvg, FedProx

    from strategies import build_strategy
    from strategies.validation import ValidateReplies
    from uaap.config import RunConfig

    s = build_strategy(RunConfig(num_clients=3, min_clients=2))
    inner = s
    while not isinstance(inner, ValidateReplies):
        inner = inner.strategy  # wrappers expose the strategy they wrap
    assert isinstance(inner.strategy, FedAvg | FedProx) and not isinstance(inner.strategy, ValidateReplies)


# ---- client launcher checks -----------------------------------------------------------------------
def _tls_server(cert: Path, key: Path) -> tuple[int, threading.Event]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    sock.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass
        sock.close()

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1], stop


def test_probe_server_tells_unreachable_from_wrong_certificate(certs, tmp_path):
    from client.launcher import EXIT_TLS, EXIT_UNREACHABLE, ClientError, ClientOptions, probe_server
    from uaap.certs import init_certs
    from uaap.processes import free_port

    port, stop = _tls_server(certs.server_cert, certs.server_key)
    try:
        probe_server(ClientOptions(server=f"127.0.0.1:{port}", root_certificates=certs.ca_cert, max_wait_time=5))
        wrong = init_certs(tmp_path / "wrong", clients=0)
        with pytest.raises(ClientError, match="does not verify") as err:
            probe_server(ClientOptions(server=f"127.0.0.1:{port}", root_certificates=wrong.ca_cert, max_wait_time=5))
        assert err.value.code == EXIT_TLS
    finally:
        stop.set()
    with pytest.raises(ClientError, match="unreachable") as err:
        probe_server(ClientOptions(server=f"127.0.0.1:{free_port()}", root_certificates=certs.ca_cert, max_wait_time=1))
    assert err.value.code == EXIT_UNREACHABLE


def test_client_main_exit_codes(certs, tmp_path, capsys):
    from client.launcher import EXIT_UNREACHABLE, main
    from uaap.processes import free_port

    port = free_port()
    assert main(["--server", f"127.0.0.1:{port}", "--partition-id", "0"]) == 2  # neither TLS nor --insecure
    assert "--root-certificates" in capsys.readouterr().err
    csv = tmp_path / "mine.csv"
    csv.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20)))
    args = ["--server", f"127.0.0.1:{port}", "--insecure", "--data", str(csv)]
    assert main([*args, "--target", "nope"]) == 2
    assert "target column 'nope' is not in mine.csv" in capsys.readouterr().err
    assert main([*args, "--target", "label", "--max-wait-time", "1"]) == EXIT_UNREACHABLE
    assert "unreachable" in capsys.readouterr().err
    key = tmp_path / "not-a-key.key"
    key.write_text("hello")
    bad_key = ["--root-certificates", str(certs.ca_cert), "--auth-key", str(key), "--partition-id", "0"]
    assert main(["--server", f"127.0.0.1:{port}", *bad_key]) == 2
    assert "not an OpenSSH private key" in capsys.readouterr().err


def test_client_node_config_and_diagnosis(certs):
    from client.launcher import EXIT_AUTH, EXIT_TLS, ClientOptions, FlowerClient

    opt = ClientOptions(server="h:1", data=Path("/d/my data.csv"), target="y", partition_id=2, num_partitions=3)
    assert opt.node_config() == 'data-path="/d/my data.csv" target="y" partition-id=2 num-partitions=3'
    flwr_out = "ERROR: Exit Code: 305\nFailed to initialize the connection\n[code: 2004] Failed to activate SuperNode."
    client = FlowerClient(ClientOptions(server="h:1", root_certificates=certs.ca_cert, auth_key=certs.client_keys[0]))
    client.lines = flwr_out.splitlines()
    assert client.diagnose(1).code == EXIT_AUTH
    client.lines = ["ssl.SSLCertVerificationError: certificate verify failed: unable to get local issuer"]
    assert client.diagnose(1).code == EXIT_TLS


# ---- the ClientApp reads a deployed client's own table --------------------------------------------
def test_setup_uses_node_data_path(tmp_path):
    from client.app import _setup
    from uaap.config import RunConfig
    from uaap.protocol import RUN_CONFIG

    rng = np.random.default_rng(0)
    rows = ["f1,f2,f3,kind"] + [
        f"{a:.3f},{b:.3f},{c:.3f},{'ab'[i % 2]}" for i, (a, b, c) in enumerate(rng.normal(size=(50, 3)))
    ]
    csv = tmp_path / "own.csv"
    csv.write_text("\n".join(rows) + "\n")
    cfg = RunConfig(dataset="breast_cancer", num_clients=3, test_fraction=0.2)
    msg = Message(
        content=RecordDict({"config": ConfigRecord({RUN_CONFIG: cfg.to_json()})}),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )
    ctx = Context(
        run_id=1,
        node_id=1,
        node_config={"data-path": str(csv), "target": "kind", "partition-id": 1},
        state=RecordDict(),
        run_config={},
    )
    own, data, pid = _setup(msg, ctx)
    assert own.dataset == "csv" and own.target == "kind" and pid == 1
    assert data.train.n_features == 3 and data.train.n_classes == 2
    assert len(data.train.y) + len(data.test.y) == 50 and len(data.test.y) == 10
    # without data-path the bundled partition is used, as in simulation
    ctx2 = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 3}, state=RecordDict(), run_config={}
    )
    cfg2, data2, _ = _setup(msg, ctx2)
    assert cfg2.dataset == "breast_cancer" and data2.train.n_features == 30


# ---- the server launcher's staged app -------------------------------------------------------------
def test_staged_app_carries_the_whole_run_config(uaap_home):
    """Flower refuses `flwr run -c k=v` for keys missing from the app's config table: the launcher stages an app
    whose table is the validated run config, and Flower's own reader must give that config back."""
    from flwr.cli.config_utils import load_and_validate
    from flwr.common.config import get_fused_config_from_dir

    from server.launcher import FlowerServer, ServerOptions
    from uaap.config import RunConfig

    cfg = RunConfig(run_id="staged", num_clients=3, min_clients=3, secure_aggregation="ckks", dp_central=True)
    app = FlowerServer(ServerOptions(quiet=True)).stage_app(cfg)
    config, errors = load_and_validate(app / "pyproject.toml")
    assert config is not None and not errors, errors
    fused = get_fused_config_from_dir(app, {})
    assert RunConfig.from_mapping(fused) == cfg


def test_server_rejects_bad_tls_input_before_starting(certs, tmp_path, uaap_home, capsys):
    from server.launcher import main
    from uaap.certs import init_certs

    other = init_certs(tmp_path / "other", clients=0)
    base = ["--num-clients", "2", "--min-clients", "2", "--port", "1"]
    assert main([*base]) == 2
    assert "--insecure" in capsys.readouterr().err
    foreign = ["--ssl-ca-certfile", str(other.ca_cert), "--ssl-certfile", str(certs.server_cert)]
    assert main([*base, *foreign, "--ssl-keyfile", str(certs.server_key)]) == 2
    assert "not issued by the CA" in capsys.readouterr().err
    assert main([*base, "--insecure", "--auth-keys", str(certs.client_pubs[0])]) == 2
    assert "needs TLS" in capsys.readouterr().err
    assert main([*base, "--certs", str(certs.out), "--secure-aggregation", "ckks"]) == 2
    assert "--he-public-context" in capsys.readouterr().err


def test_app_folder_gets_the_run_config_as_overrides(uaap_home, tmp_path):
    """`flower-server --app REPO`: `flwr run REPO -c FILE`; Flower's own merge must give the run config back."""
    import tomllib

    from flwr.common.config import get_fused_config_from_dir

    from server.launcher import FlowerServer, ServerOptions
    from uaap.config import RunConfig
    from uaap.errors import ConfigError

    repo = Path(__file__).resolve().parents[1]
    cfg = RunConfig(run_id="via-app", num_clients=4, min_clients=3, dp_central=True, local_epochs=1)
    server = FlowerServer(ServerOptions(quiet=True, app=repo))
    overrides = tomllib.loads(server.run_overrides(cfg, repo).read_text())
    assert RunConfig.from_mapping(get_fused_config_from_dir(repo, overrides)) == cfg
    partial = tmp_path / "app"
    partial.mkdir()
    (partial / "pyproject.toml").write_text("[tool.flwr.app.config]\nnum-rounds = 3\n")
    with pytest.raises(ConfigError, match="does not declare"):
        server.run_overrides(cfg, partial)
