"""``flower-client``: one data owner's SuperNode, with checks that say what is wrong.

It checks everything it can before connecting (the data loads, the HE secret context holds a
secret key, the auth key parses), then probes the server itself: TCP (is anything listening?) and
a TLS handshake against the given root certificate (is it the federation's CA?). Only then does it
start ``flower-supernode`` with the node config the ClientApp reads (``data-path``/``target`` or
``partition-id``/``num-partitions``, ``he-secret-context``), bounded by ``--max-wait-time``, and
reads its output to tell an unregistered key (``[code: 2004]``) from a lost server.

A SuperNode as Flower ships it starts a fresh ``flwr-clientapp`` process per message, which re-imports torch,
and naps 3 s whenever it finds no message; ``flower-client`` runs it through ``client.warm`` instead (short polls,
ClientApps forked from a warm process; ``--cold`` for Flower's SuperNode as shipped), and
``benchmarks/deployment.py`` measures both.
When the server's last message says the run ended, the ClientApp writes it where this launcher watches
(a ``status-file`` in the node config) and the launcher stops the SuperNode and exits 0.

Length: over 500 lines because the checks, the supervised SuperNode and the diagnosis of its exit share one
set of options and one process tree; split up, the exit codes the guide documents would span files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from client.policy import DEPLOYED
from uaap.errors import ConfigError, DataError, KeyMaterialError, UaapError
from uaap.jsonlog import FORMATS, Emitter
from uaap.processes import (
    FLOWER_ENV,
    console_script,
    descendants,
    die_with_parent,
    free_port,
    raise_on_sigterm,
    stop_code,
    stop_tree,
)
from uaap.protocol import (
    NODE_DATA_PATH,
    NODE_HE_SECRET_CONTEXT,
    NODE_MAX_EPSILON,
    NODE_NUM_PARTITIONS,
    NODE_PARTITION_ID,
    NODE_POLICY,
    NODE_REQUIRE_DP,
    NODE_REQUIRE_SECURE,
    NODE_STATUS_FILE,
    NODE_TARGET,
    RUN_END,
    RUN_END_REASON,
    RUN_END_RUN,
)

EXIT_UNREACHABLE = 3
EXIT_TLS = 4
EXIT_AUTH = 5
EXIT_SUPERNODE = 1

_AUTH_PATTERNS = ("[code: 2004]", "failed to activate supernode", "unauthenticated", "permission denied")
_RETRY_PATTERN = "Connection attempt failed"
_STILL_FAILING = ("ERROR", "Errno", "Starting Flower SuperExec", "WARNING")  # lines that do not prove a connection
_TLS_PATTERNS = ("certificate verify failed", "ssl", "handshake")


class ClientError(UaapError):
    """The client cannot join: unreachable server, wrong certificate, refused key or a failed SuperNode."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ---- processes (same rules as the server launcher: stop every child, by pid) ------------------


def _bin(name: str) -> str:
    found = console_script(name)
    if not found:
        raise ClientError(f"'{name}' is not installed next to {sys.executable}; install flwr==1.42.*", EXIT_SUPERNODE)
    return found


# ---- options and checks -----------------------------------------------------------------------


