"""The privacy-budget dashboard over a real ledger: Streamlit's AppTest, then a real headless Chromium.

The ledger is written by the production path (``strategies.dp_accounting.PrivacyAccounting`` aggregating real Flower
replies into a sqlite ledger); accuracy comes from the runs' ``metrics.jsonl``.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from strategies import wrap_privacy
from strategies.dp_accounting import PrivacyAccounting
from tests.flower_helpers import reply_from
from uaap import workspace
from uaap.config import RunConfig
from uaap.models import to_record
from uaap.privacy.accountant import epsilon_of
from uaap.privacy.ledger import Budget, Ledger, Release
from uaap.protocol import CLIENT_INFO, PARTITION_ID

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "uaap" / "dashboard" / "app.py"
EPS = [epsilon_of([(1.0, 0.5, k)], 1e-5) for k in range(1, 6)]  # 3.894 5.377 6.482 7.410 8.230
MAX_EPS = 6.9  # run A: 6.482 spent after 3 rounds = 94% (warning); a 4th release would exhaust it


def _reply(node: int, weights: list[np.ndarray]):
    content = RecordDict(
        {
            "arrays": to_record(weights),
            "metrics": MetricRecord({"num-examples": 10, "dp-sigma": 1.1, "dp-q": 0.1, "dp-steps": 8 + node}),
            CLIENT_INFO: ConfigRecord({PARTITION_ID: node}),
        }
    )
    return reply_from(node, content)


def _simulate_rounds(cfg: RunConfig, rounds: int, accuracy: list[float]) -> None:
    rd = workspace.run_dir(cfg.run_id)
    rd.write_config(cfg)
    start = [np.zeros((4, 3), dtype=np.float32)]
    dp = wrap_privacy(cfg, FedAvg(), rng=np.random.default_rng(0))
    assert isinstance(dp, PrivacyAccounting)
    for r in range(1, rounds + 1):
        assert dp.before_round(r) is None
        if dp.noise is not None:
            dp.noise.start_round(to_record(start), [1, 2, 3])
        dp.aggregate_train(r, [_reply(1, start), _reply(2, start)])
        rd.log_event("round", round=r, central={"accuracy": accuracy[r - 1]}, privacy=dp.round_report(r))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with three runs in its ledger: central+local (94% spent), local only, over budget."""
    path = tmp_path_factory.mktemp("dash") / "home"
    old = os.environ.get("UAAP_HOME")
    os.environ["UAAP_HOME"] = str(path)
    try:
        both = RunConfig(dp_central=True, dp_local=True, fraction_train=0.5, max_epsilon=MAX_EPS, run_id="run-a-both")
        _simulate_rounds(both, 3, [0.61, 0.70, 0.74])
        _simulate_rounds(RunConfig(dp_local=True, run_id="run-b-local"), 2, [0.80, 0.88])
        ledger = Ledger()  # a run whose budget was lowered after the fact: 100% warning
        ledger.set_budget(Budget("run-c-over", 3.0, 1e-5, "rdp", "user"))
        ledger.record([Release("run-c-over", 1, "*", "user", "central-gaussian", 1.0, 0.5, 1, 1e-5, EPS[0])])
        ledger.close()
    finally:
        if old is None:
            os.environ.pop("UAAP_HOME")
        else:
            os.environ["UAAP_HOME"] = old
    return path


def _chart_frame(element) -> pa.Table:
    proto = element.proto
    datasets = list(proto.datasets) if proto.datasets else []
    raw = datasets[0].data.data if datasets else proto.data.data
    return pa.ipc.open_stream(io.BytesIO(raw)).read_all()


