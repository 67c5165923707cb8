"""The inference API against real registered models: a torch logistic regression on breast_cancer (ONNX export,
served by onnxruntime), a random forest regressor on diabetes (native skops model), a random forest on a raw
table with strings, dates and missing values (its fitted preprocessor in the registry) and an encrypted copy of
the first, all trained by `uaap train` and registered in MLflow's registry on the workspace's sqlite store.

One module fixture trains, exports and registers once (~20 s); the tests drive the FastAPI app in-process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from uaap.cli import main

REFRESH = 0.3  # seconds between alias lookups in these tests


class Capture(logging.Handler):
    """Keeps every record of the API's logger as the JSON line the server would print."""

    def __init__(self) -> None:
        from serving.app import JsonFormatter

        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Served:
    home: Path
    client: Any
    app: Any
    breast_run: str
    diabetes_run: str
    visits_run: str
    visits_logreg_run: str
    tokens: dict[str, str]
    logs: Capture

    def headers(self, who: str = "admin") -> dict[str, str]:
        return {"X-API-Key": self.tokens[who]}


def _new_run(before: set[str]) -> str:
    from uaap import workspace

    (run,) = set(workspace.list_runs()) - before
    return run


@pytest.fixture(scope="module")
def served(module_home: Path) -> Iterator[Served]:
    from fastapi.testclient import TestClient

    from serving import keys
    from serving.app import Settings, create_app
    from uaap import workspace

    before = set(workspace.list_runs())
    assert main(["train", "--dataset", "breast_cancer", "--model", "logreg", "--epochs", "3"]) == 0
    breast = _new_run(before)
    assert main(["export", breast, "--to", "onnx"]) == 0
    before = set(workspace.list_runs())
    # registered at the end of the run by the train command's own flag
    assert main(["train", "--dataset", "diabetes", "--model", "random_forest", "--register", "diabetes@champion"]) == 0
    diabetes = _new_run(before)
    assert main(["data", "example", str(module_home / "visits.csv"), "--rows", "400"]) == 0
    before = set(workspace.list_runs())
    table = ["--data", str(module_home / "visits.csv"), "--target", "label", "--drop-columns", "cost"]
    assert main(["train", *table, "--text-columns", "hashing", "--model", "random_forest"]) == 0
    visits = _new_run(before)
    before = set(workspace.list_runs())
    assert main(["train", *table, "--text-columns", "hashing", "--model", "logreg", "--epochs", "2"]) == 0
    visits_logreg = _new_run(before)
    assert main(["register", visits_logreg, "--name", "visits-net", "--alias", "champion"]) == 0
    assert main(["register", breast, "--name", "breast", "--alias", "champion"]) == 0
    assert main(["register", breast, "--name", "secret", "--alias", "champion", "--encrypt"]) == 0
    assert main(["register", visits, "--name", "visits", "--alias", "champion"]) == 0

    tokens = {}
    tokens["admin"], _ = keys.create("fuzz", ("predict", "admin"), rate_per_minute=1_000_000)
    tokens["predict"], _ = keys.create("app", ("predict",), rate_per_minute=1_000_000)
    tokens["revoked"], gone = keys.create("old", ("predict",))
    keys.revoke(gone.id)
    tokens["limited"], _ = keys.create("slow", ("predict",), rate_per_minute=3)

    capture = Capture()
    logger = logging.getLogger("serving.api")
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    app = create_app(Settings(refresh_seconds=REFRESH, max_batch=50, cache_size=1000))
    try:
        with TestClient(app) as client:
            yield Served(module_home, client, app, breast, diabetes, visits, visits_logreg, tokens, capture)
    finally:
        logger.removeHandler(capture)


def _raw_test_rows(run_id: str) -> tuple[list[dict[str, float]], np.ndarray]:
    """The run's raw held-out rows (as a client would send them) and the same rows as the library scaled them
    for the model: an independent path to the model's inputs."""
    from uaap import workspace
    from uaap.data import load_bundled, load_split, train_test

    cfg = workspace.existing_run(run_id).read_config()
    raw = train_test(load_bundled(cfg.dataset), cfg.test_fraction, cfg.seed).test
    rows = [{n: float(v) for n, v in zip(raw.feature_names, r, strict=True)} for r in raw.X]
    return rows, load_split(cfg).test.X


def test_predictions_equal_the_registered_models_own(served: Served) -> None:
    from uaap import workspace
    from uaap.training import predict_proba

    rows, X = _raw_test_rows(served.breast_run)
    model, _ = workspace.load_model(workspace.existing_run(served.breast_run).model_file)
    reference = predict_proba(model, X)
    got: list[dict[str, Any]] = []
    for start in range(0, len(rows), 50):
        r = served.client.post(
            "/v1/models/breast/predict", json={"rows": rows[start : start + 50]}, headers=served.headers()
        )
        assert r.status_code == 200, r.text
        assert r.json()["runtime"] == "onnxruntime"
        got += r.json()["predictions"]
    assert [int(p["prediction"]) for p in got] == reference.argmax(axis=1).tolist()
    np.testing.assert_allclose([p["probabilities"] for p in got], reference, atol=1e-5)
    one = served.client.post("/v1/models/breast@champion/predict", json={"row": rows[3]}, headers=served.headers())
    assert one.json()["predictions"][0]["prediction"] == got[3]["prediction"]

    rows, X = _raw_test_rows(served.diabetes_run)
    forest, _ = workspace.load_estimator(workspace.existing_run(served.diabetes_run).path / "model.skops")
    r = served.client.post("/v1/models/diabetes/predict", json={"rows": rows[:50]}, headers=served.headers("predict"))
    assert r.status_code == 200, r.text
    assert r.json()["runtime"] == "native"
    np.testing.assert_allclose([p["prediction"] for p in r.json()["predictions"]], forest.predict(X[:50]), atol=1e-5)