@dataclass
class ClientOptions:
    """One data owner's SuperNode."""

    server: str
    root_certificates: Path | None = None
    auth_key: Path | None = None
    data: Path | None = None
    target: str = ""
    partition_id: int | None = None
    num_partitions: int | None = None
    he_secret_context: Path | None = None
    require_secure_aggregation: bool | None = None  # None: required exactly when a secret context is given
    require_dp: bool = False
    max_epsilon: float = 0.0
    max_wait_time: float = 60.0
    port: int = 0
    extra_node_config: dict[str, str] = field(default_factory=dict)
    log_file: Path | None = None
    quiet: bool = False
    status_file: Path | None = None  # where the ClientApp writes the server's run-end message
    warm: bool = True  # client.warm: no idle naps, ClientApps forked warm (False: Flower's SuperNode as shipped)
    log_format: str = "text"  # or "json": one JSON object a line (uaap.jsonlog), round events included

    def node_config(self) -> str:
        """The ``--node-config`` string the ClientApp reads (``client.app._setup``)."""
        items: dict[str, str] = {}
        if self.data is not None:
            items[NODE_DATA_PATH] = str(self.data)
            items[NODE_TARGET] = self.target
        if self.partition_id is not None:
            items[NODE_PARTITION_ID] = str(self.partition_id)
        if self.num_partitions is not None:
            items[NODE_NUM_PARTITIONS] = str(self.num_partitions)
        if self.he_secret_context is not None:
            items[NODE_HE_SECRET_CONTEXT] = str(self.he_secret_context)
        if self.status_file is not None:
            items[NODE_STATUS_FILE] = str(self.status_file)
        items.update(self.extra_node_config)
        # this client's own requirements, last so that no --node-config entry can override them (client.policy)
        secure = self.require_secure_aggregation
        if secure is None:
            secure = self.he_secret_context is not None
        items[NODE_POLICY] = DEPLOYED
        items[NODE_REQUIRE_SECURE] = str(secure).lower()
        items[NODE_REQUIRE_DP] = str(self.require_dp).lower()
        items[NODE_MAX_EPSILON] = repr(float(self.max_epsilon))
        return " ".join(f"{k}={_toml_value(v)}" for k, v in items.items())


