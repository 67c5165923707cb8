"""The workbench (``uaap ui``) in a real headless Chromium, against a real ``uaap serve`` and real runs.

One module fixture starts the workbench and the API as the user would (``uaap ui``, ``uaap serve``), a browser,
and makes what the pages show: a generated table, a forest trained on it, privacy-ledger releases of a DP run and
an API key. Each test drives one page through its main action and saves a screenshot to
``artifacts/workbench-<page>.png``; one drives train -> register -> predict (and explain) through the UI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from uaap.cli import main

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Bench:
    home: Path
    url: str
    api: str
    token: str
    forest_run: str
    driver: Any
    logs: list[Path]
    ui_pid: int

    def body(self) -> str:
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def wait_for(self, what: Callable[[Any], Any], seconds: float = 60, page: str = "") -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, seconds, poll_frequency=0.25).until(what)
        except Exception as exc:
            self.driver.save_screenshot(str(self.home / f"failed-{page}.png"))
            raise AssertionError(f"{page}: {exc!r}\npage:\n{self.body()[:3000]}") from exc

    def text(self, needle: str, seconds: float = 60, page: str = "") -> None:
        self.wait_for(lambda d: needle in self.body(), seconds, page or needle)

    def find(self, by: str, selector: str, seconds: float = 60) -> Any:
        """The element, once the page has drawn it (and it is enabled)."""

        def ready(d: Any) -> Any:
            found = [e for e in d.find_elements(by, selector) if e.is_displayed() and e.is_enabled()]
            return found[0] if found else False

        return self.wait_for(ready, seconds, selector)

    def click(self, label: str) -> None:
        from selenium.webdriver.common.by import By

        self.find(By.XPATH, f"//button[normalize-space(.)='{label}']").click()

    def choose(self, option: str) -> None:
        from selenium.webdriver.common.by import By

        self.find(By.XPATH, f"//*[@data-testid='stRadio']//label[contains(normalize-space(.), '{option}')]").click()

    def type(self, aria: str, value: str, enter: bool = True) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        field = self.find(By.CSS_SELECTOR, f'[aria-label="{aria}"]')
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE)
        field.send_keys(value + (Keys.ENTER if enter else ""))

    def nav(self, page: str) -> None:
        """Go to a page through the sidebar (the session, and what the pages share, stays)."""
        from selenium.webdriver.common.by import By

        self.find(By.CSS_SELECTOR, f'[data-testid="stSidebarNav"] a[href$="/{page}"]').click()

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)
        self.wait_for(lambda d: d.find_elements("css selector", '[data-testid="stSidebarNav"]'), 90, path)

    def shot(self, page: str) -> Path:
        time.sleep(0.5)  # vega and images finish drawing
        out = ARTIFACTS / f"workbench-{page}.png"
        out.parent.mkdir(exist_ok=True)
        self.driver.save_screenshot(str(out))
        from PIL import Image

        pixels = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 50, f"{out} is blank"  # text and charts, not an empty page
        return out


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"{url} did not answer (exit {proc.poll()}):\n{tail}") from None
            time.sleep(0.3)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a process sent SIGTERM; kill it past 20 s."""
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def bench(module_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from serving import keys
    from uaap import workspace
    from uaap.privacy.accountant import epsilon_of
    from uaap.privacy.ledger import Budget, Ledger, Release

    table = module_home / "visits.csv"
    assert main(["data", "example", str(table), "--rows", "200"]) == 0
    before = set(workspace.list_runs())
    flags = ["--data", str(table), "--target", "label", "--drop-columns", "cost", "--text-columns", "hashing"]
    assert main(["train", *flags, "--model", "random_forest"]) == 0
    (forest,) = set(workspace.list_runs()) - before
    ledger = Ledger()  # a DP run's releases, as the federation's accounting writes them
    ledger.set_budget(Budget("dp-run", 6.9, 1e-5, "rdp", "user"))
    ledger.record(
        [Release("dp-run", k, "*", "user", "central-gaussian", 1.0, 0.5, 1, 1e-5, epsilon_of([(1.0, 0.5, k)], 1e-5))
         for k in (1, 2, 3)]
    )  # fmt: skip
    ledger.close()
    token, _ = keys.create("workbench", ("predict",), rate_per_minute=10_000)

    logs_dir = tmp_path_factory.mktemp("bench-logs")
    env = dict(os.environ, UAAP_HOME=str(module_home), UAAP_DASHBOARD_REFRESH="0")
    api_port, ui_port = _free_port(), _free_port()
    api_log, ui_log = logs_dir / "api.log", logs_dir / "ui.log"
    procs: list[subprocess.Popen[bytes]] = []
    driver = None
    with api_log.open("wb") as a, ui_log.open("wb") as u:
        try:
            cli = [sys.executable, "-m", "uaap.cli"]
            procs.append(subprocess.Popen([*cli, "serve", "--port", str(api_port), "--refresh", "0.5"], env=env,
                                          stdout=a, stderr=subprocess.STDOUT))  # fmt: skip
            ui_env = dict(env, UAAP_API_URL=f"http://127.0.0.1:{api_port}")  # the predict page's default API URL
            procs.append(subprocess.Popen([*cli, "ui", "--port", str(ui_port)], env=ui_env, stdout=u,
                                          stderr=subprocess.STDOUT))  # fmt: skip
            opts = webdriver.ChromeOptions()
            opts.binary_location = "/usr/bin/chromium"
            for flag in (
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={logs_dir / 'chrome-profile'}",
            ):  # fmt: skip
                opts.add_argument(flag)
            driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
            driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": 1400, "height": 1300, "deviceScaleFactor": 1, "mobile": False},
            )
            api = f"http://127.0.0.1:{api_port}"
            url = f"http://127.0.0.1:{ui_port}"
            _wait_http(f"{api}/healthz", procs[0], api_log)
            _wait_http(f"{url}/_stcore/health", procs[1], ui_log)
            yield Bench(module_home, url, api, token, forest, driver, [api_log, ui_log], procs[1].pid)
        finally:
            if driver is not None:
                driver.quit()
            for proc in procs:  # both stop at once, then each is waited for
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                _stop(proc)


