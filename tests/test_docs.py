"""The docs are tests: every command block of README.md and docs/*.md runs as written (``tests/docblocks.py``).

Each block has a :class:`Spec` below, keyed ``doc#heading`` (``/n`` for the n-th block under one heading): the
lines its output must show, its time limit and the documented variables or appended flags that make it shorter,
which the doc names under the block. A block without a spec, a spec without a block, a scale-down the doc does
not mention, or a command in an untagged block fails here, so a doc cannot drift from the code unnoticed.

The blocks of one doc run in document order in one folder (README: a copy of the checkout with this ``.venv``;
docs: an empty folder with the installed commands on ``PATH``), each in a fresh shell, as if each had its own
terminal. A block that serves (a server, a dashboard) runs in the background until it is ready, then is stopped
the way a user would stop it (Ctrl-C or SIGTERM) or joined when a later block is done. Nothing a block starts
may outlive it.

While working on one doc, ``DOCTEST_BLOCKS="README.md#using-it/2,README.md#using-it/3"`` runs only those blocks
(the suite always runs them all).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.docblocks import DOCS, REPO, Block, DocSession, Result, Spec, blocks, checkout_copy, untagged_commands

ROUNDS = {"UAAP_NUM_ROUNDS": "2"}
# What issue 22 found printed on every run (kept under -v): a doc block must not show it.
NOISE = (r"SADeprecationWarning", r"run_simulation.{0,20}deprecated", r"_MLModelProxy", r"oneDNN custom operations")

SPECS: dict[str, Spec] = {
    # ---- README.md (run in a copy of the checkout) -------------------------------------------------------
    "README.md#two-commands": Spec(
        expect=(
            r"1/3 federated simulation on Ray",
            r"central training \(no federation\)",
            r"2/3 cross-device: 1000 clients",  # client-level DP where it means something, and its twin
            r"(?m)^client-level DP +2 +0\.\d{4} +\d\.\d{3} +0\.0001$",  # user epsilon from the ledger
            r"(?m)^non-private twin +2 +0\.\d{4} +- +-$",
            r"Success: no issues found",
            r"\d+ passed",
        ),
        refuse=NOISE,
        env={"DEMO_FLAGS": "--rounds 2 --central-epochs 2", "PYTEST_ARGS": "tests/test_architecture.py"},
        timeout=900,
        slow=True,
    ),
    "README.md#using-it": Spec(
        expect=(
            r"run first\b",
            r"resuming first after round 2",
            r"1000 clients, fedprox .* 2/2 completed",
            r"(?m)^ +1 +20 ",  # 20 of the 1000 clients sampled in round 1
            r"(?s)(test: loss [\d.]+, accuracy 0\.[89].*){2}",  # both central trainings learn digits
            r"max example-level epsilon ([0-7]\.\d+|8\.0+)\b",  # DP-SGD within its target of 8
            r"runs in \S+\.uaap",
            r"best: \w+ CV accuracy",
            r"held-out test: best \(\w+\) [\d.]+; family defaults",
            r"2 simulations of 4 clients",
            r"best [\d.]+ vs default [\d.]+; 2 trials",
            r"runs compared on",
            r"fingerprint: +[0-9a-f]{64}",
            r"plaintext model: \S+/runs/first/model\.npz",
            *(rf"(?m)^│ {fmt} +│ ok " for fmt in ("onnx", "tflite", "coreml", "c")),
        ),
        refuse=NOISE,
        env={**ROUNDS, "UAAP_LOCAL_EPOCHS": "1"},
        append={
            "uaap train": "--epochs 3",
            "uaap automl": "--time-budget 20",
            "uaap tune-federated": "--trials 2 --num-clients 4",
        },
        timeout=1500,
        slow=True,
    ),
    "README.md#using-it/3": Spec(
        # Flower's own local SuperLink with runtime installation on: uv installs nothing (the app is pre-installed),
        # both rounds aggregate all 4 SuperNodes (run config and federation config reach the app), the run completes
        expect=(
            r"Installing application dependencies",
            r"No additional application dependencies needed installation",
            r"(?s)(aggregate_train: Received 4 results and 0 failures.*){2}",
            r"finished:completed",
        ),
        refuse=(r"Installed: \[", r"nvidia-", r"triton", r"finished:failed"),
        env={"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": "39191", "FLWR_LOCAL_CONTROL_API_PORT": "39193"},
        timeout=900,
        slow=True,
    ),
    "README.md#using-it/2": Spec(
        background=True, ready=r"URL: http://\S+:8501", stop="SIGINT", rc=130, timeout=120, slow=True
    ),
    # ---- docs/configuration.md ---------------------------------------------------------------------------
    "docs/configuration.md#configuration-reference": Spec(
        expect=(r"seed = 7 +# --seed", r"run\.toml: valid"), timeout=120
    ),
    # ---- docs/data.md (an empty folder) ------------------------------------------------------------------
    "docs/data.md#1-a-table-and-its-profile": Spec(
        expect=(
            r"wrote visits\.csv: 1200 rows",
            r"target 'label': classification, 2 classes",
            r"(?m)^│ notes .*high cardinality",
            r"report: \S+/\.uaap/profiles/visits-\S+\.html",
        ),
        timeout=120,
    ),
    "docs/data.md#2-train-on-it-centrally-and-federated": Spec(
        expect=(
            r"test: loss [\d.]+, accuracy 0\.[6-9]",  # yes/no is 0.51 at best without learning
            r"(?s)run visits\b.*(?m:^ +3 +3 .* 0\.[6-9]\d{3} +- +[\d.]+$)",  # round 3's test accuracy
            r"(?s)run visits-cost\b.*(?m:^round +clients +loss +loss +R2 )",  # the cost target is a regression
            r"(?s)(3 clients, fedprox .* 3/3 completed.*){2}",
        ),
        refuse=NOISE,
        timeout=900,
        slow=True,
    ),
    "docs/data.md#3-export-what-a-device-runs": Spec(
        expect=(
            r"(?m)^│ onnx +│ ok ",
            r"(?m)^│ c +│ ok ",
            r"bundles in: \S+/runs/visits/exports",
            r"(?m)^│ visits +│ completed",
        ),
        refuse=NOISE,
        timeout=300,
        slow=True,
    ),
    # ---- docs/unsupervised.md ----------------------------------------------------------------------------
    "docs/unsupervised.md#1-look-at-a-table-first-central": Spec(
        expect=(
            r"silhouette: 0\.\d+",
            r"adjusted_rand: 0\.[89]",  # wine's three cultivars
            r"plot: \S*wine-kmeans\.png",
            r"kl_divergence: \d",
            r"plot: \S*wine-tsne\.png",
        ),
        refuse=NOISE,
        timeout=120,
    ),
    # ---- docs/monitoring.md ------------------------------------------------------------------------------
    "docs/monitoring.md#1-a-model-to-audit": Spec(
        expect=(r"wrote new\.csv: 1500 rows", r"test: loss [\d.]+, accuracy 0\.[6-9]"), refuse=NOISE, timeout=120
    ),
    "docs/monitoring.md#2-fairness-by-group": Spec(
        expect=(
            r"(?m)^│ premium +│ \d+ +│ 0\.\d{4} ",
            r"demographic parity difference 0\.\d{4}",
            r"held-out half, after ThresholdOptimizer",
            r"wrote \S+/monitor/fairness-plan\.png",
            r"wrote \S+/monitor/fairness-plan-mitigation\.png",
        ),
        refuse=NOISE,
        timeout=120,
    ),
    "docs/monitoring.md#3-drift-of-new-rows": Spec(
        expect=(
            r"drifted: none; predictions drifted: no",
            r"drifted: income, plan; predictions drifted: (yes|no)",
            r"wrote \S+/monitor/drift-[\d-]+\.png",
        ),
        refuse=NOISE,
        timeout=120,
    ),
    # ---- docs/serving.md (an empty folder) ---------------------------------------------------------------
    "docs/serving.md#1-a-model-in-the-registry": Spec(
        expect=(
            r"wrote visits\.csv: 600 rows",
            r"(?m)^│ onnx +│ ok ",
            r"registered visits version 1 from run central-\S+ \(runtime onnxruntime, alias @champion\)",
        ),
        refuse=NOISE,
        timeout=180,
    ),
    "docs/serving.md#2-an-api-key": Spec(expect=(r"(?m)^[0-9a-f]{12} +notebook +predict,admin +600 ",), timeout=60),
    "docs/serving.md#3-serve-and-predict": Spec(
        expect=(
            r'"runtime":"onnxruntime","predictions":\[\{"prediction":"(yes|no)","probabilities":\[',
            r'\{"loc":\["body","row","age"\],"msg":"Input should be a valid number"',
            r'\{"version":"1","runtime":"onnxruntime","metrics":0\.\d+\}',
            r'uaap_requests_total\{method="POST",route="/v1/models/\{name\}/predict",status="422"\} 1',
            r'"logger": "uvicorn\.error", "message": "Finished server process',
        ),
        refuse=(*NOISE, r"uaap_[0-9a-f]{12}_"),
        timeout=120,
    ),
    "docs/serving.md#4-the-workbench": Spec(
        background=True, ready=r"URL: http://127\.0\.0\.1:8502", stop="SIGTERM", rc=143, timeout=120
    ),
    "docs/monitoring.md#4-why-the-model-decides-as-it-does-shap-central": Spec(
        expect=(
            r"tree explainer, output P\(yes\), base value 0\.\d+, 300 rows",
            r"additivity error (0\.00e\+00|\d\.\d\de-(1\d|0[7-9]))",  # within 1e-6
            r"(?m)^│ plan +│ 0\.\d{4} ",
            r"wrote \S+/explain/shap-waterfall\.png",
            r"PDP of income: P\(yes\) from [01]\.\d{4} to [01]\.\d{4} over 20 values, 300 ICE curves",
            r"wrote \S+/explain/pdp-plan\.png",
        ),
        refuse=NOISE,
        timeout=120,
    ),
    "docs/monitoring.md#5-one-row-with-lime-and-which-columns-matter": Spec(
        expect=(
            r"LIME, row 0: P\(yes\) 0\.\d{4}, LIME's local fit -?\d\.\d{4}",
            r"held at the row's value \(LIME cannot perturb them\): visit, notes",
            r"wrote \S+/explain/lime-row-0\.png",
            r"300 rows, accuracy 0\.\d{4}; permutation importance",
            r"wrote \S+/explain/importance\.png",
        ),
        refuse=NOISE,
        timeout=120,
    ),
    "docs/monitoring.md#6-when-drift-warrants-it-continual-training": Spec(
        expect=(r"2 clients, fedprox .* 2/2 completed", r"run folder: \S+/runs/phase1"), refuse=NOISE, timeout=240
    ),
    "docs/monitoring.md#6-when-drift-warrants-it-continual-training/2": Spec(
        expect=(
            r"drifted: income, plan; predictions drifted: (yes|no)",
            r"2 feature\(s\) drifted \(income, plan\): continue training on the new rows with `uaap simulate "
            r"--config \S+/runs/phase1/config\.toml --continue-from phase1 --data shifted\.csv`",
        ),
        refuse=NOISE,
        timeout=120,
    ),
    "docs/monitoring.md#6-when-drift-warrants-it-continual-training/3": Spec(
        expect=(
            r"run folder: \S+/runs/phase2",
            r"Continues\s+run\s+phase1:\s+user-level\s+epsilon\s+7\.077\s+after\s+its\s+2\s+rounds",
            r"(?m)^ +2 +1\.00 +1\.000 +10\.726 ",
        ),
        refuse=NOISE,
        timeout=300,
    ),
    # ---- docs/forecasting.md (an empty folder) ------------------------------------------------------------
    "docs/forecasting.md#1-a-table-of-three-stores-a-gru-beside-seasonal-naive": Spec(
        expect=(
            r"central gru on csv",
            r"forecast-mae \d+\.\d{4}",
            r"forecast-mase \d\.\d{4}",
            r"naive-mase \d\.\d{4}",
            r"prophet-mase \d\.\d{4}",
            r"model: \S+/runs/central-\S+/model\.npz",
        ),
        refuse=NOISE,
        timeout=180,
    ),
    "docs/forecasting.md#2-the-statistical-models-on-the-same-table": Spec(
        expect=tuple(
            rf"(?m)^{name} +MAE \d+\.\d{{3}}  sMAPE \d+\.\d\d%  MASE \d\.\d{{3}}$"
            for name in ("seasonal_naive", "arima", "ets", "prophet")
        ),
        refuse=NOISE,
        timeout=180,
    ),
    "docs/forecasting.md#3-expanding-window-cross-validation-picks-a-per-series-model": Spec(
        expect=(
            r"AutoML leaderboard automl-\S+ \(mase, min\)",
            r"best: (prophet|seasonal_naive) CV mase \d\.\d{4}",
            r"held-out test: best \((prophet|seasonal_naive)\) \d\.\d{4}",
            r"model: \S+/runs/automl-\S+/forecaster\.json",
        ),
        refuse=NOISE,
        timeout=180,
    ),
    "docs/forecasting.md#4-the-same-stores-federated-one-store-per-client": Spec(
        expect=(
            r"round +clients +loss +loss +MASE +loss +MASE",  # the round table on the horizon forecast's MASE
            r"(?m)^ +5 +3 +\d\.\d{4} +\d\.\d{4} +\d\.\d{4} ",
            r"runs compared on their final mase",
            r"stores-federated",
        ),
        refuse=NOISE,
        timeout=240,
    ),
    # ---- docs/deploy.md (an empty folder, the installed commands on PATH) -------------------------------
    "docs/deploy.md#0-install": Spec(
        expect=(r"Requirement already satisfied: uaap",), env={"PIP_NO_INDEX": "1"}, timeout=180
    ),
    "docs/deploy.md#0-install/2": Spec(timeout=120),
    "docs/deploy.md#1-certificates-and-supernode-keys-once-by-the-federation-operator": Spec(
        expect=(r"wrote certificates and keys",), timeout=60
    ),
    "docs/deploy.md#2-secure-aggregation-keys-once-by-the-data-owners": Spec(expect=(r"public\.ckks",), timeout=60),
    "docs/deploy.md#3-start-the-server": Spec(
        # the DP recipe learns: breast_cancer's majority class is 0.63 of the rows
        expect=(r"round 2/2: 3/3 clients replied, [\d.]+s, accuracy 0\.(8|9)", r"run hospital-study-1 completed"),
        env=ROUNDS,
        background=True,
        ready=r"Fleet API on 0\.0\.0\.0:9093",
        timeout=900,
        slow=True,
    ),
    "docs/deploy.md#4-start-each-client": Spec(
        expect=(r"(?s)(run \S+ finished.*){3}",), joins=("docs/deploy.md#3-start-the-server",), timeout=900, slow=True
    ),
    "docs/deploy.md#the-final-model": Spec(
        expect=(r"plaintext model: \S+model\.npz", r"hospital-study-1 \W+ completed"), timeout=120, slow=True
    ),
    "docs/deploy.md#6-mlflow-and-the-dashboard": Spec(
        background=True,
        # each of MLflow's 4 uvicorn workers says so once it serves; a Ctrl-C while one is still importing MLflow
        # (its parent's "Uvicorn running" comes 20 s earlier on a busy machine) waits for that import to end
        ready=r"(?s)(Application startup complete.*){4}",
        stop="SIGINT",
        rc=0,
        settle=1.0,
        timeout=240,
        slow=True,
    ),  # fmt: skip
    "docs/deploy.md#6-mlflow-and-the-dashboard/2": Spec(
        background=True, ready=r"URL: http://127\.0\.0\.1:8501", stop="SIGTERM", rc=143, timeout=120, slow=True
    ),
    "docs/deploy.md#7-everything-on-one-host-with-docker-compose": Spec(
        skip="needs a Docker engine (`docker info`); tests/test_compose.py checks the file without one",
        skip_unless="docker info",
        timeout=1800,
        slow=True,
    ),
}


def _all_blocks() -> list[Block]:
    return [b for doc in DOCS for b in blocks(doc)]


def _slow(doc: str) -> bool:
    return any(SPECS[b.key].slow for b in blocks(doc) if b.key in SPECS)


# ---- the docs and the specs agree ------------------------------------------------------------------------


def test_every_block_has_a_spec_and_every_spec_a_block() -> None:
    keys = [b.key for b in _all_blocks()]
    assert len(keys) == len(set(keys)), f"two blocks share a key: {sorted(k for k in keys if keys.count(k) > 1)}"
    assert sorted(set(keys) - set(SPECS)) == [], "blocks without a spec in tests/test_docs.py (add one)"
    assert sorted(set(SPECS) - set(keys)) == [], "specs whose block is gone (remove or rename them)"


def test_scale_down_is_documented_under_each_block() -> None:
    """The doc says, under the block, every variable and appended flag the tests use to make it shorter."""
    missing = [
        f"{b.key} (line {b.line}): {token!r}"
        for b in _all_blocks()
        for token in (SPECS[b.key].scale_tokens() if b.key in SPECS else ())
        if token not in re.sub(r"\s+", " ", b.after.replace("`", ""))
    ]
    assert missing == []


def test_no_command_hides_in_an_untagged_block() -> None:
    assert [line for doc in DOCS for line in untagged_commands(doc)] == [], "tag these blocks ```bash"


# ---- running them ----------------------------------------------------------------------------------------


def _params() -> list[object]:
    out: list[object] = []
    for doc in DOCS:
        marks = [pytest.mark.slow] if _slow(doc) else []
        out.append(pytest.param(doc, marks=marks, id=doc))
    return out


@pytest.fixture
def doc_session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocSession]:
    doc = request.node.callspec.params["doc"]
    home = tmp_path / "home"
    home.mkdir()
    if doc == "README.md":
        if not (REPO / ".venv" / "bin" / "python").exists():
            pytest.skip("README blocks run from a checkout with its .venv (make install)")
        cwd = checkout_copy(tmp_path / "checkout")
        if (REPO / ".mypy_cache").is_dir():  # a warm cache, as in a checkout where make test ran before
            shutil.copytree(REPO / ".mypy_cache", cwd / ".mypy_cache", dirs_exist_ok=True)
        session = DocSession(cwd, home)
    else:
        cwd = tmp_path / "work"
        cwd.mkdir()
        session = DocSession(cwd, home, extra_path=str(Path(_venv_bin())))
    yield session
    strays = session.close()
    assert strays == [], f"processes left running after the doc's blocks: {strays}"


def _venv_bin() -> str:
    import sys

    return str(Path(sys.executable).parent)


def _skip_reason(spec: Spec) -> str:
    if not spec.skip:
        return ""
    probe = subprocess.run(spec.skip_unless, shell=True, capture_output=True, timeout=60)
    return spec.skip if probe.returncode != 0 else ""


@pytest.mark.parametrize("doc", _params())
def test_doc_runs_as_written(doc: str, doc_session: DocSession, record_property: Callable[[str, object], None]) -> None:
    """Every block of ``doc`` in order: exit code, key lines, nothing left behind; times go to the report."""
    failures: list[str] = []
    timings: list[str] = []
    only = {k.strip() for k in os.environ.get("DOCTEST_BLOCKS", "").split(",") if k.strip()}
    unspecified = [f"{b.key} (line {b.line})" for b in blocks(doc) if b.key not in SPECS]
    assert unspecified == [], "blocks without a spec in tests/test_docs.py: add one saying what each must print"
    for block in blocks(doc):
        spec = SPECS[block.key]
        if only and block.key not in only:
            continue
        if reason := _skip_reason(spec):
            timings.append(f"{block.key}: skipped ({reason})")
            continue
        result = doc_session.run(block, spec)
        joined = [(key, doc_session.join(key)) for key in spec.joins]
        for key, res in [(block.key, result), *joined]:
            problem = _check(key, SPECS[key], res)
            if res.rc is not None or not SPECS[key].background or SPECS[key].stop:
                timings.append(f"{key}: {res.seconds:.0f}s" + (f" FAILED: {problem}" if problem else ""))
            if problem:
                failures.append(f"--- {key}: {problem}\n{res.output[-4000:]}")
        if failures:
            break  # later blocks build on this one
    record_property("block_times", "; ".join(timings))
    print("\n".join(timings))
    assert not failures, "\n".join(failures)
    # MLflow's default artifact store is ./mlruns of whatever folder a command runs in: the workspace holds it
    assert not (doc_session.cwd / "mlruns").exists(), "MLflow wrote artifacts outside the workspace (./mlruns)"


def _check(key: str, spec: Spec, result: Result) -> str:
    if result.rc is None and spec.stop:
        return f"did not stop within {spec.stop_within:g}s of {spec.stop}"
    if result.rc is None and not spec.background:
        return f"did not finish within {spec.timeout:g}s"
    if spec.background and result.rc is None:
        return ""  # still running: joined later
    if result.rc != spec.rc:
        return f"exit code {result.rc}, expected {spec.rc}"
    missing = [p for p in spec.expect if not re.search(p, result.output)]
    if missing:
        return f"output lacks {missing}"
    present = [p for p in spec.refuse if re.search(p, result.output)]
    if present:
        return f"output shows {present}"
    if result.left_behind:
        return f"left processes running: {result.left_behind}"
    if spec.stop and "stopped by" in result.output:
        took = float(re.findall(r"stopped by \w+ in ([\d.]+)s", result.output)[-1])
        if took > spec.stop_within:
            return f"took {took:.1f}s to stop ({spec.stop}), more than {spec.stop_within:g}s"
    if found := re.search(r"^Traceback \(most recent call last\)", result.output, re.MULTILINE):
        start = result.output.rfind("\n", 0, max(0, found.start() - 600)) + 1  # the command that printed it
        return "printed a traceback:\n" + result.output[start : found.start() + 3000]
    return ""


def test_breaking_a_block_fails(tmp_path: Path) -> None:
    """The harness notices a doc that drifted: a command with a flag nobody has fails its block."""
    block = Block("broken.md", "broken", 1, 1, "uaap simulate --rounds-typo 2\n", "")
    home = tmp_path / "home"
    home.mkdir()
    session = DocSession(tmp_path, home, extra_path=_venv_bin())
    t0 = time.monotonic()
    result = session.run(block, Spec(timeout=120))
    assert session.close() == []
    assert result.rc == 2 and "did you mean --rounds" in result.output, result.output
    assert _check(block.key, Spec(), result).startswith("exit code 2"), time.monotonic() - t0
