"""``flower-server``: a SuperLink plus one UAAP run, as one command that cleans up after itself.

What it does, in order:

1. starts Flower's SuperLink through ``server.superlink`` (state in memory with node ids derived from the
   SuperNodes' keys, or Flower's SQLite state with ``--state-db``; log in ``<workspace>/server/``, runtime
   dependency installation off, TLS when certificates are given, SuperNode authentication when asked);
2. registers the SuperNodes' public keys (authentication) and waits until ``--min-clients`` are online;
3. submits the UAAP app with ``flwr run <app> uaap`` through a private ``FLWR_HOME`` whose
   ``config.toml`` it writes into the workspace;
4. streams progress from ``runs/<run-id>/metrics.jsonl`` and polls the run's status (``flwr run
   --stream`` exits 0 even when the ServerApp fails, so it is not trusted);
5. writes ``runs/<run-id>/deployment.json`` and stops the SuperLink and every child it started
   (also the ``flower-superexec --parent-pid`` it detaches) on exit, SIGTERM or Ctrl-C.

Flower rejects ``flwr run -c key=value`` for keys missing from the app's ``[tool.flwr.app.config]``,
so the launcher stages the app: a ``pyproject.toml`` whose config table *is* this run's validated
configuration (every RunConfig key). The code itself is imported from the installed packages on
both sides, so clients run their own installed code, not code shipped by the server.

Resume: pass ``--resume RUN_ID`` (or the same ``--run-id``); the ServerApp continues from the last
checkpoint in ``runs/<run-id>/checkpoints`` with the same accountant state.

Length: over 500 lines because it is one process lifecycle (start, register, submit, stream, stop) whose
steps share one ``FlowerServer``'s processes and paths; split up, the clean-up guarantee would span files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uaap import workspace
from uaap.config import RunConfig
from uaap.errors import ConfigError, KeyMaterialError, UaapError
from uaap.jsonlog import FORMATS, Emitter, json_logging
from uaap.processes import (
    FLOWER_ENV,
    alive,
    cmdline,
    console_script,
    die_with_parent,
    free_port,
    orphans_of,
    raise_on_sigterm,
    stop_code,
    stop_tree,
)

CONNECTION = "uaap"
OUT = Emitter("uaap.flower-server")  # the launcher's lines: text, or JSON objects with --log-format json


class DeploymentError(UaapError):
    """The SuperLink, a registration or the submitted run failed."""


# ---- processes --------------------------------------------------------------------------------


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (flower-superlink, flwr, ...)."""
    found = console_script(name)
    if not found:
        raise DeploymentError(f"'{name}' is not installed next to {sys.executable}; install flwr==1.42.*")
    return found


# ---- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """The SuperLink's certificate, key and the federation CA (all absolute)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def resolve(cls, certs_dir: str | None, ca: str | None, cert: str | None, key: str | None) -> TLSFiles | None:
        """From ``--certs DIR`` (ca.pem, server.pem, server.key) or the three explicit flags; None for insecure."""
        if certs_dir:
            base = Path(certs_dir).expanduser().resolve()
            ca, cert, key = (
                ca or str(base / "ca.pem"),
                cert or str(base / "server.pem"),
                key or str(base / "server.key"),
            )
        given = [ca, cert, key]
        if not any(given):
            return None
        if not all(given):
            raise ConfigError(
                "TLS needs all of --ssl-ca-certfile, --ssl-certfile and --ssl-keyfile (or --certs DIR from "
                "`uaap certs init`); pass --insecure to run without TLS"
            )
        paths = [Path(p).expanduser().resolve() for p in given if p]  # all given: checked above
        for p in paths:
            if not p.is_file():
                raise KeyMaterialError(f"TLS file {str(p)!r} does not exist; create them with `uaap certs init`")
        from uaap.certs import check_certificate

        check_certificate(paths[1], paths[0])
        return cls(*paths)


