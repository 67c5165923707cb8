"""End to end on localhost: `flower-server` + three `flower-client` processes, TLS, SuperNode authentication,
secure aggregation (CKKS) and central DP, with faults injected into one shared federation:

* a client is SIGKILLed while its round-2 ClientApp runs, as a newcomer would kill it (`kill -9` of the
  `flower-client` they started, nothing else): round 2 completes with the other two within a minute and a half of
  the kill (the HE sum and the weights count only them; the ledger and MLflow record two participants); started
  again with the same key (same node id) it is back for round 3;
* late joiners are refused with a clear message and leave the run alone: one with a foreign CA (TLS) and
  one with an unregistered SuperNode key;
* the server (launcher, SuperLink and everything below it) is SIGKILLed after round 2 and restarted with
  `--resume`: round 3 runs from the round-2 checkpoint with the same accountant (no round lost or counted
  twice), and the decrypted final model beats the majority-class baseline by a wide margin.

The clients are `flower-client`'s default, warm SuperNodes (client/warm.py: a ClientApp forked per message from
a process that imported torch once). The same federation with Flower's SuperNode as shipped (`--cold`, a fresh
`flwr-clientapp` importing torch per message: minutes on a busy 2-core machine) runs with UAAP_E2E_COLD=1.
Every process is started in its own session and stopped by PID in the fixture's finalizer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
RUN_ID = "e2e-deploy"
ROUNDS = 3
KILLED = 2  # partition id of the client killed in round 2


def _proc_table() -> dict[int, tuple[int, str]]:
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry.name)] = (ppid, cmd)
    return table


def _tree(pid: int, table: dict[int, tuple[int, str]] | None = None) -> list[int]:
    table = table or _proc_table()
    out, todo = [pid], [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _) in table.items():
            if ppid == parent and child not in out:
                out.append(child)
                todo.append(child)
    return out


def _ours(marker: str) -> list[int]:
    """Flower processes whose command line names this test's workspace or ports."""
    return [
        pid
        for pid, (_, cmd) in _proc_table().items()
        if marker in cmd
        and any(name in cmd for name in ("flwr", "flower", "fleet_proxy", "server.superlink"))
        and pid != os.getpid()
    ]


def _server_side(port: int, home: Path) -> list[int]:
    """SuperLink-side processes of this federation (SuperLink, SuperExec, ServerApp, flwr CLI calls)."""
    table = _proc_table()
    client_side = ("flower-supernode", "flower-client")
    mine = set(_ours(f":{port}") + _ours(f"--port {port}") + _ours(str(home)))
    with contextlib.suppress(OSError, ValueError):  # the SuperLink names no path of ours: the launcher's pid file
        pid = int((home / "server" / "superlink.pid").read_text())
        if pid in table and "server.superlink" in table[pid][1]:
            mine.add(pid)
    return [p for p in mine if p in table and not any(c in table[p][1] for c in client_side)]