def _toml_value(value: str) -> str:
    if re.fullmatch(r"-?\d+", value) or re.fullmatch(r"-?\d+\.\d*", value) or value in ("true", "false"):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) into its parts, with a clear error."""
    m = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d+)", address.strip())
    if not m:
        raise ConfigError(f"--server {address!r} is not host:port; e.g. --server 10.0.0.5:9093")
    return m.group(1), int(m.group(2))


def check_inputs(opt: ClientOptions) -> None:
    """Everything that can be checked without the server: data, keys, certificates."""
    if opt.data is None and opt.partition_id is None:
        raise ConfigError("give your data (--data FILE --target COLUMN) or a demo partition (--partition-id I)")
    if opt.data is not None:
        from uaap.data import load_table

        if not opt.target:
            raise ConfigError("--data needs --target COLUMN (the label column of your table)")
        data = load_table(opt.data, opt.target)  # raises DataError naming the problem
        if len(data.y) < 5:
            raise DataError(f"{opt.data} has {len(data.y)} rows; a client needs at least 5 to train and validate")
    if (
        opt.partition_id is not None
        and opt.num_partitions is not None
        and not 0 <= opt.partition_id < opt.num_partitions
    ):
        raise ConfigError(f"--partition-id {opt.partition_id} is outside 0..{opt.num_partitions - 1}")
    if opt.root_certificates is not None and not opt.root_certificates.is_file():
        raise KeyMaterialError(
            f"root certificate {str(opt.root_certificates)!r} does not exist (the federation's ca.pem)"
        )
    if opt.auth_key is not None:
        from uaap.certs import public_key_of

        public_key_of(opt.auth_key)  # parses, or a clear error
        if opt.root_certificates is None:
            raise ConfigError("SuperNode authentication (--auth-key) needs TLS: pass --root-certificates ca.pem")
    if opt.he_secret_context is not None:
        check_secret_context(opt.he_secret_context)


def check_secret_context(path: Path) -> None:
    """The HE context must exist, be private and hold a secret key (clients decrypt the global model)."""
    if not path.is_file():
        raise KeyMaterialError(f"HE secret context {str(path)!r} does not exist; get it from `uaap keys init`")
    from uaap.crypto import load_context

    hctx = load_context(path)  # raises KeyMaterialError for files that are not UAAP CKKS contexts
    if not hctx.has_secret_key:  # what the file is comes before how it is kept: a public.ckks is the wrong file
        raise KeyMaterialError(
            f"{path} is a public context (no secret key); clients need the secret context (secret.ckks from "
            "`uaap keys init`)"
        )
    if path.stat().st_mode & 0o077:
        raise KeyMaterialError(
            f"HE secret context {path} is readable by others (mode {path.stat().st_mode & 0o777:o}); chmod 600 it"
        )


def probe_server(opt: ClientOptions) -> None:
    """Wait (up to --max-wait-time) for the server to listen, then check its certificate against ours."""
    host, port = split_address(opt.server)
    deadline = time.monotonic() + opt.max_wait_time
    last: Exception | None = None
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=5)
            break
        except OSError as exc:
            last = exc
            if time.monotonic() > deadline:
                raise ClientError(
                    f"the server {host}:{port} is unreachable ({exc.strerror or exc}) after {opt.max_wait_time:g}s; "
                    "check the address, that `flower-server` runs and that the port is open",
                    EXIT_UNREACHABLE,
                ) from last
            time.sleep(1.0)
    with sock:
        if opt.root_certificates is None:
            return
        ctx = ssl.create_default_context(cafile=str(opt.root_certificates))
        try:
            with ctx.wrap_socket(sock, server_hostname=host):
                return
        except ssl.SSLCertVerificationError as exc:
            raise ClientError(
                f"the server's TLS certificate does not verify against {opt.root_certificates} "
                f"({exc.verify_message}); use the ca.pem of this federation",
                EXIT_TLS,
            ) from exc
        except ssl.SSLError as exc:
            raise ClientError(
                f"TLS handshake with {host}:{port} failed ({exc.reason}); is the server running without TLS "
                "(--insecure)? Then start this client with --insecure too",
                EXIT_TLS,
            ) from exc


# ---- the SuperNode ----------------------------------------------------------------------------


class FlowerClient:
    """A supervised ``flower-supernode``; ``run()`` blocks until it exits and explains why it did."""

    def __init__(self, opt: ClientOptions) -> None:
        self.opt = opt
        self.muted = False  # after the run ended: the SuperNode's shutdown chatter is not shown
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.failing_since: float | None = None  # first of an unbroken series of failed connection attempts
        self.gave_up = False  # Flower's own --max-wait-time fired (its process does not exit by itself)
        self.env = {**os.environ, **FLOWER_ENV}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.out = Emitter("uaap.flower-client", opt.log_format)
        self.rounds = RoundEvents(opt.partition_id)

    def command(self) -> list[str]:
        """The ``flower-supernode`` command line."""
        o = self.opt
        start = [sys.executable, "-m", "client.warm", "supernode"] if o.warm else [_bin("flower-supernode")]
        cmd = [*start, "--superlink", o.server, "--max-wait-time", f"{o.max_wait_time:g}"]
        cmd += ["--port", str(o.port or free_port())]
        cmd += ["--root-certificates", str(o.root_certificates)] if o.root_certificates else ["--insecure"]
        if o.auth_key is not None:
            cmd += ["--auth-supernode-private-key", str(o.auth_key)]
        node_config = o.node_config()
        if node_config:
            cmd += ["--node-config", node_config]
        return cmd

    def start(self) -> None:
        """Start the SuperNode; its output is echoed, kept for diagnosis and written to --log-file."""
        if self.opt.status_file is None:  # the run-end message lands here (client.app.run_end); removed on exit
            folder = Path(tempfile.mkdtemp(prefix="flower-client-"))
            self.opt = replace(self.opt, status_file=folder / "run-end.json")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - prctl only
        )
        threading.Thread(target=self._pump, daemon=True).start()
        self._say(f"SuperNode pid {self.proc.pid} -> {self.opt.server}")

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        log = open(self.opt.log_file, "a", encoding="utf-8") if self.opt.log_file else None  # noqa: SIM115
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            del self.lines[:-400]
            if _RETRY_PATTERN in line:
                self.failing_since = self.failing_since or time.monotonic()
            elif "Giving up reconnection" in line:  # Flower gives up but its SuperNode process keeps running
                self.gave_up = True
            elif not any(p in line for p in _STILL_FAILING):
                self.failing_since = None
            shown = [line] if not self.out.json else self.rounds.json_lines(line, self.out)
            if log:
                log.writelines(shown)
                log.flush()
            if not self.opt.quiet and not self.muted:
                sys.stdout.writelines(shown)
                sys.stdout.flush()
        if log:
            log.close()

    def wait(self) -> int:
        """Block until the SuperNode exits; 0, or a ClientError saying why it stopped.

        When its SuperLink goes away, Flower 1.42's SuperNode logs "Giving up reconnection" after
        ``--max-wait-time`` but its process keeps running (measured: still alive 10 minutes later). The launcher
        stops it then, or after --max-wait-time of failed connection attempts, and says the server is lost.
        """
        assert self.proc is not None
        while (rc := self.proc.poll()) is None:
            if (ended := self.run_end()) is not None:
                return self._finished(ended)
            since = self.failing_since
            if self.gave_up or (since is not None and time.monotonic() - since > self.opt.max_wait_time):
                self.stop()
                raise ClientError(
                    f"lost the server {self.opt.server}: no connection for {self.opt.max_wait_time:g}s "
                    "(--max-wait-time); the federation has ended or the server is down",
                    EXIT_UNREACHABLE,
                )
            time.sleep(0.5)
        time.sleep(0.3)  # let the pump read the last lines
        if (ended := self.run_end()) is not None:
            return self._finished(ended)
        if rc == 0:
            return 0
        raise self.diagnose(rc)

    def run_end(self) -> dict[str, str] | None:
        """The server's run-end message once the ClientApp has written it, else None."""
        path = self.opt.status_file
        if path is None or not path.is_file():
            return None
        try:
            return {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return None

    def _finished(self, ended: dict[str, str]) -> int:
        """The federation's run is over: stop the SuperNode and exit 0 (the server's failure is not ours)."""
        self.muted = True
        self.stop()
        status = ended.get(RUN_END, "")
        why = f": {ended[RUN_END_REASON]}" if status == "failed" and ended.get(RUN_END_REASON) else ""
        run = ended.get(RUN_END_RUN, "?")
        self.out(
            f"[flower-client] run {run} finished ({status}{why}); exiting", event=RUN_END, run_id=run, status=status
        )
        return 0

    def run(self) -> int:
        """Start and supervise; a refused key is retried until --max-wait-time (the server may still be
        registering keys when this client arrives), then reported."""
        deadline = time.monotonic() + self.opt.max_wait_time
        while True:
            self.lines, self.failing_since, self.gave_up = [], None, False
            self.start()
            try:
                return self.wait()
            except ClientError as exc:
                if exc.code != EXIT_AUTH or time.monotonic() > deadline:
                    raise
                self.stop()
                self._say("authentication refused; retrying in 5 s (the server may still be registering keys)")
                time.sleep(5.0)

    def diagnose(self, rc: int) -> ClientError:
        """Turn the SuperNode's exit code and last lines into one clear message."""
        text = "\n".join(self.lines[-60:])
        low = text.lower()
        if any(p in low for p in _AUTH_PATTERNS):
            return ClientError(
                "the server refused this client's authentication key (code 2004): its public key is not registered "
                f"or --auth-key {self.opt.auth_key} is not the key that was registered; send the matching .pub to "
                "the server operator (`flower-server --auth-keys`)",
                EXIT_AUTH,
            )
        if any(p in low for p in _TLS_PATTERNS) and "certificate" in low:
            return ClientError(
                f"TLS failed: the server's certificate does not match --root-certificates {self.opt.root_certificates}",
                EXIT_TLS,
            )
        if "exit code: 305" in low or "could not establish a connection" in low or "unavailable" in low:
            return ClientError(
                f"lost the server {self.opt.server}: no connection within --max-wait-time {self.opt.max_wait_time:g}s "
                "(server stopped, wrong address, or a TLS/--insecure mismatch)",
                EXIT_UNREACHABLE,
            )
        tail = "\n".join(self.lines[-8:])
        return ClientError(f"flower-supernode exited with code {rc}; last lines:\n{tail}", EXIT_SUPERNODE)

    def stop(self) -> None:
        """Stop the SuperNode, its SuperExec and any ClientApp process."""
        if self.proc is not None and self.proc.poll() is None:
            stop_tree(self.proc.pid)
        elif self.proc is not None:
            for child in descendants(self.proc.pid):
                stop_tree(child)

    def cleanup(self) -> None:
        """Stop everything and remove the run-end file's folder."""
        self.stop()
        if self.opt.status_file is not None:
            shutil.rmtree(self.opt.status_file.parent, ignore_errors=True)

    def _say(self, text: str) -> None:
        if not self.opt.quiet:
            self.out(f"[flower-client] {text}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FLOWER_LINE = re.compile(r"^(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\b[^:]*:\s*(.*)$")
_RUN_ROUND = re.compile(r"^\[RUN (\d+)(?:, ROUND ([^\]]+))?\]$")


class RoundEvents:
    """Flower's SuperNode lines as JSON objects, with a ``round`` event when a reply was sent (or failed): the
    Flower run id, the round, this node and partition, the message type and seconds from receiving to sending."""

    def __init__(self, partition: int | None) -> None:
        self.partition = partition
        self.node: int | None = None
        self.run: int | None = None
        self.group = ""
        self.kind = ""
        self.received = 0.0

    def json_lines(self, line: str, out: Emitter) -> list[str]:
        """The JSON lines for one line of the SuperNode's output (none for Flower's empty spacer lines)."""
        text = _ANSI.sub("", line).rstrip()
        m = _FLOWER_LINE.match(text)
        level, message = (m.group(1), m.group(2).strip()) if m else ("INFO", text)
        if not message:
            return []
        lines = [out.format(message, level="WARNING" if level == "WARN" else level, logger="flwr.supernode")]
        if (node := re.match(r"SuperNode ID: (\d+)", message)) is not None:
            self.node = int(node.group(1))
        elif (head := _RUN_ROUND.match(message)) is not None:
            self.run, self.group = int(head.group(1)), head.group(2) or ""
        elif (got := re.match(r"Receiving: (\w+) message", message)) is not None:
            self.kind, self.received = got.group(1), time.monotonic()
        elif message == "Sent successfully" or message.startswith("Failed to send message"):
            status = "sent" if message == "Sent successfully" else "failed"
            seconds = round(time.monotonic() - self.received, 3) if self.received else None
            fields: dict[str, Any] = {"event": "round", "flower_run_id": self.run, "node": self.node}
            fields["partition"] = self.partition
            fields |= {"message_type": self.kind, "duration": seconds, "status": status}
            fields["round"] = int(self.group) if self.group.isdigit() else self.group or None
            what = f"round {self.group}" if self.group.isdigit() else self.group or "message"
            lines.append(out.format(f"{what}: {self.kind} reply {status} after {seconds} s", **fields))
            self.received = 0.0
        return lines


# ---- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """``flower-client`` flags."""
    p = argparse.ArgumentParser(prog="flower-client", description="Join a UAAP federation with your own data.")
    p.add_argument("--server", required=True, help="the SuperLink's host:port (flower-server)")
    p.add_argument("--root-certificates", help="the federation's CA certificate (ca.pem) to verify the server")
    p.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")
    p.add_argument("--auth-key", help="this client's SuperNode private key (client-<i>.key from `uaap certs init`)")
    p.add_argument("--data", help="your table (.csv or .parquet); it never leaves this machine")
    p.add_argument("--target", default="", help="label column of --data")
    p.add_argument("--partition-id", type=int, help="demo: use partition I of the bundled dataset")
    p.add_argument("--num-partitions", type=int, help="demo: number of partitions (the number of clients)")
    p.add_argument("--he-secret-context", help="the CKKS secret context (secure aggregation; mode 0600)")
    p.add_argument(
        "--allow-plaintext",
        action="store_true",
        help="with --he-secret-context, still answer a server that asks for plaintext updates (default: refuse)",
    )
    p.add_argument(
        "--require-dp", action="store_true", help="refuse any round without example-level DP (dp-local) on this client"
    )
    p.add_argument(
        "--max-epsilon",
        type=float,
        default=0.0,
        help="with --require-dp: refuse a target epsilon above E, and any update that takes this client past E",
    )
    p.add_argument(
        "--max-wait-time", type=float, default=60.0, help="seconds to keep trying to reach the server (default 60)"
    )
    p.add_argument("--port", type=int, default=0, help="the SuperNode's own local port (default: a free one)")
    p.add_argument("--node-config", action="append", default=[], metavar="K=V", help="extra node config (repeatable)")
    p.add_argument("--log-file", help="also write the SuperNode's output here")
    p.add_argument("--quiet", action="store_true", help="do not echo the SuperNode's output")
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text (default: the SuperNode's lines as they are) or json: one JSON object a line (time, level, "
        "logger, message; round events with run, round, node, partition, duration, status); secrets redacted",
    )
    p.add_argument(
        "--cold",
        action="store_true",
        help="run Flower's SuperNode as shipped (3 s idle naps, a fresh flwr-clientapp importing torch per message); "
        "default: rounds near the polling floor with short polls and ClientApps forked warm (client/warm.py)",
    )
    p.add_argument("--warm", action="store_true", help="no effect: warm is the default (kept for older scripts)")
    return p


def options_from_args(args: argparse.Namespace) -> ClientOptions:
    """Validated options (paths made absolute)."""
    if args.insecure and args.root_certificates:
        raise ConfigError("--insecure and --root-certificates exclude each other; drop one")
    if args.cold and args.warm:
        raise ConfigError("--cold and --warm exclude each other; warm is the default: drop --warm")
    if not args.insecure and not args.root_certificates:
        raise ConfigError("give --root-certificates ca.pem (the federation's CA) or --insecure for a local test")

    def path(value: str | None) -> Path | None:
        return Path(value).expanduser().resolve() if value else None

    if args.max_epsilon and not (math.isfinite(args.max_epsilon) and args.max_epsilon > 0 and args.require_dp):
        raise ConfigError(f"--max-epsilon {args.max_epsilon} needs --require-dp and a positive finite value (e.g. 8)")
    extra = {}
    for item in args.node_config:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--node-config {item!r} is not KEY=VALUE")
        extra[key.strip()] = value.strip()
    return ClientOptions(
        server=args.server,
        root_certificates=path(args.root_certificates),
        auth_key=path(args.auth_key),
        data=path(args.data),
        target=args.target,
        partition_id=args.partition_id,
        num_partitions=args.num_partitions,
        he_secret_context=path(args.he_secret_context),
        require_secure_aggregation=False if args.allow_plaintext else None,
        require_dp=args.require_dp,
        max_epsilon=args.max_epsilon,
        max_wait_time=args.max_wait_time,
        port=args.port,
        extra_node_config=extra,
        log_file=path(args.log_file),
        quiet=args.quiet,
        warm=not args.cold,
        log_format=args.log_format,
    )


def main(argv: list[str] | None = None) -> int:
    """Console script ``flower-client``: 0 when the run finished; 130/143 stopped by Ctrl-C/SIGTERM; 2 bad input,
    3 unreachable, 4 TLS, 5 auth, 1 other."""
    args = build_parser().parse_args(argv)
    raise_on_sigterm()
    out = Emitter("uaap.flower-client", args.log_format)
    client: FlowerClient | None = None
    try:
        opt = options_from_args(args)
        check_inputs(opt)
        probe_server(opt)
        client = FlowerClient(opt)
        return client.run()
    except ClientError as exc:
        out(f"flower-client: error: {exc}", level="ERROR", err=True)
        return exc.code
    except UaapError as exc:
        out(f"flower-client: error: {exc}", level="ERROR", err=True)
        return 2
    except KeyboardInterrupt as exc:
        out("flower-client: stopped", level="WARNING", err=True)
        return stop_code(exc)
    finally:
        if client is not None:
            client.cleanup()


if __name__ == "__main__":
    sys.exit(main())