@dataclass
class ServerOptions:
    """Everything the launcher needs besides the run configuration."""

    host: str = "127.0.0.1"
    port: int = 9093  # the public Fleet API (server.fleet_proxy)
    control_port: int = 0  # the SuperLink itself, on 127.0.0.1 only (0: a free port)
    tls: TLSFiles | None = None
    auth_keys: tuple[Path, ...] = ()
    wait_timeout: float = 600.0
    poll: float = 5.0  # each `flwr` CLI call costs ~1.5 CPU-s (imports): poll gently
    status_every: float = 15.0
    quiet: bool = False
    log_format: str = "text"  # or "json": one JSON object a line (uaap.jsonlog), round events included
    app: Path | None = None  # a Flower App folder to submit (`flwr run <app>`); None: stage one per run
    state_db: bool = False  # Flower's SQLite state (<workspace>/server/state.db) instead of server.superlink's memory
    extra_env: dict[str, str] = field(default_factory=dict)


def public_keys(spec: Sequence[str]) -> tuple[Path, ...]:
    """SuperNode public keys from files, folders (``*.pub``) or a ``supernodes.txt`` (one key a line)."""
    out: list[Path] = []
    for item in spec:
        p = Path(item).expanduser().resolve()
        if p.is_dir():
            out += sorted(p.glob("*.pub"))
        elif p.is_file():
            out.append(p)
        else:
            raise KeyMaterialError(f"SuperNode public key {item!r} does not exist; pass .pub files or their folder")
    if spec and not out:
        raise KeyMaterialError(f"no *.pub files in {', '.join(spec)}; create keys with `uaap certs init --clients N`")
    return tuple(out)


# ---- the server -------------------------------------------------------------------------------