def test_data_page_profiles_a_table(bench: Bench) -> None:
    from selenium.webdriver.common.by import By

    bench.open("/")  # the data page is the default one
    bench.text("breast_cancer: 569 rows x 31 columns", page="data")  # a bundled set, until another is picked
    bench.choose("upload a file")
    upload = bench.wait_for(lambda d: d.find_elements(By.CSS_SELECTOR, 'input[type="file"]'), page="data")[0]
    upload.send_keys(str(bench.home / "visits.csv"))  # what choosing the file in the browser's dialog does
    bench.text("200 rows x 9 columns", page="data")
    (kept,) = (bench.home / "uploads").glob("visits-*.csv")  # the upload is kept in the workspace
    assert kept.read_bytes() == (bench.home / "visits.csv").read_bytes()
    bench.click("Profile")
    bench.text("target 'label': classification", page="data")
    bench.text("The train page will use this table with target 'label'", page="data")  # the page drew it all
    body = bench.body()
    assert "an IsolationForest flags" in body and "imbalance 1.1:1" in body  # 105 no, 95 yes
    heading = bench.driver.find_element(By.XPATH, "//h3[contains(., 'Profile: 200 rows')]")
    bench.driver.execute_script("arguments[0].scrollIntoView()", heading)  # the report in view
    bench.shot("data")


