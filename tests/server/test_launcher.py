"""The flower-server launcher without a federation: the staged app carries the run config; bad TLS input fails early."""

from __future__ import annotations

from pathlib import Path

import pytest


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
    assert main([*base, "--certs", str(certs.out), "--insecure"]) == 2  # once this ran without TLS, silently
    assert "--insecure and --certs exclude each other" in capsys.readouterr().err
    assert main([*base, "--insecure", "--run-id", "../outside"]) == 2
    assert "not a valid run id" in capsys.readouterr().err
    assert not (uaap_home.parent / "outside").exists()


def test_app_folder_gets_the_run_config_as_overrides(uaap_home, tmp_path):
    """`flower-server --app REPO`: `flwr run REPO -c FILE`; Flower's own merge must give the run config back."""
    import tomllib

    from flwr.common.config import get_fused_config_from_dir

    from server.launcher import FlowerServer, ServerOptions
    from uaap.config import RunConfig
    from uaap.errors import ConfigError

    repo = Path(__file__).resolve().parents[2]
    cfg = RunConfig(run_id="via-app", num_clients=4, min_clients=3, dp_central=True, local_epochs=1)
    server = FlowerServer(ServerOptions(quiet=True, app=repo))
    overrides = tomllib.loads(server.run_overrides(cfg, repo).read_text())
    assert RunConfig.from_mapping(get_fused_config_from_dir(repo, overrides)) == cfg
    partial = tmp_path / "app"
    partial.mkdir()
    (partial / "pyproject.toml").write_text("[tool.flwr.app.config]\nnum-rounds = 3\n")
    with pytest.raises(ConfigError, match="does not declare"):
        server.run_overrides(cfg, partial)


def test_server_checks_every_file_the_serverapp_reads_before_starting(tmp_path, uaap_home, monkeypatch, capsys):
    """Relative paths become absolute (the ServerApp runs elsewhere); a missing table, a wrong target column and a
    secret context given as the public one fail here, before the SuperLink starts, naming the file."""
    import pandas as pd

    from server.launcher import build_parser, main, resolve
    from uaap import crypto

    monkeypatch.chdir(tmp_path)
    keys = crypto.generate_keys(tmp_path / "fed-keys")
    pd.DataFrame({"x": [float(i) for i in range(40)], "label": [i % 2 for i in range(40)]}).to_csv(
        tmp_path / "sample.csv", index=False
    )
    base = ["--insecure", "--port", "1", "--num-clients", "2", "--dataset", "csv", "--target", "label"]
    he = ["--secure-aggregation", "ckks", "--he-public-context", "fed-keys/public.ckks"]
    cfg, _ = resolve(build_parser().parse_args([*base, "--data", "sample.csv", *he]))
    assert cfg.data_path == str(tmp_path / "sample.csv") and cfg.he_public_context == str(keys.public)

    assert main([*base, "--data", "missing.csv"]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert main([*base[:-1], "outcome", "--data", "sample.csv"]) == 2
    assert "outcome" in capsys.readouterr().err
    assert main([*base, "--data", "sample.csv", *he[:-1], "fed-keys/secret.ckks"]) == 2
    assert "carries a secret key" in capsys.readouterr().err
    assert not (uaap_home / "server" / "superlink.log").exists(), "nothing may start before the inputs are checked"


def test_cause_line_is_what_the_traceback_ends_with():
    from server.launcher import cause_line

    log = (
        'INFO : Starting\nTraceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
        "uaap.errors.DataError: data file '/srv/x.csv' does not exist\nINFO : bye\n"
    )
    assert cause_line(log) == "uaap.errors.DataError: data file '/srv/x.csv' does not exist"
    assert cause_line("ERROR : ServerApp crashed\nINFO : done\n") == "ERROR : ServerApp crashed"


def test_json_log_format_for_errors_and_round_events(uaap_home, capsys):
    import json

    from server.launcher import _event_fields, main
    from uaap.config import RunConfig

    assert main(["--insecure", "--num-clients", "2", "--model", "nope", "--log-format", "json"]) == 2
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])  # the error is one JSON object
    assert record["level"] == "ERROR" and "nope" in record["message"] and record["logger"] == "uaap.flower-server"
    cfg = RunConfig(run_id="r1")
    done = {"kind": "round", "round": 2, "seconds": 1.5, "replies": 2, "sampled": 3}
    assert _event_fields(done, cfg, 9) == {
        "event": "round", "run_id": "r1", "flower_run_id": 9, "round": 2, "duration": 1.5, "replies": 2,
        "sampled": 3, "status": "ok",
    }  # fmt: skip
    assert _event_fields({**done, "failed": True}, cfg, 9)["status"] == "failed"
    assert main(["--insecure", "--num-clients", "2", "--model", "nope"]) == 2  # text again by default
    assert capsys.readouterr().err.startswith("flower-server: error:")