def _kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class Federation:
    """The processes of one localhost federation and the paths they use."""

    def __init__(self, root: Path) -> None:
        from uaap.processes import free_port

        self.root = root
        self.home = root / "ws"
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "UAAP_HOME": str(self.home), "FLWR_TELEMETRY_ENABLED": "0"}
        self.env.pop("MLFLOW_TRACKING_URI", None)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - kept by the child
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def kill_tree(self, name: str) -> None:
        """SIGKILL a launcher and everything under it, including a SuperLink's detached SuperExec."""
        proc = self.procs[name]
        table = _proc_table()
        victims = _tree(proc.pid, table)
        for pid in list(victims):
            for other, (_, cmd) in table.items():
                if f"--parent-pid {pid} " in cmd + " " and other not in victims:
                    victims += _tree(other, table)
        _kill(victims)
        proc.wait(timeout=30)

    def events(self) -> list[dict]:
        path = self.home / "runs" / RUN_ID / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_for(self, what: str, predicate, timeout: float, poll: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                logs = {n: self.log(n)[-1500:] for n in self.procs}
                raise AssertionError(f"timed out waiting for {what}; logs:\n" + json.dumps(logs, indent=1))
            time.sleep(poll)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                _kill(_tree(proc.pid), signal.SIGTERM)
        time.sleep(3)
        for proc in self.procs.values():
            if proc.poll() is None:
                _kill(_tree(proc.pid))
            proc.wait(timeout=30)
        _kill(_ours(str(self.home)) + _ours(f":{self.port}"))  # anything detached that still names us


def _server_argv(fed: Federation, certs, keys, *extra: str) -> list[str]:
    return [
        str(BIN / "flower-server"),
        "--port",
        str(fed.port),
        "--certs",
        str(certs.out),
        *[arg for pub in certs.client_pubs[:3] for arg in ("--auth-keys", str(pub))],
        "--he-public-context",
        str(keys.public),
        "--wait-timeout",
        "300",
        *extra,
    ]


def _client_argv(fed: Federation, ca: Path, key: Path, pid: int, secret: Path, wait: float) -> list[str]:
    return [
        str(BIN / "flower-client"),
        "--server",
        fed.addr,
        "--root-certificates",
        str(ca),
        "--auth-key",
        str(key),
        "--partition-id",
        str(pid),
        "--num-partitions",
        "3",
        "--he-secret-context",
        str(secret),
        "--max-wait-time",
        str(wait),
        *fed.client_flags,
    ]


def _clientapp_running(pid: int) -> bool:
    """A ClientApp runs under this launcher: Flower's `flwr-clientapp`, or a child forked by the warm zygote."""
    table = _proc_table()
    for p in _tree(pid, table):
        ppid, cmd = table.get(p, (0, ""))
        if "flwr-clientapp" in cmd or (
            "client.warm zygote" in cmd and "client.warm zygote" in table.get(ppid, (0, ""))[1]
        ):
            return True
    return False


def _outsider(fed: Federation, root: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """Someone holding only the CA certificate tries the public address: register a key, then run an app."""
    app = root / "app"
    app.mkdir(parents=True)
    marker = root / "owned"
    (app / "evil.py").write_text(
        "from pathlib import Path\nfrom flwr.serverapp import ServerApp\napp = ServerApp()\n\n"
        f"@app.main()\ndef main(grid, context):\n    Path({str(marker)!r}).write_text('ran')\n"
    )
    (app / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "evil"\nversion = "1.0.0"\ndependencies = []\n\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["."]\n\n'
        '[tool.flwr.app]\npublisher = "outsider"\n\n[tool.flwr.app.components]\n'
        'serverapp = "evil:app"\nclientapp = "evil:app"\n\n[tool.flwr.app.config]\n'
    )
    home = root / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "target"\n\n[superlink.target]\n'
        f'address = "{fed.addr}"\nroot-certificates = "{fed.certs.ca_cert}"\n'
    )
    env = {**fed.env, "FLWR_HOME": str(home)}
    flwr = str(BIN / "flwr")
    out = {
        "register": subprocess.run(
            [flwr, "supernode", "register", str(fed.certs.client_pubs[3]), "target", "--format", "json"],
            capture_output=True, text=True, env=env, timeout=120, cwd=root,
        ),
        "run": subprocess.run(
            [flwr, "run", str(app), "target", "--format", "json"],
            capture_output=True, text=True, env=env, timeout=120, cwd=root,
        ),
    }  # fmt: skip
    out["marker"] = marker.exists()  # type: ignore[assignment]
    return out


COLD = pytest.mark.skipif(
    not os.environ.get("UAAP_E2E_COLD"),
    reason=(
        "flower-client --cold (Flower's SuperNode as shipped) under kills and restarts: a second deployment would "
        "double this file's set-up, so CI checks the default warm clients only and a --cold user's fault behaviour "
        "goes unchecked there; UAAP_E2E_COLD=1 runs it"
    ),
)


@pytest.fixture(scope="module", params=["warm", pytest.param("cold", marks=COLD)])
def federation(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from uaap import crypto
    from uaap.certs import init_certs

    root = tmp_path_factory.mktemp("deploy")
    fed = Federation(root)
    fed.client_flags = ["--log-format", "json", *([] if request.param == "warm" else ["--cold"])]
    certs = init_certs(root / "certs", clients=4)  # client-3's key is never registered
    foreign = init_certs(root / "foreign", clients=0)
    keys = crypto.generate_keys(root / "keys")
    fed.certs, fed.keys = certs, keys
    server_cfg = [
        "--run-id",
        RUN_ID,
        "--dataset",
        "breast_cancer",
        "--model",
        "logreg",
        "--num-rounds",
        str(ROUNDS),
        "--num-clients",
        "3",
        "--min-clients",
        "3",
        "--local-epochs",
        "1",
        "--partition",
        "iid",
        "--fraction-evaluate",
        "0",
        "--secure-aggregation",
        "ckks",
        "--dp-central",
        "true",
        "--dp-noise-multiplier",
        "0.1",
        "--log-format",
        "json",
    ]
    try:
        fed.start("server", _server_argv(fed, certs, keys, *server_cfg))
        for i in range(3):
            fed.start(f"client-{i}", _client_argv(fed, certs.ca_cert, certs.client_keys[i], i, keys.secret, 300))

        def rounds_done() -> list[int]:
            return [e["round"] for e in fed.events() if e["kind"] == "round" and e["round"] > 0]

        # warm rounds take ~2 s on a quiet machine: notice round 1's end at once, so that the kill lands in round 2
        fed.wait_for("round 1", lambda: 1 in rounds_done(), timeout=600, poll=0.05)
        # late joiners while round 2 runs: a foreign CA, and a SuperNode key the server never registered
        fed.start("wrong-ca", _client_argv(fed, foreign.ca_cert, certs.client_keys[0], 0, keys.secret, 10))
        fed.start("unregistered", _client_argv(fed, certs.ca_cert, certs.client_keys[3], 0, keys.secret, 10))
        # kill client 2 while it trains in round 2 (its ClientApp is running): SIGKILL of its launcher only
        victim = fed.procs[f"client-{KILLED}"]
        fed.wait_for("client 2's round-2 ClientApp", lambda: _clientapp_running(victim.pid), timeout=300, poll=0.02)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.time()
        victim.wait(timeout=30)
        fed.wait_for("round 2", lambda: 2 in rounds_done(), timeout=600)
        fed.round2_after_kill = (
            next(  # when round 2's line was written, seconds after the kill
                e["time"] for e in fed.events() if e["kind"] == "round" and e["round"] == 2
            )
            - killed_at
        )
        for name in ("wrong-ca", "unregistered"):  # refused while the server is up (they retry for 10 s)
            fed.procs[name].wait(timeout=120)
        # crash the whole server side after round 2's checkpoint, then restart it on the same port
        # (round 3 cannot end before this: it waits up to 60 s for min-clients=3 online, and two are)
        fed.kill_tree("server")
        time.sleep(1.0)
        fed.round2_left_server = _server_side(fed.port, fed.home)
        argv = _client_argv(fed, certs.ca_cert, certs.client_keys[KILLED], KILLED, keys.secret, 300)
        fed.start(f"client-{KILLED}-again", argv)  # its owner starts it again, with the same key (same node id)
        resume_cfg = ["--resume", RUN_ID, "--min-clients", "3", "--log-format", "json"]  # the restarted client is back
        fed.start("server-resumed", _server_argv(fed, certs, keys, *resume_cfg))
        proxy_log = fed.home / "server" / "fleet-proxy.log"
        fed.wait_for(
            "the resumed server's Fleet proxy",
            lambda: proxy_log.is_file() and proxy_log.read_text().count("serving the Fleet API") == 2,
            timeout=300,
            poll=0.5,
        )
        fed.outsider = _outsider(fed, root / "outsider")
        fed.procs["server-resumed"].wait(timeout=900)
        yield fed
    finally:
        fed.stop_all()


def test_resumed_server_completes_the_run(federation):
    fed = federation
    assert fed.procs["server-resumed"].returncode == 0, fed.log("server-resumed")[-3000:]
    events = fed.events()
    rounds = [e["round"] for e in events if e["kind"] == "round" and e["round"] > 0]
    assert rounds == [1, 2, 3]  # none lost, none run twice
    starts = [e for e in events if e["kind"] == "start"]
    assert [(s["round"], s["resumed"]) for s in starts] == [(1, False), (3, True)]
    assert events[-1]["kind"] == "end" and events[-1]["status"] == "completed"
    ckpts = sorted(p.name for p in (fed.home / "runs" / RUN_ID / "checkpoints").glob("round-*.npz"))
    assert ckpts == ["round-0001.npz", "round-0002.npz", "round-0003.npz"]
    record = json.loads((fed.home / "runs" / RUN_ID / "deployment.json").read_text())
    # one record per submitted Flower run: the crashed one never got a status, the resumed one completed
    assert [r.get("flower_status") for r in record] == [None, "finished:completed"]
    assert record[0]["flower_run_id"] != record[1]["flower_run_id"] and all(r["tls"] for r in record)


def test_killed_client_left_out_of_round_two(federation):
    by_round = {e["round"]: e for e in federation.events() if e["kind"] == "round" and e["round"] > 0}
    assert by_round[1]["replies"] == 3 and by_round[1]["train"]["he-clients"] == 3
    r2 = by_round[2]
    assert r2["sampled"] == 3 and r2["replies"] == 2  # late joiners were never sampled
    assert r2["train"]["he-clients"] == 2 and r2["train"]["he-rejected"] == 1  # the lost client
    assert r2["train"]["he-total-weight"] == pytest.approx(2.0)  # central DP: uniform weights, the two summed
    assert by_round[3]["replies"] == 3 and by_round[3]["train"]["he-clients"] == 3  # restarted, back in round 3
    # within the documented bound: Flower drops a SuperNode that stops its heartbeats after about 60 s (at once
    # when it says goodbye, as this one does when its launcher dies); the round loop stops waiting for it then
    assert federation.round2_after_kill < 90, f"round 2 ended {federation.round2_after_kill:.0f}s after the kill"


def test_ledger_and_mlflow_record_participation(federation):
    from uaap.privacy.ledger import USER, Ledger
    from uaap.tracking import RUN_TAG

    fed = federation
    os.environ["UAAP_HOME"], old = str(fed.home), os.environ.get("UAAP_HOME")
    try:
        ledger = Ledger()
        user = ledger.releases(RUN_ID, level=USER)
        ledger.close()
        assert [r.round for r in user] == [1, 2, 3]  # same accountant across the restart: no round twice
        eps = [r.epsilon for r in user]
        assert eps[0] < eps[1] < eps[2]
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{fed.home / 'mlflow.db'}")
        exp = client.get_experiment_by_name("uaap")
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{RUN_ID}'")
        assert len(runs) == 1  # reopened on resume, not duplicated
        clients = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, "clients")}
        assert clients == {1: 3.0, 2: 2.0, 3: 3.0}
    finally:
        if old is None:
            os.environ.pop("UAAP_HOME", None)
        else:
            os.environ["UAAP_HOME"] = old