def test_apptest_shows_budget_curves_and_warnings(home, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("UAAP_HOME", str(home))
    monkeypatch.setenv("UAAP_DASHBOARD_REFRESH", "0")
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception
    at.sidebar.selectbox[0].set_value("run-a-both").run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["epsilon spent (user level)"] == f"{EPS[2]:.3f}"
    assert metrics["max-epsilon"] == f"{MAX_EPS:g}"
    assert metrics["budget remaining"] == f"{MAX_EPS - EPS[2]:.3f}"
    assert any("80%" in w.value for w in at.warning) and not at.error
    curve = _chart_frame(at.get("vega_lite_chart")[0]).to_pandas()
    user = curve[curve["subject"] == "user level"].sort_values("round")
    assert user["epsilon"].tolist() == pytest.approx(EPS[:3])
    clients = set(curve["subject"]) - {"user level"}
    assert clients == {"node-1", "node-2"}
    p1 = curve[curve["subject"] == "node-1"].sort_values("round")["epsilon"].tolist()
    assert p1 == pytest.approx([epsilon_of([(1.1, 0.1, 9 * k)], 1e-5) for k in (1, 2, 3)])
    scatter = _chart_frame(at.get("vega_lite_chart")[-1]).to_pandas()
    assert set(scatter["run_id"]) == {"run-a-both", "run-b-local"}
    assert scatter.set_index("run_id").loc["run-a-both", "accuracy"] == pytest.approx(0.74)

    at.sidebar.selectbox[0].set_value("run-b-local").run()  # local only: headline is the largest client's
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["epsilon spent (example level)"] == f"{epsilon_of([(1.1, 0.1, 20)], 1e-5):.3f}"
    assert metrics["max-epsilon"] == "no limit" and not at.warning and not at.error

    at.sidebar.selectbox[0].set_value("run-c-over").run()
    assert any("exhausted" in e.value for e in at.error)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(300)
def test_headless_chromium_screenshot_and_live_update(home, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from uaap.commands.privacy import dashboard_command

    port = _free_port()
    env = dict(os.environ, UAAP_HOME=str(home), UAAP_DASHBOARD_REFRESH="2")
    env.pop("UAAP_LEDGER_URL", None)
    log = open(tmp_path / "streamlit.log", "w")  # noqa: SIM115
    server = subprocess.Popen(dashboard_command(port), env=env, stdout=log, stderr=subprocess.STDOUT)
    driver = None
    try:
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome-profile'}",
        ):
            opts.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1400, "height": 1100, "deviceScaleFactor": 1, "mobile": False},
        )
        deadline = time.monotonic() + 90
        while True:  # streamlit takes a few seconds to listen
            try:
                driver.get(f"http://127.0.0.1:{port}/?run=run-a-both")
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        wait = WebDriverWait(driver, 120)
        try:
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"] .marks')))
            wait.until(lambda d: f"{EPS[2]:.3f}" in d.find_element(By.TAG_NAME, "body").text)
        except Exception as exc:
            driver.save_screenshot(str(tmp_path / "failed.png"))
            body = driver.find_element(By.TAG_NAME, "body").text[:1500]
            raise AssertionError(f"dashboard did not render: {exc!r}\npage:\n{body}") from exc
        time.sleep(1.5)  # let vega finish drawing the marks
        out = REPO / "artifacts" / "dashboard.png"
        out.parent.mkdir(exist_ok=True)
        driver.save_screenshot(str(out))
        from PIL import Image

        img = Image.open(out).convert("RGB")
        assert img.size[0] >= 1000 and img.size[1] >= 700
        pixels = np.asarray(img).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 50  # text, chart lines and points, not a blank page
        assert (pixels.min(axis=1) < 200).mean() > 0.01
        canvas = driver.find_element(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"] .marks')
        assert canvas.size["width"] > 200 and canvas.size["height"] > 100

        # live: a 4th release lands in the ledger while the page is open; the page picks it up and warns
        ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
        ledger.record([Release("run-a-both", 4, "*", "user", "central-gaussian", 1.0, 0.5, 1, 1e-5, EPS[3])])
        ledger.close()
        WebDriverWait(driver, 60).until(lambda d: "exhausted" in d.find_element(By.TAG_NAME, "body").text)
        assert f"{EPS[3]:.3f}" in driver.find_element(By.TAG_NAME, "body").text
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
