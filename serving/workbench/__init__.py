"""The workbench: one Streamlit app (``uaap ui``) over the whole workflow, with pages for data, train, runs and
compare, explain, privacy and predict.

The UI process reads tables, profiles, MLflow runs and the privacy ledger through the library, but never trains or
explains itself: training, ``uaap explain`` and ``uaap register`` run as subprocesses of the ``uaap`` CLI, whose
output the page streams, so torch and Ray never load in the Streamlit process. Predictions go over HTTP to a
running ``uaap serve``. This module holds what the pages share, without Streamlit (the pages are in
:mod:`serving.workbench.pages`, the entry script in ``app.py``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APP = Path(__file__).resolve().parent / "app.py"
PAGES = ("data", "train", "runs", "explain", "privacy", "predict")
MODELS = ("logreg", "mlp", "random_forest", "xgboost")  # what the train page offers (`uaap models` lists all)
PROGRESS = re.compile(r"\b(?:round|epoch)\s+(\d+)\s*/\s*(\d+)|(\d{1,3})%")
RUN_IN_OUTPUT = re.compile(r"runs/([A-Za-z0-9._-]+)/(?:model\.|checkpoints)")
UPLOAD_SUFFIXES = ("csv", "tsv", "json", "jsonl", "parquet")


def ui_command(port: int, address: str = "127.0.0.1") -> list[str]:
    """The ``streamlit run`` command line that serves the workbench."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port), "--server.address", address,
        "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",
    ]  # fmt: skip


def cli(*args: str) -> list[str]:
    """The command line of ``uaap ARGS`` in this interpreter (the pages run the CLI, never the library's training)."""
    return [sys.executable, "-m", "uaap.cli", *args]


@dataclass(frozen=True)
class TrainForm:
    """What the train page asks: central training or a federated simulation, on a bundled set or a table."""

    mode: str = "central"  # central | federated
    dataset: str = "breast_cancer"  # a bundled data set, or "table" for ``source``/``target``
    source: str = ""
    target: str = ""
    model: str = "logreg"
    epochs: int = 3  # central
    rounds: int = 2  # federated
    clients: int = 2
    he: bool = False  # CKKS secure aggregation
    dp_local: bool = False  # DP-SGD on every client
    dp_central: bool = False  # client-level DP on the server
    epsilon: float = 8.0
    extra: tuple[str, ...] = field(default_factory=tuple)


def train_args(form: TrainForm) -> list[str]:
    """The ``uaap train`` / ``uaap simulate`` arguments of the form (checked by the CLI's own parser)."""
    from uaap.errors import ConfigError

    if form.mode not in ("central", "federated"):
        raise ConfigError(f"mode {form.mode!r} is not one of central, federated")
    if form.dataset == "table":
        if not form.source or not form.target:
            raise ConfigError("a table needs a source and a target column: pick them on the data page")
        data = ["--data-path", form.source, "--target", form.target]
    else:
        data = ["--dataset", form.dataset]
    data += ["--model", form.model]
    if form.mode == "central":
        if form.he or form.dp_local or form.dp_central:
            raise ConfigError("HE and DP apply to a federated simulation; switch the mode to federated")
        return ["train", *data, "--epochs", str(form.epochs), *form.extra]
    args = ["simulate", *data, "--num-rounds", str(form.rounds), "--num-clients", str(form.clients)]
    if form.he:
        args += ["--secure-aggregation", "ckks"]
    if form.dp_local:
        args += ["--dp-local", "true", "--dp-target-epsilon", f"{form.epsilon:g}"]
    if form.dp_central:
        args += ["--dp-central", "true"]
    return [*args, *form.extra]


def stream(args: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``uaap ARGS`` and yield its output (stdout and stderr) line by line; the last item is ``"exit N"``."""
    full = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1", COLUMNS="110", TERM="dumb")
    proc = subprocess.Popen(
        cli(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=full,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            yield line.rstrip("\n")
    finally:
        if proc.poll() is None:  # the page went away mid-run: stop the child
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        code = proc.wait()
    yield f"exit {code}"


def progress(line: str) -> float | None:
    """The share done that a line of output announces (``round 2/5``, ``epoch 3/10``, a bar's ``40%``), if any."""
    m = PROGRESS.search(line)
    if m is None:
        return None
    if m.group(3) is not None:
        return min(int(m.group(3)), 100) / 100
    done, total = int(m.group(1)), int(m.group(2))
    return min(done / total, 1.0) if total > 0 else None


def run_of(lines: list[str], before: set[str]) -> str | None:
    """The run a training made: named in its output, else the one new run folder."""
    from uaap import workspace

    for line in reversed(lines):
        m = RUN_IN_OUTPUT.search(line)
        if m:
            return m.group(1)
    new = sorted(set(workspace.list_runs()) - before)
    return new[-1] if new else None


def explain_files(run_id: str) -> tuple[list[Path], dict[str, Any] | None]:
    """The PNG plots ``uaap explain`` wrote for a run, and its ``shap.json`` report (None before it ran)."""
    from uaap import workspace

    folder = workspace.run_dir(run_id).path / "explain"
    if not folder.is_dir():
        return [], None
    report = folder / "shap.json"
    found = json.loads(report.read_text()) if report.is_file() else None
    return sorted(folder.glob("*.png")), found


def save_upload(name: str, data: bytes) -> Path:
    """An uploaded table, kept in the workspace's ``uploads/`` (the name reduced to safe characters)."""
    from uaap import workspace
    from uaap.errors import DataError

    stem, _, suffix = Path(name).name.rpartition(".")
    if suffix.lower() not in UPLOAD_SUFFIXES:
        raise DataError(f"{name!r} is not a table this reads; upload one of: {', '.join(UPLOAD_SUFFIXES)}")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:80] or "table"
    folder = workspace.home() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}.{suffix.lower()}"
    path.write_bytes(data)
    return path


class ApiError(Exception):
    """The API answered with an error, or did not answer; the message never holds the key."""


def call_api(url: str, key: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One JSON request to ``uaap serve`` at ``url`` with the API key (sent as ``X-API-Key``, never logged)."""
    if not re.match(r"^https?://[^\s/]+", url):
        raise ApiError(f"API URL {url!r} should look like http://127.0.0.1:8000")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    request.add_header("X-API-Key", key)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - http(s) checked above
            found: dict[str, Any] = json.loads(response.read())
            return found
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", "")
        except ValueError:
            detail = ""
        raise ApiError(f"{exc.code}: {json.dumps(detail) if not isinstance(detail, str) else detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ApiError(f"no answer from {url} ({getattr(exc, 'reason', exc)}); is `uaap serve` running?") from None


def example_row(schema: list[dict[str, Any]], run_id: str | None = None) -> dict[str, Any]:
    """A row to try: the run's first test row when it trained on a bundled set, else one value per column type."""
    if run_id:
        try:
            from uaap import workspace
            from uaap.data import BUNDLED, load_bundled, train_test

            cfg = workspace.existing_run(run_id).read_config()
            if cfg.dataset in BUNDLED:
                raw = train_test(load_bundled(cfg.dataset), cfg.test_fraction, cfg.seed).test
                names = [c["name"] for c in schema]
                if list(raw.feature_names) == names:
                    return {n: float(v) for n, v in zip(names, raw.X[0], strict=True)}
        except Exception:  # noqa: BLE001 - only a nicer example is lost
            pass
    fill = {"number": 0.0, "string": "example", "datetime": "2024-01-01T00:00"}  # a word: a free-text column needs one
    return {c["name"]: fill.get(c["type"]) for c in schema}