def test_final_model_decrypts_and_learns(federation):
    from uaap import workspace
    from uaap.commands.keys import decrypt_model
    from uaap.data import load_split
    from uaap.training import evaluate

    fed = federation
    os.environ["UAAP_HOME"], old = str(fed.home), os.environ.get("UAAP_HOME")
    try:
        path = decrypt_model(RUN_ID, fed.keys.secret)
        model, meta = workspace.load_model(path)
        assert meta["decrypted_from_round"] == ROUNDS
        cfg = workspace.run_dir(RUN_ID).read_config()
        test = load_split(cfg).test
        acc = evaluate(model, test)["accuracy"]
        majority = np.bincount(test.y).max() / len(test.y)
        assert acc >= majority + 0.15, (acc, majority)
    finally:
        if old is None:
            os.environ.pop("UAAP_HOME", None)
        else:
            os.environ["UAAP_HOME"] = old


def test_every_log_line_is_json_with_round_events_and_no_secret(federation):
    fed = federation
    server_rounds, client_rounds = [], []
    secrets = [fed.keys.secret, *fed.certs.client_keys, fed.certs.out / "server.key"]
    for name in fed.procs:
        text = fed.log(name)
        for path in secrets:  # neither a private key's path nor its file name, in any line of any process
            assert str(path) not in text and path.name not in text, (name, path)
        for line in text.splitlines():
            record = json.loads(line)  # every line is one JSON object
            assert {"time", "level", "logger", "message"} <= record.keys(), line
            if record.get("event") == "round":
                (server_rounds if name.startswith("server") else client_rounds).append(record)
    logged = [r["round"] for r in server_rounds]  # the crashed server may have died before it logged round 2
    assert {1, 3} <= set(logged) <= {1, 2, 3} and len(logged) == len(set(logged))
    assert all(r["run_id"] == RUN_ID and r["status"] == "ok" and r["duration"] > 0 for r in server_rounds)
    train = [r for r in client_rounds if r["message_type"] == "train"]
    assert {(r["partition"], r["round"]) for r in train} >= {(0, 1), (1, 2), (0, 3), (KILLED, 3)}
    assert all(r["status"] == "sent" and r["node"] and r["flower_run_id"] and r["duration"] >= 0 for r in train)