class FlowerServer:
    """One SuperLink and the runs submitted to it; a context manager that always stops what it started."""

    def __init__(self, options: ServerOptions) -> None:
        self.opt = options
        self.home = workspace.home() / "server"
        self.home.mkdir(parents=True, exist_ok=True)
        self.flwr_home = self.home / "flwr"
        self.log_file = self.home / "superlink.log"
        self.pid_file = self.home / "superlink.pid"
        self.proxy_log = self.home / "fleet-proxy.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.proxy: subprocess.Popen[bytes] | None = None
        self.control_port = options.control_port
        self.env = {**os.environ, **FLOWER_ENV, **options.extra_env}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["FLWR_HOME"] = str(self.flwr_home)
        self.env["UAAP_HOME"] = str(workspace.home())

    # -- lifecycle
    def __enter__(self) -> FlowerServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``host:port`` where SuperNodes connect: the Fleet API and nothing else (``server.fleet_proxy``)."""
        return f"{self.opt.host}:{self.opt.port}"

    @property
    def control_address(self) -> str:
        """``127.0.0.1:port`` of the SuperLink itself (Control API: registrations, runs), never public."""
        return f"127.0.0.1:{self.control_port}"

    def write_connection(self) -> Path:
        """The private FLWR_HOME/config.toml with the ``uaap`` connection."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]"]
        lines.append(f'address = "{self.control_address}"')
        if self.opt.tls:
            lines.append(f'root-certificates = "{self.opt.tls.ca}"')
        else:
            lines.append("insecure = true")
        path = self.flwr_home / "config.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _stop_stale(self) -> None:
        """A SuperLink left by a launcher that was killed (same workspace) is stopped first."""
        if not self.pid_file.is_file():
            return
        try:
            pid = int(self.pid_file.read_text().strip())
        except ValueError:
            return
        cmd = cmdline(pid)
        if alive(pid) and any("flower-superlink" in c or "server.superlink" in c for c in cmd):
            self._say(f"stopping a SuperLink left behind by an earlier launcher (pid {pid})")
            stop_tree(pid)
        for orphan in orphans_of(pid):
            stop_tree(orphan)

    def start(self) -> None:
        """Start the SuperLink on loopback, wait until it answers, then open the public Fleet proxy."""
        self._stop_stale()
        self.control_port = self.control_port or free_port()
        self.write_connection()
        cmd = [
            sys.executable,
            "-m",
            "server.superlink",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.control_port),
            *(["--database", str(self.home / "state.db")] if self.opt.state_db else []),
            "--disable-runtime-dependency-installation",
        ]
        if self.opt.tls:
            t = self.opt.tls
            cmd += ["--ssl-ca-certfile", str(t.ca), "--ssl-certfile", str(t.cert), "--ssl-keyfile", str(t.key)]
        else:
            cmd.append("--insecure")
        if self.opt.auth_keys:
            if not self.opt.tls:
                raise ConfigError("SuperNode authentication needs TLS: pass --certs DIR (or the --ssl-* files)")
            cmd.append("--enable-supernode-auth")
        self.proc = self._spawn(cmd, self.log_file)
        self.pid_file.write_text(str(self.proc.pid))
        self._say(f"SuperLink pid {self.proc.pid} on {self.control_address} (loopback only)")
        self._wait_ready(timeout=max(60.0, self.opt.wait_timeout / 4))
        for key in self.opt.auth_keys:
            self.register(key)
        self.start_proxy()

    def _spawn(self, cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        """A child in its own session, output to ``log_path``, that gets SIGTERM if this launcher dies."""
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed right after
        try:
            return subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.home,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - prctl only, no Python state touched
            )
        finally:
            log.close()

    def start_proxy(self) -> None:
        """The public endpoint: Fleet API calls go through to the SuperLink, everything else is refused."""
        cmd = [sys.executable, "-m", "server.fleet_proxy", "--host", self.opt.host, "--port", str(self.opt.port)]
        cmd += ["--upstream-port", str(self.control_port)]
        if self.opt.tls:
            t = self.opt.tls
            cmd += ["--ssl-certfile", str(t.cert), "--ssl-keyfile", str(t.key), "--ssl-ca-certfile", str(t.ca)]
        self.proxy = self._spawn(cmd, self.proxy_log)
        deadline = time.monotonic() + 30.0
        host = "127.0.0.1" if self.opt.host in ("0.0.0.0", "") else self.opt.host
        while True:
            if self.proxy.poll() is not None:
                tail = self.proxy_log.read_text(errors="replace")[-1000:]
                raise DeploymentError(f"the Fleet proxy on {self.address} exited ({self.proxy.returncode}):\n{tail}")
            with contextlib.suppress(OSError), socket.create_connection((host, self.opt.port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"the Fleet proxy did not listen on {self.address} within 30s; see {self.proxy_log}"
                )
            time.sleep(0.2)
        scheme = "TLS" if self.opt.tls else "insecure"
        self._say(f"Fleet API on {self.address} ({scheme}); the Control API stays on {self.control_address}")

    def stop(self) -> None:
        """Stop the Fleet proxy, the SuperLink, its detached SuperExec and the ServerApp processes."""
        if self.proxy is not None:
            stop_tree(self.proxy.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proxy.wait(timeout=5)
            self.proxy = None
        if self.proc is None:
            return
        stop_tree(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.pid_file.unlink(missing_ok=True)
        self._say("SuperLink stopped")
        self.proc = None

    # -- flwr CLI
    def flwr(self, *args: str, timeout: float = 120.0, cwd: Path | None = None) -> dict[str, Any]:
        """Run ``flwr <args> --format json`` against this SuperLink; the parsed JSON answer."""
        cmd = [_bin("flwr"), *args, "--format", "json"]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, env=self.env, cwd=cwd or self.home, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"`flwr {' '.join(args)}` did not answer within {timeout:g}s") from exc
        text = done.stdout.strip()
        start = text.find("{")
        try:
            return dict(json.loads(text[start:])) if start >= 0 else {"success": False, "error-message": text}
        except json.JSONDecodeError:
            return {"success": False, "error-message": (text or done.stderr)[-500:]}

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._checkalive()
            try:
                with socket.create_connection(("127.0.0.1", self.control_port), timeout=2):
                    pass
                answer = self.flwr("supernode", "ls", CONNECTION)
                if answer.get("success"):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"the SuperLink did not answer on {self.control_address} within {timeout:g}s; see {self.log_file}"
                )
            time.sleep(1.0)

    def _checkalive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_file.read_text(errors="replace")[-1500:] if self.log_file.is_file() else ""
            hint = " (is the port in use?)" if "address already in use" in tail.lower() else ""
            raise DeploymentError(
                f"the SuperLink exited with code {self.proc.returncode}{hint}; last log lines:\n{tail}"
            )

    def register(self, pub: Path) -> None:
        """Register one SuperNode public key (already registered keys are fine)."""
        answer = self.flwr("supernode", "register", str(pub), CONNECTION)
        if answer.get("success"):
            self._say(f"registered SuperNode key {pub.name} (node {answer.get('node-id')})")
            return
        message = str(answer.get("error-message", ""))
        if "already" in message.lower() or "exists" in message.lower():
            self._say(f"SuperNode key {pub.name} was already registered")
            return
        raise DeploymentError(f"registering SuperNode key {pub} failed: {message.strip()[-300:]}")

    def online_nodes(self) -> list[str]:
        """Ids of the SuperNodes that are online now."""
        answer = self.flwr("supernode", "ls", CONNECTION)
        if not answer.get("success"):
            return []
        return [str(n["node-id"]) for n in answer.get("nodes", []) if n.get("status") == "online"]

    def wait_for_clients(self, n: int, timeout: float) -> list[str]:
        """Block until ``n`` SuperNodes are online; a clear error after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last = -1
        while True:
            self._checkalive()
            nodes = self.online_nodes()
            if len(nodes) != last:
                self._say(f"{len(nodes)} of {n} clients connected")
                last = len(nodes)
            if len(nodes) >= n:
                return nodes
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"only {len(nodes)} of --min-clients={n} clients connected to {self.address} within "
                    f"{timeout:g}s; start more `flower-client`s (check their TLS root certificate and keys) "
                    "or lower --min-clients"
                )
            time.sleep(self.opt.poll)

    # -- runs
    def stage_app(self, cfg: RunConfig) -> Path:
        """A Flower App folder whose ``[tool.flwr.app.config]`` is exactly ``cfg``."""
        import tomli_w

        app = self.home / "apps" / cfg.run_id
        app.mkdir(parents=True, exist_ok=True)
        doc = {
            "build-system": {"requires": ["setuptools>=69"], "build-backend": "setuptools.build_meta"},
            "project": {
                "name": "uaap",
                "version": _version(),
                "description": f"UAAP run {cfg.run_id}",
                "license": {"text": "Apache-2.0"},
                "dependencies": [],
            },
            "tool": {
                "flwr": {
                    "app": {
                        "publisher": "uaap",
                        "components": {"serverapp": "server.app:app", "clientapp": "client.app:app"},
                        "config": cfg.to_flower(),
                    }
                }
            },
        }
        (app / "pyproject.toml").write_text(tomli_w.dumps(doc))
        (app / "README.md").write_text(
            f"UAAP run {cfg.run_id}: staged by flower-server; code comes from the install.\n"
        )
        return app

    def run_overrides(self, cfg: RunConfig, app: Path) -> Path:
        """A TOML file for ``flwr run <app> -c FILE`` holding every run config value of ``cfg``.

        Flower refuses override keys that the app's ``[tool.flwr.app.config]`` lacks, so they are checked here.
        """
        import tomli_w

        declared = app_config_keys(app)
        missing = sorted(set(cfg.to_flower()) - declared)
        if missing:
            raise ConfigError(
                f"the app in {app} does not declare {', '.join(missing)} in [tool.flwr.app.config], so Flower would "
                "refuse them as overrides; add them there or drop --app (the launcher then stages the app itself)"
            )
        path = self.home / "apps" / f"{cfg.run_id}.overrides.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(tomli_w.dumps(cfg.to_flower()))
        return path

    def submit(self, cfg: RunConfig) -> int:
        """Submit the run (``flwr run <app> uaap``); returns Flower's run id."""
        if self.opt.app is not None:
            app, extra = self.opt.app, ["--run-config", str(self.run_overrides(cfg, self.opt.app))]
        else:
            app, extra = self.stage_app(cfg), []
        answer = self.flwr("run", str(app), CONNECTION, *extra, cwd=app, timeout=300.0)
        if not answer.get("success"):
            raise DeploymentError(f"`flwr run` refused the app: {str(answer.get('error-message'))[-500:]}")
        return int(answer["run-id"])

    def run_status(self, flwr_run_id: int) -> str:
        """Flower's status string for a run (``running``, ``finished:completed``, ...)."""
        answer = self.flwr("ls", CONNECTION, "--run-id", str(flwr_run_id))
        runs = answer.get("runs", []) if answer.get("success") else []
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def follow(self, cfg: RunConfig, flwr_run_id: int) -> dict[str, Any]:
        """Stream metrics.jsonl until the run ends; returns the final status record."""
        rd = workspace.run_dir(cfg.run_id)
        offset = rd.metrics_file.stat().st_size if rd.metrics_file.is_file() else 0
        last_poll = time.monotonic()
        ended: dict[str, Any] | None = None
        status = "starting"
        while True:
            self._checkalive()
            offset, events = _read_new(rd.metrics_file, offset)
            for event in events:
                self._say(_progress(event, cfg.num_rounds), **_event_fields(event, cfg, flwr_run_id))
                if event.get("kind") == "end":
                    ended = event
            if ended is not None or time.monotonic() - last_poll > self.opt.status_every:
                status = self.run_status(flwr_run_id)
                last_poll = time.monotonic()
                if status.startswith("finished"):
                    offset, events = _read_new(rd.metrics_file, offset)
                    for event in events:
                        self._say(_progress(event, cfg.num_rounds), **_event_fields(event, cfg, flwr_run_id))
                        ended = event if event.get("kind") == "end" else ended
                    return {"flower_status": status, "end": ended}
                if ended is not None:
                    time.sleep(self.opt.poll)  # the ServerApp is saving its model; Flower marks it finished soon
                    continue
            time.sleep(self.opt.poll)

    def save_log(self, flwr_run_id: int, path: Path) -> Path:
        """The ServerApp's log (Flower discards its stdout; ``flwr log`` keeps it) written to ``path``."""
        cmd = [_bin("flwr"), "log", str(flwr_run_id), CONNECTION, "--show"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=self.env, cwd=self.home, timeout=120)
            path.write_text(done.stdout + done.stderr)
        except (subprocess.TimeoutExpired, OSError) as exc:
            path.write_text(f"could not fetch the ServerApp log: {exc}\n")
        return path

    def _say(self, text: str, **fields: Any) -> None:
        if not self.opt.quiet:
            OUT(f"[flower-server] {text}", level="WARNING" if fields.get("status") == "failed" else "INFO", **fields)


def app_config_keys(app: Path) -> set[str]:
    """The run config keys a Flower App folder declares in ``[tool.flwr.app.config]``."""
    import tomllib

    path = app / "pyproject.toml"
    if not path.is_file():
        raise ConfigError(f"--app {app} has no pyproject.toml; give the folder of a Flower App (the repository root)")
    with open(path, "rb") as fh:
        doc = tomllib.load(fh)
    return set(doc.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("uaap")
    except Exception:
        return "0.1.0"


def _read_new(path: Path, offset: int) -> tuple[int, list[dict[str, Any]]]:
    if not path.is_file():
        return offset, []
    with open(path, encoding="utf-8") as fh:
        fh.seek(offset)
        chunk = fh.read()
    complete = chunk[: chunk.rfind("\n") + 1]
    events = []
    for line in complete.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return offset + len(complete.encode()), events


def _event_fields(event: dict[str, Any], cfg: RunConfig, flwr_run_id: int) -> dict[str, Any]:
    """The JSON log fields of one metrics.jsonl event: run ids, and a round's number, duration and status."""
    kind = str(event.get("kind", ""))
    fields: dict[str, Any] = {"event": kind, "run_id": cfg.run_id, "flower_run_id": flwr_run_id}
    if kind == "round":
        fields |= {"round": event.get("round"), "duration": event.get("seconds"), "replies": event.get("replies")}
        fields |= {"sampled": event.get("sampled"), "status": "failed" if event.get("failed") else "ok"}
    elif kind in ("start", "end"):
        fields |= {"round": event.get("round")} if kind == "start" else {"status": event.get("status")}
    return fields


def _progress(event: dict[str, Any], num_rounds: int) -> str:
    kind = event.get("kind")
    if kind == "start":
        how = "resuming at" if event.get("resumed") else "starting"
        return f"{how} round {event.get('round')}/{num_rounds} with {event.get('nodes')} clients"
    if kind == "round":
        r = event.get("round")
        acc = event.get("central", {}).get("accuracy", event.get("evaluate", {}).get("accuracy"))
        eps = event.get("privacy", {}).get("epsilon")
        text = f"round {r}/{num_rounds}"
        if r:
            text += f": {event.get('replies', 0)}/{event.get('sampled', 0)} clients replied"
            text += f", {event.get('seconds', 0.0):.1f}s"
        text += f", accuracy {acc:.4f}" if acc is not None else ""
        text += f", epsilon {eps:.3f}" if eps is not None else ""
        if event.get("failed"):
            why = f" ({event['errors'][0]})" if event.get("errors") else ""
            text += f"; FAILED: no client result was accepted{why}"
        return text
    if kind == "end":
        return f"run {event.get('status')}" + (f": {event['reason']}" if event.get("reason") else "")
    return f"{kind}: " + json.dumps({k: v for k, v in event.items() if k not in ("kind", "time")})[:200]


# ---- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Flags: deployment options plus every RunConfig field (``--num-rounds``, ``--secure-aggregation``...)."""
    from uaap.commands.common import add_config_flags

    p = argparse.ArgumentParser(
        prog="flower-server",
        description="Start a Flower SuperLink, wait for clients and run one UAAP federation on it.",
    )
    d = p.add_argument_group("deployment")
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)")
    d.add_argument("--port", type=int, default=9093, help="public port: the Fleet API only (default 9093)")
    d.add_argument(
        "--control-port",
        type=int,
        default=0,
        help="the SuperLink's own port on 127.0.0.1 (Control API for `flwr`; default: a free port)",
    )
    d.add_argument("--certs", help="folder from `uaap certs init` (ca.pem, server.pem, server.key)")
    d.add_argument("--ssl-ca-certfile", help="CA certificate (PEM)")
    d.add_argument("--ssl-certfile", help="server certificate (PEM)")
    d.add_argument("--ssl-keyfile", help="server private key (PEM)")
    d.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")
    d.add_argument(
        "--auth-keys",
        action="append",
        default=[],
        metavar="PUB",
        help="enable SuperNode authentication and register these public keys (.pub files or a folder; repeatable)",
    )
    d.add_argument("--wait-timeout", type=float, default=600.0, help="seconds to wait for --min-clients (default 600)")
    d.add_argument("--resume", metavar="RUN_ID", help="continue a run from its last checkpoint")
    d.add_argument(
        "--app",
        metavar="DIR",
        help="submit this Flower App folder (e.g. the repository root: `flwr run DIR`) with the run config as "
        "overrides; default: a staged app whose config table is the run config (works from an installed package)",
    )
    d.add_argument(
        "--state-db",
        action="store_true",
        help="keep the SuperLink's state in Flower's SQLite database (<workspace>/server/state.db) instead of in "
        "memory: Flower's default when persisted, ~2x slower rounds; node ids stay stable either way",
    )
    d.add_argument("--quiet", action="store_true", help="no progress lines")
    d.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text (default) or json: one JSON object a line (time, level, logger, message; round events with run "
        "id, round, duration, status); secrets and key paths redacted",
    )
    add_config_flags(p, command="flower-server")
    return p


def resolve(args: argparse.Namespace) -> tuple[RunConfig, ServerOptions]:
    """The validated run configuration and launcher options (fails before any process starts)."""
    from uaap.commands.common import config_from_args

    if args.resume:
        base = workspace.existing_run(args.resume).read_config()
        cfg = config_from_args(args, base=base).replace(run_id=args.resume)
    else:
        cfg = config_from_args(args)
        cfg = cfg.replace(run_id=cfg.run_id or workspace.new_run_id())
    cfg = cfg.with_absolute_paths()  # the ServerApp runs in the launcher's workspace, not here
    tls_flags = {
        "--certs": args.certs,
        "--ssl-ca-certfile": args.ssl_ca_certfile,
        "--ssl-certfile": args.ssl_certfile,
        "--ssl-keyfile": args.ssl_keyfile,
    }
    given = [flag for flag, value in tls_flags.items() if value]
    if args.insecure and given:
        raise ConfigError(f"--insecure and {', '.join(given)} exclude each other: drop --insecure to run with TLS")
    tls = (
        None
        if args.insecure
        else TLSFiles.resolve(args.certs, args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile)
    )
    if tls is None and not args.insecure:
        raise ConfigError("give TLS files (--certs DIR from `uaap certs init`) or --insecure for a local test")
    if cfg.secure and not cfg.he_public_context:
        raise ConfigError(
            "secure-aggregation=ckks needs --he-public-context FILE on the server (the public context from "
            "`uaap keys init`); clients keep the secret context"
        )
    if args.auth_keys and tls is None:
        raise ConfigError("SuperNode authentication (--auth-keys) needs TLS: pass --certs DIR instead of --insecure")
    check_run_inputs(cfg)
    opts = ServerOptions(
        host=args.host,
        port=args.port,
        control_port=args.control_port,
        tls=tls,
        auth_keys=public_keys(args.auth_keys),
        wait_timeout=args.wait_timeout,
        quiet=args.quiet,
        log_format=args.log_format,
        app=Path(args.app).expanduser().resolve() if args.app else None,
        state_db=args.state_db,
    )
    if opts.app is not None:
        missing = sorted(set(cfg.to_flower()) - app_config_keys(opts.app))
        if missing:
            raise ConfigError(
                f"--app {opts.app} does not declare {', '.join(missing)} in [tool.flwr.app.config]; Flower would "
                "refuse them as overrides. Add them there, or drop --app"
            )
    return cfg, opts


def check_run_inputs(cfg: RunConfig) -> None:
    """Read every file, column and key the ServerApp will read, as it will read them, before anything starts.

    Inside the ServerApp a bad path or key surfaces only after the clients joined, as a failed Flower run.
    """
    from uaap.data import federated

    cfg.check_family("federated")
    if cfg.secure:
        from uaap.crypto import server_context

        server_context(cfg.he_public_context)  # exists, is a CKKS context, holds no secret key
    meta = federated(cfg, max(cfg.num_clients, 2))[1]  # the server's table: loads, has the target and two classes
    from server.continual import load_parent

    load_parent(cfg)  # continue-from: a run that cannot go on is refused here, naming why
    from uaap.privacy.utility import hopeless_noise_warning, model_size

    size = model_size(cfg, meta.n_features, meta.n_classes, meta.image_shape)
    if warning := hopeless_noise_warning(cfg, size):
        OUT(f"flower-server: warning: {warning}", level="WARNING", err=True)


def serve(cfg: RunConfig, opts: ServerOptions) -> dict[str, Any]:
    """Start the SuperLink, run ``cfg`` to the end and stop everything; returns the deployment record."""
    from uaap.tracking import ensure_experiment

    ensure_experiment(cfg.experiment)  # schema + experiment before the ServerApp process exists
    rd = workspace.run_dir(cfg.run_id)
    rd.path.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"run_id": cfg.run_id, "address": f"{opts.host}:{opts.port}", "tls": bool(opts.tls)}
    t0 = time.time()
    with FlowerServer(opts) as server:
        nodes = server.wait_for_clients(cfg.min_clients, opts.wait_timeout)
        flwr_run = server.submit(cfg)
        server._say(f"submitted run {cfg.run_id} (Flower run {flwr_run}); following {rd.metrics_file}")
        record.update(flower_run_id=flwr_run, nodes_at_start=nodes, submitted=time.time())
        _save_record(rd, record)
        result = server.follow(cfg, flwr_run)
        if not str(result.get("flower_status", "")).endswith("completed"):
            result["serverapp_log"] = str(server.save_log(flwr_run, rd.path / f"serverapp-{flwr_run}.log"))
    record.update(result, seconds=time.time() - t0, finished=time.time())
    _save_record(rd, record)
    return record


