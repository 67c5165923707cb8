"""The flower-client launcher's checks before a SuperNode starts: reachability, TLS, exit codes, node config.

Real components: a real TLS socket server and the cryptography library.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from pathlib import Path

import pytest


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
    assert re.search(r"target column 'nope' is not in \S*mine\.csv", capsys.readouterr().err)
    assert main([*args, "--target", "label", "--max-wait-time", "1"]) == EXIT_UNREACHABLE
    assert "unreachable" in capsys.readouterr().err
    key = tmp_path / "not-a-key.key"
    key.write_text("hello")
    bad_key = ["--root-certificates", str(certs.ca_cert), "--auth-key", str(key), "--partition-id", "0"]
    assert main(["--server", f"127.0.0.1:{port}", *bad_key]) == 2
    assert "not an OpenSSH private key" in capsys.readouterr().err
    # the public context where the secret one belongs: the complaint is what the file is, not its mode (0644)
    from uaap import crypto

    keys = crypto.generate_keys(tmp_path / "fed-keys")
    assert main([*args, "--target", "label", "--he-secret-context", str(keys.public)]) == 2
    err = capsys.readouterr().err
    assert "is a public context" in err and "mode" not in err


def test_client_node_config_and_diagnosis(certs):
    from client.launcher import EXIT_AUTH, EXIT_TLS, ClientOptions, FlowerClient

    opt = ClientOptions(server="h:1", data=Path("/d/my data.csv"), target="y", partition_id=2, num_partitions=3)
    policy = 'policy="deployed" require-secure-aggregation=false require-dp=false max-epsilon=0.0'
    assert opt.node_config() == f'data-path="/d/my data.csv" target="y" partition-id=2 num-partitions=3 {policy}'
    # a client holding the secret context requires secure aggregation unless it says otherwise, and no extra
    # --node-config entry can override its policy (the policy keys are written last)
    keyed = ClientOptions(
        server="h:1", he_secret_context=Path("/k/secret.ckks"), extra_node_config={"require-secure-aggregation": "0"}
    )
    assert "require-secure-aggregation=true" in keyed.node_config() and "=0 " not in keyed.node_config()
    plain = ClientOptions(server="h:1", he_secret_context=Path("/k/secret.ckks"), require_secure_aggregation=False)
    assert "require-secure-aggregation=false" in plain.node_config()
    flwr_out = "ERROR: Exit Code: 305\nFailed to initialize the connection\n[code: 2004] Failed to activate SuperNode."
    client = FlowerClient(ClientOptions(server="h:1", root_certificates=certs.ca_cert, auth_key=certs.client_keys[0]))
    client.lines = flwr_out.splitlines()
    assert client.diagnose(1).code == EXIT_AUTH
    client.lines = ["ssl.SSLCertVerificationError: certificate verify failed: unable to get local issuer"]
    assert client.diagnose(1).code == EXIT_TLS


def test_warm_is_the_default_and_cold_runs_flowers_own_supernode():
    from client.launcher import FlowerClient, build_parser, options_from_args
    from uaap.errors import ConfigError

    base = ["--server", "127.0.0.1:9093", "--insecure", "--partition-id", "0"]
    warm = FlowerClient(options_from_args(build_parser().parse_args(base))).command()
    assert warm[1:4] == ["-m", "client.warm", "supernode"]
    cold = FlowerClient(options_from_args(build_parser().parse_args([*base, "--cold"]))).command()
    assert Path(cold[0]).name == "flower-supernode"
    with pytest.raises(ConfigError, match="--cold and --warm exclude each other"):
        options_from_args(build_parser().parse_args([*base, "--cold", "--warm"]))


def test_json_lines_of_a_supernode_with_round_events_and_no_secret():
    import json

    from client.launcher import RoundEvents
    from uaap.jsonlog import Emitter

    out, events = Emitter("uaap.flower-client", "json"), RoundEvents(partition=1)
    flower = [  # the SuperNode's console lines as Flower 1.42 prints them (coloured level, padded colon)
        "\x1b[92mINFO \x1b[0m:      SuperNode ID: 4242",
        "\x1b[92mINFO \x1b[0m:      ",
        "\x1b[92mINFO \x1b[0m:      [RUN 77, ROUND 3]",
        "\x1b[92mINFO \x1b[0m:      Receiving: train message (ID: abc)",
        "Traceback (most recent call last): flwr-clientapp --token s3cr3t --auth-key /keys/client-1.key",
        "\x1b[93mWARNING \x1b[0m:   he-secret-context=/keys/secret.ckks, runtime API with token 3168...2c48",
        "\x1b[92mINFO \x1b[0m:      Sent successfully",
    ]
    lines = [json.loads(line) for raw in flower for line in events.json_lines(raw + "\n", out)]
    assert len(lines) == 7  # the empty spacer line is dropped, the sent line adds a round event
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in lines)
    assert lines[0] == {**lines[0], "level": "INFO", "logger": "flwr.supernode", "message": "SuperNode ID: 4242"}
    assert lines[4]["level"] == "WARNING"
    text = json.dumps(lines)
    assert "s3cr3t" not in text and "client-1.key" not in text and "secret.ckks" not in text and "2c48" not in text
    event = lines[-1]
    assert event["event"] == "round" and event["status"] == "sent" and event["duration"] >= 0
    assert (event["flower_run_id"], event["round"], event["node"], event["partition"]) == (77, 3, 4242, 1)
    assert event["message_type"] == "train" and event["logger"] == "uaap.flower-client"
