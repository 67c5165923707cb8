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