def _save_record(rd: workspace.RunDir, record: dict[str, Any]) -> None:
    path = rd.path / "deployment.json"
    runs = json.loads(path.read_text()) if path.is_file() else []
    runs = [r for r in runs if r.get("flower_run_id") != record.get("flower_run_id")] + [record]
    path.write_text(json.dumps(runs, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Console script ``flower-server``: 0 when the run completed, 1 when it failed, 2 on bad input."""
    args = build_parser().parse_args(argv)
    raise_on_sigterm()
    OUT.set_format(args.log_format)
    if args.log_format == "json":  # library records (MLflow's store, warnings) as JSON lines too
        json_logging(stream=sys.stderr)
    try:
        cfg, opts = resolve(args)
        record = serve(cfg, opts)
    except UaapError as exc:
        OUT(f"flower-server: error: {exc}", level="ERROR", err=True)
        return 2 if not isinstance(exc, DeploymentError) else 1
    except KeyboardInterrupt as exc:
        OUT("flower-server: stopped; resume with --resume <run-id>", level="WARNING", err=True)
        return stop_code(exc)
    end = record.get("end") or {}
    ok = str(record.get("flower_status", "")).endswith("completed") and end.get("status") in ("completed", "stopped")
    rd = workspace.run_dir(cfg.run_id)
    if ok:
        OUT(f"[flower-server] run {cfg.run_id} {end.get('status')}; results in {rd.path}")
        return 0
    log_path = record.get("serverapp_log")
    cause = end.get("reason") or (cause_line(Path(log_path).read_text(errors="replace")) if log_path else "")
    OUT(
        f"flower-server: error: run {cfg.run_id} {end.get('status', 'failed')}: "
        f"{cause or 'the ServerApp stopped without saying why'} (Flower: {record.get('flower_status')})\n"
        f"  full log: {log_path or rd.metrics_file}; SuperLink log: {workspace.home() / 'server' / 'superlink.log'}",
        level="ERROR",
        err=True,
    )
    return 1


def cause_line(log_text: str) -> str:
    """What a log says went wrong: the line a traceback ends with (``SomeError: message``), else its last ERROR."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exceeded)(: .*)?$", line):
            return line
    return next((line for line in reversed(lines) if "ERROR" in line), "")


if __name__ == "__main__":
    sys.exit(main())