def test_the_restarted_superlink_gives_each_key_its_node_id(federation):
    # the SuperLink keeps its state in memory (server.superlink): the node ids the privacy ledger names clients by
    # come from the keys, so the resumed server's SuperLink registered the same three nodes as the crashed one's
    log = (federation.home / "server" / "superlink.log").read_text()
    starts = [part for part in log.split("Starting Flower SuperLink")[1:] if "RegisterNode" in part]
    created = [{int(i) for i in re.findall(r"Created node_id=(\d+)", part)} for part in starts]
    assert len(created) == 2 and len(created[0]) == 3, created  # the crashed SuperLink's and the resumed one's
    assert created[0] == created[1]


def test_late_joiners_refused_with_clear_messages(federation):
    from client.launcher import EXIT_AUTH, EXIT_TLS

    fed = federation
    assert fed.procs["wrong-ca"].returncode == EXIT_TLS
    assert "does not verify against" in fed.log("wrong-ca")
    assert fed.procs["unregistered"].returncode == EXIT_AUTH
    assert "refused this client's authentication key" in fed.log("unregistered")


def test_an_outsider_with_the_ca_certificate_can_neither_register_nor_run(federation):
    # Flower 1.42 serves its unauthenticated Control API on the SuperLink's one port; flower-server keeps the
    # SuperLink on loopback and publishes only the Fleet API (server.fleet_proxy), so both calls are refused
    outsider = federation.outsider
    for step in ("register", "run"):
        done = outsider[step]
        assert '"success": false' in done.stdout.lower() or done.returncode != 0, done
        assert "only Flower's Fleet API is served" in done.stdout + done.stderr, done  # the proxy's refusal
    assert outsider["marker"] is False, "the outsider's ServerApp ran"
    assert "refused POST /v1/control/" in (federation.home / "server" / "fleet-proxy.log").read_text()