def test_a_raw_table_model_takes_raw_rows_with_strings_dates_and_nulls(served: Served) -> None:
    """The run's fitted preprocessor travels in the registry: rows as the CSV holds them (empty cells as null)
    get the labels the model gives the same rows encoded by the library's own table loader."""
    import pandas as pd

    from uaap import workspace
    from uaap.data import load_table

    path = served.home / "visits.csv"
    frame = pd.read_csv(path).drop(columns=["label", "cost"]).head(120)
    rows = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in frame.to_dict(orient="records")]
    assert any(None in r.values() for r in rows)  # the example table has missing cells
    forest, meta = workspace.load_estimator(workspace.existing_run(served.visits_run).path / "model.skops")
    encoded = load_table(path, "label", preprocessor=json.dumps(meta["preprocessor"]))
    reference = [meta["preprocessor"]["target"]["classes"][k] for k in forest.predict_proba(encoded.X[:120]).argmax(1)]
    got: list[str] = []
    for start in range(0, len(rows), 50):
        r = served.client.post(
            "/v1/models/visits/predict", json={"rows": rows[start : start + 50]}, headers=served.headers()
        )
        assert r.status_code == 200, r.text
        got += [p["prediction"] for p in r.json()["predictions"]]
    assert got == reference
    info = served.client.get("/v1/models/visits", headers=served.headers()).json()
    kinds = {c["name"]: (c["type"], c["nullable"]) for c in info["input_schema"]}
    assert kinds == {
        "age": ("number", True),
        "income": ("number", True),
        "score": ("number", True),
        "city": ("string", True),
        "plan": ("string", True),
        "visit": ("datetime", True),
        "notes": ("string", True),
    }
    schema = info["row_json_schema"]
    assert schema["additionalProperties"] is False and set(schema["required"]) == set(kinds)
    assert {"type": "null"} in schema["properties"]["city"]["anyOf"]
    bad = served.client.post("/v1/models/visits/predict", json={"row": dict(rows[0], city=3)}, headers=served.headers())
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "row", "city"]


def test_model_listing_and_info(served: Served) -> None:
    listing = served.client.get("/v1/models", headers=served.headers("predict")).json()
    aliases = {m["name"]: m["aliases"] for m in listing["models"]}
    assert aliases["breast"] == {"champion": "1"} and aliases["secret"] == {"champion": "1"}
    info = served.client.get("/v1/models/breast@champion", headers=served.headers("predict")).json()
    assert info["version"] == "1" and info["task"] == "classification" and info["run_id"] == served.breast_run
    assert info["input_schema"][0] == {"name": "mean radius", "type": "number", "nullable": False}
    assert len(info["input_schema"]) == 30 and info["privacy"] == {} and info["classes"] == ["0", "1"]
    end = [json.loads(line) for line in _events(served, served.breast_run) if '"end"' in line][-1]
    assert info["metrics"]["central_accuracy"] == pytest.approx(end["central"]["accuracy"])


def _events(served: Served, run_id: str) -> list[str]:
    return (served.home / "runs" / run_id / "metrics.jsonl").read_text().splitlines()


def test_encrypted_model_serves_the_same_and_round_trips_bit_identical(served: Served) -> None:
    from serving import registry
    from uaap import at_rest

    rows, _ = _raw_test_rows(served.breast_run)
    plain = served.client.post("/v1/models/breast/predict", json={"rows": rows[:20]}, headers=served.headers())
    secret = served.client.post("/v1/models/secret/predict", json={"rows": rows[:20]}, headers=served.headers())
    assert secret.status_code == 200, secret.text
    assert secret.json()["predictions"] == plain.json()["predictions"]

    key_file = at_rest.default_key_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = at_rest.load_key(key_file)
    onnx = (served.home / "runs" / served.breast_run / "exports" / "onnx" / "model.onnx").read_bytes()
    stored = _artefacts(registry.client(), "secret", "1") / "model.onnx"
    blob = stored.read_bytes()
    assert at_rest.is_encrypted(blob) and onnx not in blob and onnx[:64] not in blob
    assert at_rest.decrypt(blob, key, "model.onnx") == onnx  # bit-identical
    assert at_rest.decrypt(at_rest.encrypt(onnx, key, "x"), key, "x") == onnx
    with pytest.raises(at_rest.AtRestError, match="another artefact"):  # a file swapped for another
        at_rest.decrypt(blob, key, "model.npz")


def _artefacts(mlc: Any, name: str, version: str) -> Path:
    return Path(urlparse(mlc.get_model_version(name, version).source).path)