def test_train_register_predict_and_explain_through_the_ui(bench: Bench) -> None:
    """A central logistic regression on breast_cancer trained on the train page, registered and tried on the predict
    page against the running API: the page shows the label and probability the run's own model gives."""
    from selenium.webdriver.common.by import By

    from serving.workbench import example_row
    from uaap import workspace
    from uaap.data import load_split
    from uaap.training import predict_proba

    bench.open("/train")
    bench.type("epochs", "2")
    bench.click("Train")
    bench.text("finished", 180, page="train")
    body = bench.body()
    run_id = body.split(" finished")[0].rsplit("run ", 1)[1].strip()
    assert "uaap train --dataset breast_cancer --model logreg --epochs 2" in body
    assert "accuracy 0.9" in body  # the streamed output of the CLI
    bench.shot("train")

    bench.nav("predict")
    bench.text("1. Register a run", page="predict")
    bench.click("Register")
    bench.text(f"registered workbench version 1 from run {run_id}", 120, page="predict")

    url_field = bench.find(By.CSS_SELECTOR, '[aria-label="API URL (`uaap serve`)"]')
    assert url_field.get_attribute("value") == bench.api  # from $UAAP_API_URL, as docker-compose.yml sets it
    bench.type("API key (`uaap api-keys create`)", bench.token)
    bench.click("Load the model schema")
    bench.text("workbench version 1", 60, page="predict")
    bench.click("Predict")
    bench.text("prediction: ", 60, page="predict")

    # the reference: the run's own model on the same row as the library scaled it
    cfg = workspace.existing_run(run_id).read_config()
    model, _ = workspace.load_model(workspace.existing_run(run_id).model_file)
    probs = predict_proba(model, load_split(cfg).test.X[:1])[0]
    alerts = bench.driver.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentSuccess"]')
    (shown,) = [a.text for a in alerts if a.text.startswith("prediction: ")]
    assert shown.startswith(f"prediction: {int(probs.argmax())}, probability {probs.max():.4f} (version 1, "), shown
    schema = json.loads(bench.driver.find_element(By.CSS_SELECTOR, 'textarea[aria-label="one row (JSON)"]').text)
    assert schema == example_row([{"name": k, "type": "number"} for k in schema], run_id)
    bench.shot("predict")

    bench.click("Explain this row")
    bench.text("permutation explainer: P(1) = ", 120, page="predict")
    assert f"P(1) = {probs[1]:.4f}" in bench.body()
    chart = bench.wait_for(
        lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"] .marks'), page="predict"
    )
    bench.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", chart[0])
    bench.shot("predict-explain")

    # the key was typed once: only the password field holds it; it is in no page text, no log of the UI or the API
    holders = [
        e.get_attribute("type")
        for e in bench.driver.find_elements(By.CSS_SELECTOR, "input, textarea")
        if bench.token in (e.get_attribute("value") or "")
    ]
    assert holders == ["password"] and bench.token not in bench.body()
    for log in bench.logs:
        assert bench.token not in log.read_text(errors="replace")


def test_runs_page_compares_runs_from_mlflow(bench: Bench) -> None:
    from selenium.webdriver.common.by import By

    bench.open("/runs")
    bench.text("Final", page="runs")
    bench.wait_for(lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"] .marks'), page="runs")
    bench.text(bench.forest_run, page="runs")  # the compare selection names the runs (drawn after the charts' data)
    bench.shot("runs")


def test_explain_page_runs_uaap_explain_and_shows_its_plots(bench: Bench) -> None:
    from selenium.webdriver.common.by import By

    bench.open(f"/explain?run={bench.forest_run}")
    bench.text(f"Run {bench.forest_run} has no explanation yet", page="explain")
    bench.type("rows to explain (a table of the run's columns)", str(bench.home / "visits.csv"))
    bench.type("at most this many rows", "60")
    bench.click("Run uaap explain")
    bench.text("tree explainer, output P(yes), base value", 120, page="explain")
    bench.text("60 rows", page="explain")
    folder = bench.home / "runs" / bench.forest_run / "explain"
    written = sorted(p.name for p in folder.glob("*.png"))  # SHAP's beeswarm, bar and waterfall (and what else)
    assert {"shap-summary.png", "shap-bar.png", "shap-waterfall.png"} <= set(written)
    shown = '[data-testid="stImage"] img'
    images = bench.wait_for(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, shown)) == len(written), 120, "explain"
    ) and bench.driver.find_elements(By.CSS_SELECTOR, shown)
    assert all(name in bench.body() for name in written)  # each under its caption
    report = json.loads((folder / "shap.json").read_text())
    assert report["ranking"][0] in bench.body()
    bench.driver.execute_script("arguments[0].scrollIntoView()", images[0])  # the beeswarm plot in view
    bench.shot("explain")