def test_no_process_left_behind(federation):
    fed = federation
    # the crashed server's SuperLink, SuperExec and ServerApp were gone before the restart
    assert fed.round2_left_server == []
    # the resumed server stopped its own SuperLink tree when the run ended (clients may still be retrying)
    assert _server_side(fed.port, fed.home) == []
    fed.stop_all()  # last test: stop the clients now and check that nothing of ours is left
    assert _ours(str(fed.home)) + _ours(f":{fed.port}") == []


def test_sigterm_stops_the_superlink_and_its_children(tmp_path):
    """SIGTERM while waiting for clients: exit 143 within seconds; the SuperLink and its detached SuperExec are gone."""
    fed = Federation(tmp_path)
    argv = [str(BIN / "flower-server"), "--port", str(fed.port), "--insecure", "--min-clients", "2"]
    server = fed.start("server", [*argv, "--num-clients", "2", "--run-id", "sigterm", "--wait-timeout", "600"])
    try:
        fed.wait_for("clients being awaited", lambda: "0 of 2 clients connected" in fed.log("server"), timeout=300)
        assert _server_side(fed.port, fed.home), "the SuperLink should be running"
        superlink = int((fed.home / "server" / "superlink.pid").read_text())
        server.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert server.wait(timeout=60) == 143
        assert time.monotonic() - t0 < 15, "stopping took too long"
        assert "stopped; resume with --resume" in fed.log("server")
        time.sleep(1.0)
        assert _server_side(fed.port, fed.home) == [] and superlink not in _proc_table()
        assert not (fed.home / "server" / "superlink.pid").exists()
    finally:
        fed.stop_all()