def test_tampered_encrypted_model_is_refused_and_the_server_keeps_serving(served: Served) -> None:
    from serving import registry
    from uaap import at_rest

    assert main(["register", served.breast_run, "--name", "tampered", "--alias", "champion", "--encrypt"]) == 0
    path = _artefacts(registry.client(), "tampered", "1") / "model.onnx"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    rows, _ = _raw_test_rows(served.breast_run)
    r = served.client.post("/v1/models/tampered/predict", json={"row": rows[0]}, headers=served.headers())
    assert r.status_code == 503
    assert "'model.onnx' failed authentication" in r.json()["detail"] and str(path) not in r.json()["detail"]
    with pytest.raises(at_rest.AtRestError, match="failed authentication"):
        at_rest.decrypt(bytes(blob), at_rest.load_key(), "model.onnx")
    ok = served.client.post("/v1/models/breast/predict", json={"row": rows[0]}, headers=served.headers())
    assert ok.status_code == 200


def test_keys_401_403_429(served: Served) -> None:
    from serving import keys

    url = "/v1/models/breast"
    assert served.client.get(url).status_code == 401
    assert "missing API key" in served.client.get(url).json()["detail"]
    assert served.client.get(url, headers={"X-API-Key": "uaap_000000000000_" + "x" * 43}).status_code == 401
    assert served.client.get(url, headers={"Authorization": f"Bearer {served.tokens['predict']}"}).status_code == 200
    revoked = served.client.get(url, headers=served.headers("revoked"))
    assert revoked.status_code == 403 and "revoked" in revoked.json()["detail"]
    assert served.client.get("/metrics", headers=served.headers("predict")).status_code == 403
    codes = [served.client.get(url, headers=served.headers("limited")).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    limited = served.client.get(url, headers=served.headers("limited"))
    assert int(limited.headers["Retry-After"]) >= 1
    store = keys.default_store()
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    text = store.read_text()
    assert all(t.split("_", 2)[2] not in text for t in served.tokens.values())  # only hashes are kept


def test_bad_rows_422_413_404(served: Served) -> None:
    rows, _ = _raw_test_rows(served.breast_run)
    h = {**served.headers(), "content-type": "application/json"}
    url = "/v1/models/breast/predict"

    def fields(body: Any) -> list[tuple[list[Any], str]]:
        r = served.client.post(url, content=json.dumps(body, allow_nan=True), headers=h)
        assert r.status_code == 422, r.text
        return [(e["loc"], e["type"]) for e in r.json()["detail"]]

    wrong = dict(rows[0], **{"mean radius": "12.5"})
    assert fields({"row": wrong}) == [(["body", "row", "mean radius"], "float_type")]
    missing = {k: v for k, v in rows[0].items() if k != "worst area"}
    assert fields({"rows": [rows[1], missing]}) == [(["body", "rows", 1, "worst area"], "missing")]
    assert fields({"row": dict(rows[0], extra=1.0)}) == [(["body", "row", "extra"], "extra_forbidden")]
    assert fields({"row": dict(rows[0], **{"mean area": float("nan")})}) == [
        (["body", "row", "mean area"], "finite_number")
    ]
    assert fields({"row": dict(rows[0], **{"mean area": None})})[0][0] == ["body", "row", "mean area"]
    assert fields({"row": rows[0], "rows": rows[:2]})[0][1] == "value_error"
    big = served.client.post(url, json={"rows": rows[:51]}, headers=h)
    assert big.status_code == 413 and "batch limit of 50" in big.json()["detail"]
    assert served.client.post(url, content=b"{not json", headers=h).status_code == 422
    unknown = served.client.post("/v1/models/nope/predict", json={"row": rows[0]}, headers=h)
    assert unknown.status_code == 404 and "breast (@champion -> v1" in unknown.json()["detail"]
    alias = served.client.get("/v1/models/breast@staging", headers=h)
    assert alias.status_code == 404 and "'staging'" in alias.json()["detail"]


def test_alias_move_serves_the_new_version_and_drops_its_cache(served: Served) -> None:
    from serving.registry import register_run

    rows, _ = _raw_test_rows(served.diabetes_run)
    url, h = "/v1/models/diabetes/predict", served.headers()
    first = served.client.post(url, json={"rows": rows[60:63]}, headers=h).json()
    again = served.client.post(url, json={"rows": rows[60:64]}, headers=h).json()
    assert (first["version"], first["cached"], again["cached"]) == ("1", 0, 3)
    assert again["predictions"][:3] == first["predictions"]
    register_run(served.diabetes_run, "diabetes", alias="champion")
    time.sleep(REFRESH + 0.1)
    moved = served.client.post(url, json={"rows": rows[60:63]}, headers=h).json()
    assert (moved["version"], moved["cached"]) == ("2", 0)  # picked up without a restart; old rows not reused
    assert moved["predictions"] == first["predictions"]  # the same run registered again
    assert (
        served.client.post("/v1/models/diabetes@v1/predict", json={"row": rows[60]}, headers=h).json()["version"] == "1"
    )


def test_metrics_and_json_logs(served: Served) -> None:
    rows, _ = _raw_test_rows(served.breast_run)
    h = {**served.headers(), "X-Request-ID": "req-42"}
    for _ in range(2):
        r = served.client.post("/v1/models/breast/predict", json={"row": rows[7]}, headers=h)
        assert r.headers["X-Request-ID"] == "req-42"
    text = served.client.get("/metrics", headers=served.headers()).text
    samples = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['uaap_requests_total{method="POST",route="/v1/models/{name}/predict",status="200"}'] >= 2
    assert samples["uaap_cache_hits_total"] >= 1 and 0 < samples["uaap_cache_hit_ratio"] < 1
    count = samples['uaap_request_duration_seconds_count{method="POST",route="/v1/models/{name}/predict"}']
    assert (
        samples['uaap_request_duration_seconds_bucket{method="POST",route="/v1/models/{name}/predict",le="+Inf"}']
        == count
    )
    assert samples['uaap_predictions_total{model="breast",version="1"}'] >= 2

    records = [json.loads(line) for line in served.logs.lines]
    mine = [r for r in records if r.get("request_id") == "req-42"]
    assert len(mine) == 2 and mine[1]["cache_hits"] == 1
    assert {k: mine[0][k] for k in ("model", "version", "status", "route")} == {
        "model": "breast",
        "version": "1",
        "status": 200,
        "route": "/v1/models/{name}/predict",
    }
    assert mine[0]["latency_ms"] > 0
    everything = "\n".join(served.logs.lines)
    assert not any(t in everything for t in served.tokens.values())
    assert str(served.home) not in everything and "mlartifacts" not in everything


def test_health_and_readiness(served: Served) -> None:
    assert served.client.get("/healthz").json() == {"status": "ok"}
    assert served.client.get("/readyz").json()["status"] == "ready"
    assert "/v1/models/{name}/predict" in served.client.get("/openapi.json").json()["paths"]
    assert served.client.get("/docs").status_code == 200


def test_register_refuses_bad_input(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["register", "no-such-run", "--name", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["register", served.breast_run, "--name", "bad name"]) == 2
    assert "model name 'bad name' is not allowed" in capsys.readouterr().err
    assert main(["register", served.breast_run, "--name", "ok", "--alias", "v2"]) == 2
    assert "reserved" in capsys.readouterr().err
    before = len(list((served.home / "runs").iterdir()))
    assert main(["train", "--dataset", "breast_cancer", "--register", "no good"]) == 2  # refused before training
    assert "model name 'no good' is not allowed" in capsys.readouterr().err
    assert main(["serve", "--max-body-bytes", "10"]) == 2  # refused before anything listens
    assert "--max-body-bytes 10" in capsys.readouterr().err
    assert len(list((served.home / "runs").iterdir())) == before


# ---- the whole OpenAPI surface, fuzzed ------------------------------------------------------------------------


# per operation and generation mode (positive, negative); predict and explain get more, so that generated rows of
# every registered model reach 200s as well as 404s and 422s. explain runs SHAP (~0.1-1 s a row): its count is
# what bounds the test's time.
EXAMPLES = {"POST /v1/models/{name}/predict": (80, 30), "POST /v1/models/{name}/explain": (50, 15)}
OTHER_EXAMPLES = (12, 8)


def _row_strategy(columns: list[dict[str, Any]]) -> Any:
    """Rows of a model's input schema as ``GET /v1/models/{name}`` publishes it: valid values, and in about one row
    of four one column with a value the model must refuse (past its range, no date, a wrong type)."""
    from datetime import datetime

    from hypothesis import strategies as st

    def good(col: dict[str, Any]) -> Any:
        if col["type"] == "number":
            found = st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-(10**6), 10**6)
        elif col["type"] == "datetime":
            found = st.datetimes(datetime(1900, 1, 1), datetime(2100, 1, 1)).map(datetime.isoformat)
        else:
            found = st.text(max_size=30)
        return found | st.none() if col["nullable"] else found

    def bad(col: dict[str, Any]) -> Any:
        if col["type"] == "number":
            huge = st.floats(1e30, 1e308) | st.floats(-1e308, -1e30)  # past float32, or past it once scaled
            return huge | st.floats(allow_nan=False) | st.text(max_size=5)
        if col["type"] == "datetime":
            return st.text(max_size=12)
        return st.integers() | st.booleans()

    valid = st.fixed_dictionaries({c["name"]: good(c) for c in columns})
    one_bad = st.sampled_from(columns).flatmap(lambda c: st.tuples(st.just(c["name"]), bad(c)))
    spoilt = st.tuples(valid, one_bad).map(lambda t: {**t[0], t[1][0]: t[1][1]})
    return st.integers(0, 3).flatmap(lambda k: spoilt if k == 0 else valid)


def test_openapi_fuzz_no_server_error_and_no_schema_break(served: Served) -> None:
    """schemathesis over every operation of the OpenAPI document (in-process ASGI), in positive and negative mode,
    with the registered names and aliases in the path (and generated ones, which miss), and for predict and explain
    also bodies of rows generated from each model's input schema: no 5xx, every status code documented, every body
    and content type as documented, schema-breaking data refused; predict and explain answer 200s on generated
    rows. (Driven through hypothesis directly: schemathesis' pytest fixture loader reads a node attribute pytest 9
    removed.)"""
    from collections import Counter

    from hypothesis import given
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_asgi("/openapi.json", served.app)
    checks = [
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
        content_type_conformance,
        negative_data_rejection,
    ]
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /v1/models",
        "GET /v1/models/{name}",
        "POST /v1/models/{name}/predict",
        "POST /v1/models/{name}/explain",
    }
    listing = served.client.get("/v1/models", headers=served.headers()).json()["models"]
    models = {m["name"]: m["aliases"] for m in listing if m["name"] != "tampered"}  # tampered: a 503 on purpose
    assert {"breast", "secret", "diabetes", "visits", "visits-net"} <= set(models)
    names = [n for m, aliases in models.items() for n in (m, *(f"{m}@{a}" for a in aliases), f"{m}@latest")]
    names += ["breast@staging", "nope"]  # 404s
    info = {m: served.client.get(f"/v1/models/{m}", headers=served.headers()).json() for m in models}

    def bodies(path: str, model: str) -> Any:
        rows = _row_strategy(info[model]["input_schema"])
        if path.endswith("/predict"):
            return rows.map(lambda r: {"row": r}) | st.lists(rows, min_size=1, max_size=4).map(lambda rs: {"rows": rs})
        targets = st.sampled_from(["", "", "", *info[model]["classes"], "no such class"])
        return st.tuples(rows, targets).map(lambda t: {"row": t[0], "target_class": t[1]})

    def either(*parts: Any) -> Any:  # one of the parts, each as likely (st.one_of would flatten nested ones)
        return st.sampled_from(parts).flatmap(lambda part: part)

    def strategy(op: Any, mode: GenerationMode) -> Any:
        generated = op.as_strategy(mode)  # generated names too: they miss the registry
        if "{name}" not in op.path:
            return generated
        named = either(*(op.as_strategy(mode, path_parameters={"name": n}) for n in names))
        if not (mode.is_positive and op.method.upper() == "POST"):
            return either(generated, named, named)
        rows = either(
            *(
                bodies(op.path, n.partition("@")[0]).map(
                    lambda b, n=n: op.Case(path_parameters={"name": n}, body=b, media_type="application/json")
                )
                for n in names
                if n.partition("@")[0] in info
            )
        )
        return either(generated, named, rows, rows)

    seen: Counter[tuple[str, str, int]] = Counter()  # (operation, generation mode, status) -> cases

    def fuzz(op: Any, mode: GenerationMode, count: int) -> None:
        @given(case=strategy(op, mode))
        @settings(
            max_examples=count,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        def call(case: Any) -> None:
            # timeout: an explanation is hundreds of model calls; in the full suite (3 workers on 2 cores) one took
            # over schemathesis' default 10 s, which it reports as a flaky failure, not as a slow answer
            response = case.call_and_validate(headers=served.headers(), checks=checks, timeout=120)
            seen[(f"{op.method.upper()} {op.path}", mode.value, response.status_code)] += 1

        call()

    for op in operations:
        counts = EXAMPLES.get(f"{op.method.upper()} {op.path}", OTHER_EXAMPLES)
        for mode, count in zip(GenerationMode, counts, strict=True):
            if mode.is_positive or op.path_parameters or op.body:  # negative: only where there is something to break
                fuzz(op, mode, count)
    print(f"fuzz: {len(operations)} operations, {seen.total()} cases:", *sorted(seen.items()), sep="\n  ")
    assert not any(status >= 500 for _, _, status in seen), seen

    def cases(label: str, status: int, *modes: str) -> int:
        return sum(seen[(label, mode, status)] for mode in modes or ("positive", "negative"))

    predict, explain = "POST /v1/models/{name}/predict", "POST /v1/models/{name}/explain"
    assert cases(predict, 200) >= 20 and cases(explain, 200) >= 8, seen  # generated rows the models answer
    assert cases(predict, 404) and cases(predict, 422) and cases(explain, 404) and cases(explain, 422), seen
    assert cases(predict, 422, "negative") and cases(explain, 422, "negative"), seen
    assert cases("GET /v1/models/{name}", 200) and cases("GET /v1/models/{name}", 404), seen


def test_an_onnx_model_is_served_without_importing_torch(served: Served) -> None:
    import subprocess
    import sys

    rows, _ = _raw_test_rows(served.breast_run)
    code = (
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from serving.app import create_app\n"
        "with TestClient(create_app()) as c:\n"
        "    r = c.post('/v1/models/breast/predict', json={'row': json.loads(sys.argv[1])},"
        " headers={'X-API-Key': sys.argv[2]})\n"
        "print(json.dumps([r.status_code, r.json()['runtime'], 'torch' in sys.modules]))\n"
    )
    env = {**os.environ, "UAAP_HOME": str(served.home)}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(rows[0]), served.tokens["predict"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [200, "onnxruntime", False]


def test_an_encrypted_model_without_its_key_is_503_and_says_why(served: Served, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from serving.app import Settings, create_app

    rows, _ = _raw_test_rows(served.breast_run)
    with TestClient(create_app(Settings(key_file=tmp_path / "no.key"))) as client:
        r = client.post("/v1/models/secret/predict", json={"row": rows[0]}, headers=served.headers())
        assert r.status_code == 503
        assert "is encrypted at rest: the server holds no at-rest key" in r.json()["detail"]
        assert str(tmp_path) not in r.text
        plain = client.post("/v1/models/breast/predict", json={"row": rows[0]}, headers=served.headers())
        assert plain.status_code == 200


def test_uaap_serve_answers_over_tls_and_logs_json_lines_without_secrets(served: Served, certs: Any) -> None:
    """The real process: `uaap serve` with the certificates `uaap certs` makes, on a loopback port."""
    import socket
    import ssl
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = served.home / "serve-tls.log"
    cmd = [sys.executable, "-m", "uaap.cli", "serve", "--port", str(port), "--preload", "breast"]
    cmd += ["--ssl-certfile", str(certs.server_cert), "--ssl-keyfile", str(certs.server_key)]
    env = {**os.environ, "UAAP_HOME": str(served.home)}
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    rows, _ = _raw_test_rows(served.breast_run)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "uaap serve was not ready in 90 s"
            try:
                if httpx.get(url + "/readyz", verify=ctx, timeout=2).json()["models"] == {"breast": "1"}:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        r = httpx.post(url + "/v1/models/breast/predict", json={"row": rows[5]}, headers=served.headers(), verify=ctx)
        expected = served.client.post("/v1/models/breast/predict", json={"row": rows[5]}, headers=served.headers())
        assert r.status_code == 200 and r.json()["predictions"] == expected.json()["predictions"]
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served on a TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # every line is JSON
    request = [x for x in lines if x.get("route") == "/v1/models/{name}/predict"]
    assert request and request[0]["status"] == 200 and request[0]["model"] == "breast"
    text = log.read_text()
    assert served.tokens["admin"] not in text and str(served.home) not in text


def test_the_runs_privacy_epsilon_travels_to_the_api(served: Served) -> None:
    """A run's ledger (here written as a DP federation's server writes it) is read at registration."""
    from serving.registry import TAG_PRIVACY, client, register_run
    from uaap.privacy.ledger import EXAMPLE, USER, Budget, Ledger, Release

    run = served.breast_run
    ledger = Ledger()
    try:
        ledger.set_budget(Budget(run, max_epsilon=8.0, delta=1e-5, accountant="rdp", levels="user,example"))
        ledger.record(
            [
                Release(run, 1, "server", USER, "gaussian", 1.1, 0.1, 1, 1e-5, 1.25),
                Release(run, 2, "server", USER, "gaussian", 1.1, 0.1, 1, 1e-5, 2.5),
                Release(run, 2, "client-0", EXAMPLE, "dp-sgd", 1.0, 0.05, 40, 1e-5, 3.0),
                Release(run, 2, "client-1", EXAMPLE, "dp-sgd", 1.0, 0.05, 40, 1e-5, 2.75),
            ]
        )
    finally:
        ledger.close()
    done = register_run(run, "private", alias="champion")
    expected = {"user_epsilon": 2.5, "example_epsilon_max": 3.0, "delta": 1e-5, "max_epsilon": 8.0}
    info = served.client.get("/v1/models/private", headers=served.headers()).json()
    assert info["privacy"] == expected
    assert json.loads(client().get_model_version("private", done.version).tags[TAG_PRIVACY]) == expected


def test_a_body_over_the_limit_is_413_with_or_without_content_length(served: Served) -> None:
    from fastapi.testclient import TestClient

    from serving.app import Settings, create_app

    rows, _ = _raw_test_rows(served.breast_run)
    body = json.dumps({"rows": rows[:20]}).encode()
    assert len(body) > 4000
    h = {**served.headers(), "content-type": "application/json"}
    with TestClient(create_app(Settings(max_body_bytes=4000))) as client:
        announced = client.post("/v1/models/breast/predict", content=body, headers=h)
        assert announced.status_code == 413 and "over the limit of 4000" in announced.json()["detail"]
        chunks = (body[i : i + 1000] for i in range(0, len(body), 1000))  # chunked: no Content-Length
        streamed = client.post("/v1/models/breast/predict", content=chunks, headers=h)
        assert streamed.status_code == 413 and "over the limit of 4000" in streamed.json()["detail"]
        small = client.post("/v1/models/breast/predict", json={"rows": rows[:2]}, headers=served.headers())
        assert small.status_code == 200


def test_explain_equals_uaap_explain_on_the_same_row(served: Served) -> None:
    """/explain's SHAP values per raw column are the library's (uaap.explain.shapley on the run folder's model, the
    same row, the same background) within 1e-8: a forest (TreeExplainer) and a torch network (permutation)."""
    import pandas as pd

    from serving.model import Column, background_frame
    from uaap.explain.shapley import explain
    from uaap.monitor.runmodel import load_run_model

    frame = pd.read_csv(served.home / "visits.csv").drop(columns=["label", "cost"]).head(3)
    rows = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in frame.to_dict(orient="records")]
    columns = [Column(c, "", True) for c in frame.columns]
    for name, run, kind in (
        ("visits", served.visits_run, "tree"),
        ("visits-net", served.visits_logreg_run, "permutation"),
    ):
        model = load_run_model(run)
        for i, row in enumerate(rows[:1]):
            r = served.client.post(f"/v1/models/{name}/explain", json={"row": row}, headers=served.headers("predict"))
            assert r.status_code == 200, r.text
            got = r.json()
            one = pd.DataFrame([list(row.values())], columns=list(row), dtype=object)
            ref = explain(model, one, background=background_frame(columns), seed=0)
            assert got["explainer"] == ref.explainer == kind and got["output"] == ref.output
            assert list(got["values"]) == ref.columns == list(frame.columns)
            np.testing.assert_allclose(list(got["values"].values()), ref.grouped[0], rtol=0, atol=1e-8)
            assert abs(got["base_value"] - ref.base) <= 1e-8 and abs(got["model_output"] - ref.model_output[0]) <= 1e-8
            assert got["additivity_error"] < 1e-6, (name, i)
    # the explained probability is the one predict gives for that row
    p = served.client.post("/v1/models/visits-net/predict", json={"row": rows[0]}, headers=served.headers()).json()
    e = served.client.post("/v1/models/visits-net/explain", json={"row": rows[0]}, headers=served.headers()).json()
    label = e["output"][2:-1]
    classes = served.client.get("/v1/models/visits-net", headers=served.headers()).json()["classes"]
    assert abs(p["predictions"][0]["probabilities"][classes.index(label)] - e["model_output"]) < 1e-5


def test_explain_validates_like_predict_and_needs_a_key(served: Served) -> None:
    rows, _ = _raw_test_rows(served.breast_run)
    ok = served.client.post("/v1/models/breast/explain", json={"row": rows[0]}, headers=served.headers("predict"))
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["explainer"] == "permutation" and len(body["values"]) == 30 and body["additivity_error"] < 1e-6
    assert served.client.post("/v1/models/breast/explain", json={"row": rows[0]}).status_code == 401
    revoked = served.client.post("/v1/models/breast/explain", json={"row": rows[0]}, headers=served.headers("revoked"))
    assert revoked.status_code == 403
    bad = served.client.post(
        "/v1/models/breast/explain", json={"row": dict(rows[0], **{"mean radius": "big"})}, headers=served.headers()
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "row", "mean radius"]
    extra = served.client.post(
        "/v1/models/breast/explain", json={"row": dict(rows[0], x=1.0)}, headers=served.headers()
    )
    assert extra.status_code == 422 and "x" in extra.json()["detail"][0]["loc"]
    wrong = served.client.post(
        "/v1/models/breast/explain", json={"row": rows[0], "target_class": "7"}, headers=served.headers()
    )
    assert wrong.status_code == 422 and "'7'" in wrong.json()["detail"][0]["msg"]
    missing = served.client.post("/v1/models/nope/explain", json={"row": rows[0]}, headers=served.headers())
    assert missing.status_code == 404 and "breast" in missing.json()["detail"]


# ---- numbers the model cannot take, dates, bodies, the cache -----------------------------------------------------


RANGE = re.compile(r"\[(\S+), (\S+)\]")


def test_a_number_past_float32_or_the_models_scaling_is_a_422_naming_field_value_and_range(served: Served) -> None:
    """3.5e38 (past float32's max) once made predict a 500 (inf after the cast, then a JSON encoding error) and
    explain a 200 with nulls in float fields: now a 422 before inference, on every runtime, with the range."""
    rows, _ = _raw_test_rows(served.breast_run)
    h = served.headers()
    huge = dict(rows[0], **{"mean area": 3.5e38})
    r = served.client.post("/v1/models/breast/predict", json={"rows": [rows[1], huge]}, headers=h)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "rows", 1, "mean area"] and "3.5e+38" in error["msg"], error
    assert "finite float32" in error["msg"] and "row 1" in error["msg"]
    lo, hi = (float(v) for v in RANGE.search(error["msg"]).groups())  # type: ignore[union-attr]
    assert -3.5e38 < lo < 0 < hi < 3.5e38
    singles = {  # onnxruntime, encrypted, and a native forest (whose sklearn once refused the inf: also a 500)
        "breast": dict(rows[0], **{"mean area": -3.5e38}),
        "secret": huge,
        "diabetes": dict(_raw_test_rows(served.diabetes_run)[0][0], bmi=3.5e38),
    }
    for name, row in singles.items():
        one = served.client.post(f"/v1/models/{name}/predict", json={"row": row}, headers=h)
        assert one.status_code == 422, (name, one.text)
        assert one.json()["detail"][0]["loc"][:2] == ["body", "row"] and "3.5e+38" in one.json()["detail"][0]["msg"]
    explained = served.client.post("/v1/models/breast/explain", json={"row": huge}, headers=h)
    assert explained.status_code == 422, explained.text
    assert explained.json()["detail"][0]["loc"] == ["body", "row", "mean area"]
    # the range is the model's own: a column with a small spread overflows after scaling well below float32's max
    info = served.client.get("/v1/models/breast", headers=h).json()
    props = info["row_json_schema"]["properties"]
    narrow = min(props, key=lambda c: props[c]["maximum"])
    top = props[narrow]["maximum"]
    assert top < 3.4e37
    past = served.client.post("/v1/models/breast/predict", json={"row": dict(rows[0], **{narrow: top * 10})}, headers=h)
    assert past.status_code == 422 and f"[{props[narrow]['minimum']:.6g}, {top:.6g}]" in past.json()["detail"][0]["msg"]
    edges = [dict(rows[0], **{narrow: top}), dict(rows[0], **{narrow: props[narrow]["minimum"]})]
    at = served.client.post("/v1/models/breast/predict", json={"rows": edges}, headers=h)
    assert at.status_code == 200, at.text
    assert all(np.isfinite(p["probabilities"]).all() for p in at.json()["predictions"])


def test_a_non_finite_model_output_is_a_422_not_a_server_error(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a model still answer inf or NaN, the client gets a 422 naming the row, never the JSON encoder's 500."""
    from fastapi.testclient import TestClient

    import serving.model
    from serving.app import Settings, create_app

    def nan_runner(data: bytes) -> Any:
        return lambda X: np.full((len(X), 2), np.nan, dtype=np.float32)

    def nan_explanation(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return serving.model._explained(["a"], [np.inf], np.nan, np.nan, "permutation", "P(1)", "", "")

    monkeypatch.setattr(serving.model, "_onnx_runner", nan_runner)
    monkeypatch.setattr(serving.model, "explain_row", nan_explanation)
    rows, _ = _raw_test_rows(served.breast_run)
    with TestClient(create_app(Settings(cache_size=0)), raise_server_exceptions=False) as client:
        r = client.post("/v1/models/breast/predict", json={"rows": rows[:2]}, headers=served.headers())
        assert r.status_code == 422, r.text
        assert [e["loc"] for e in r.json()["detail"]] == [["body", "rows", 0], ["body", "rows", 1]]
        assert "not finite" in r.json()["detail"][0]["msg"]
        e = client.post("/v1/models/breast/explain", json={"row": rows[0]}, headers=served.headers())
        assert e.status_code == 422, e.text
        assert e.json()["detail"][0]["loc"] == ["body", "row"] and "not finite" in e.json()["detail"][0]["msg"]


def test_a_datetime_column_takes_only_dates_and_a_text_column_words(served: Served) -> None:
    """A date column once took any string ("not a date" got a 200, imputed silently); now what the preprocessor
    cannot read as a date is a 422 naming the field and the value; null stays allowed where it is imputed. A free
    text without a word (which the preprocessor refuses: it was a 500) is a 422 too."""
    row = {"age": 41, "income": 52000, "score": 0.3, "city": "Lyon", "plan": "plus", "visit": "2024-03-05T10:00",
           "notes": None}  # fmt: skip
    h, url = served.headers(), "/v1/models/visits/predict"
    for ok in ("2024-03-05T10:00", "2024-03-05", "March 5, 2024", "2024-03-05T10:00:00+02:00", None):
        r = served.client.post(url, json={"row": dict(row, visit=ok)}, headers=h)
        assert r.status_code == 200, (ok, r.text)
    for bad in ("not a date", "", "2024-13-45"):
        r = served.client.post(url, json={"row": dict(row, visit=bad)}, headers=h)
        assert r.status_code == 422, (bad, r.text)
        (error,) = r.json()["detail"]
        assert error["loc"] == ["body", "row", "visit"] and repr(bad) in error["msg"], error
    r = served.client.post(url, json={"rows": [row, dict(row, visit="soon")]}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "rows", 1, "visit"]
    explained = served.client.post("/v1/models/visits/explain", json={"row": dict(row, visit="soon")}, headers=h)
    assert explained.status_code == 422 and explained.json()["detail"][0]["loc"] == ["body", "row", "visit"]
    # pandas reads one column at a time and refuses a mix of UTC offsets (it was a 500): the row that differs
    mixed = [dict(row, visit="2024-03-05T10:00+02:00"), dict(row, visit="2024-03-05T10:00+03:00")]
    r = served.client.post(url, json={"rows": mixed}, headers=h)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "rows", 1, "visit"] and "offset" in r.json()["detail"][0]["msg"]
    for name in ("visits", "visits-net"):
        r = served.client.post(f"/v1/models/{name}/predict", json={"rows": [row, dict(row, notes="?!")]}, headers=h)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "rows", 1, "notes"] and "'?!'" in r.json()["detail"][0]["msg"]


def test_a_body_that_is_not_utf8_or_nests_too_deep_is_a_422(served: Served) -> None:
    """Such bodies were a 400, which the OpenAPI document does not list: now FastAPI's malformed-JSON 422 shape."""
    h = {**served.headers(), "content-type": "application/json"}
    for url in ("/v1/models/breast/predict", "/v1/models/breast/explain"):
        r = served.client.post(url, content=b'{"row": {"mean radius": "\xff\xfe"}}', headers=h)
        assert r.status_code == 422, r.text
        (error,) = r.json()["detail"]
        assert error["type"] == "json_invalid" and error["loc"] == ["body", 25] and "UTF-8" in error["msg"], error
    deep = served.client.post("/v1/models/breast/predict", content=b"[" * 100_000, headers=h)
    assert deep.status_code == 422 and "nest" in deep.json()["detail"][0]["msg"], deep.text
    schema = served.client.get("/openapi.json").json()
    assert "422" in schema["paths"]["/v1/models/{name}/predict"]["post"]["responses"]


def test_the_row_cache_is_a_bounded_lru_on_canonical_rows(served: Served) -> None:
    from fastapi.testclient import TestClient

    from serving.app import Settings, create_app
    from serving.cache import RowCache

    cache = RowCache(2)
    a, b, c = (("m", "1", (float(i),)) for i in range(3))
    cache.put(a, {"prediction": 0.0})
    cache.put(b, {"prediction": 1.0})
    assert cache.get(a) == {"prediction": 0.0}  # a is now the most recently used
    cache.put(c, {"prediction": 2.0})
    assert cache.get(b) is None and cache.get(a) is not None and cache.get(c) is not None and len(cache) == 2
    assert cache.drop("m", "1") == 2 and len(cache) == 0
    off = RowCache(0)
    off.put(a, {"prediction": 0.0})
    assert off.get(a) is None and len(off) == 0

    rows, _ = _raw_test_rows(served.breast_run)
    row = dict(rows[9], **{"mean radius": 13.0})
    same = {k: (int(v) if k == "mean radius" else v) for k, v in reversed(list(row.items()))}  # 13, another order
    url, h = "/v1/models/breast/predict", served.headers()
    for size, expected in ((1, 1), (0, 0)):
        with TestClient(create_app(Settings(cache_size=size))) as client:
            first = client.post(url, json={"row": row}, headers=h).json()
            again = client.post(url, json={"row": same}, headers=h).json()
            assert (first["cached"], again["cached"]) == (0, expected)
            assert again["predictions"] == first["predictions"]
            if size:  # bound 1: another row evicts it
                client.post(url, json={"row": rows[10]}, headers=h)
                assert client.post(url, json={"row": row}, headers=h).json()["cached"] == 0