def test_privacy_page_is_the_dashboard(bench: Bench) -> None:
    from selenium.webdriver.common.by import By

    from uaap.privacy.accountant import epsilon_of

    bench.open("/privacy?run=dp-run")
    bench.text(f"{epsilon_of([(1.0, 0.5, 3)], 1e-5):.3f}", page="privacy")
    bench.wait_for(lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"] .marks'), page="privacy")
    assert "Over 80% of the privacy budget is spent" in bench.body()
    bench.shot("privacy")


def test_the_ui_process_never_loaded_torch_or_ray(bench: Bench) -> None:
    """After every page ran (training, explaining and registering included), the Streamlit process has mapped no
    torch or Ray library: those ran in `uaap` subprocesses."""
    import psutil

    (streamlit,) = [p for p in psutil.Process(bench.ui_pid).children() if "streamlit" in " ".join(p.cmdline())]
    maps = Path(f"/proc/{streamlit.pid}/maps").read_text()
    assert "python" in maps and "pyarrow" in maps  # the scan reads the live process (dataframes went out)
    assert "/torch/" not in maps and "/ray/" not in maps


def test_a_federated_simulation_with_the_he_and_dp_switches_runs_from_the_train_page(bench: Bench) -> None:
    """The train page's federated mode with the CKKS and DP-SGD switches on: `uaap simulate` runs on Ray with its
    progress on the page, and the run it made is encrypted and private as the switches said."""
    from selenium.webdriver.common.by import By

    from uaap import workspace

    bench.open("/train")
    bench.choose("federated")
    bench.type("rounds", "1")
    for label in ("HE: CKKS secure aggregation", "DP-SGD on every client"):
        bench.find(By.XPATH, f"//label[contains(normalize-space(.), '{label}')]").click()
    bench.find(By.CSS_SELECTOR, '[aria-label="target epsilon"]')  # the DP-SGD switch is on: its budget shows
    bench.click("Train")
    bench.text("finished", 600, page="train-federated")
    body = bench.body()
    run_id = body.split(" finished")[0].rsplit("run ", 1)[1].strip()
    assert "uaap simulate --dataset breast_cancer" in body and "--secure-aggregation ckks" in body, body[:2000]
    assert "--dp-local" in body and "federated simulation: done" in body
    rd = workspace.existing_run(run_id)
    cfg = rd.read_config()
    assert (cfg.secure_aggregation, cfg.dp_local, cfg.num_rounds, cfg.num_clients) == ("ckks", True, 1, 2)
    last = rd.events("round")[-1]
    assert last["train"]["he-clients"] == 2 and 0 < last["privacy"]["epsilon"] <= cfg.dp_target_epsilon
    bench.shot("train-federated")


def test_train_page_builds_federated_commands_the_cli_accepts() -> None:
    """The HE/DP switches become flags of `uaap simulate` that its own parser takes (no federation started)."""
    from serving.workbench import TrainForm, train_args
    from uaap.cli import build_parser
    from uaap.commands.common import config_from_args
    from uaap.errors import ConfigError

    args = train_args(TrainForm(mode="federated", rounds=2, clients=3, he=True, dp_local=True, epsilon=4.0))
    assert args[:1] == ["simulate"] and "--secure-aggregation" in args and "--dp-local" in args
    cfg = config_from_args(build_parser().parse_args(args))  # the settings the simulation would run with
    assert (cfg.num_rounds, cfg.num_clients, cfg.dp_target_epsilon) == (2, 3, 4.0)
    assert cfg.secure_aggregation == "ckks" and cfg.dp_local is True and cfg.dp_central is False
    table = TrainForm(dataset="table", source="t.csv", target="y", extra=("--text-columns", "hashing"))
    central = build_parser().parse_args(train_args(table))
    assert config_from_args(central).text_columns == "hashing"  # the page's "more flags" pass through
    assert central.epochs == 3
    assert config_from_args(central).data_path == "t.csv" and config_from_args(central).target == "y"
    with pytest.raises(ConfigError, match="switch the mode to federated"):
        train_args(TrainForm(mode="central", he=True))
    with pytest.raises(ConfigError, match="data page"):
        train_args(TrainForm(dataset="table"))
