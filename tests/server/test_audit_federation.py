"""Federated audits over Flower messages (``query.audit``, the real ClientApp): a federation of 3 clients trains a
logistic regression on a table once per module (plaintext and CKKS), then its clients explain, audit and monitor the
final model on their own rows. Each federated number is compared with the same computation on the pooled rows:
mean |SHAP|, mean SHAP and PDP (1e-8 plaintext, 1e-5 CKKS), the base loss of permutation importance against
scikit-learn's log_loss (same tolerances) and each client's permuted-loss sums against the test's own permutations,
fairness against fairlearn's MetricFrame (exactly), drift statistics (float rounding). A forged answer is left out; a
run trained under SecAgg+ is refused before any client is asked; the fairness command runs its audit as a Flower
simulation on Ray (the other commands share that path and run here over the in-process grid).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

from server import audit as sa
from server.federation import exchange, run_federation
from tests.flower_helpers import LocalGrid, set_task_identity
from uaap import crypto
from uaap.config import RunConfig
from uaap.data.tables import raw_parts
from uaap.errors import ConfigError, DataError
from uaap.explain import federated as fx
from uaap.explain import pdp
from uaap.monitor import drift
from uaap.monitor import fairness as fair
from uaap.monitor.runmodel import RunModel
from uaap.protocol import AUDIT_ANSWER, AUDIT_SUMS, CONFIG

if TYPE_CHECKING:
    from collections.abc import Callable

    from flwr.app import Message

MAX_EVALS = 41  # two antithetic permutations of the 18 model inputs: the sums are what is tested, not SHAP's accuracy
POINTS = 6


def table(rows: int, seed: int, *, shift: bool = False) -> pd.DataFrame:
    """Six numeric features, two categorical ones and a yes/no label driven by x0, x1 and c0."""
    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {f"x{i}": rng.normal(i, 1 + i / 4, rows) for i in range(6)}
    data["c0"] = rng.choice(["north", "south", "east"], rows, p=[0.5, 0.3, 0.2])
    data["c1"] = rng.choice(["u", "v", "w"], rows, p=[0.2, 0.3, 0.5] if shift else [1 / 3] * 3)
    if shift:
        data["x3"] = data["x3"] + 1.0
    frame = pd.DataFrame(data)
    signal = frame.x0 + 0.5 * (frame.x1 - 1) + 0.9 * (frame.c0 == "north") + rng.normal(0, 0.7, rows)
    return frame.assign(label=np.where(signal > 0.4, "yes", "no"))


class AuditGrid(LocalGrid):
    """LocalGrid that also delivers ``query.audit`` to the real ClientApp handler (client.app.audit_sums)."""

    def __init__(self, num_nodes: int, tamper: dict[int, Callable[[Message], Message]] | None = None) -> None:
        super().__init__(num_nodes, tamper=tamper)

    def push_messages(self, messages: list[Message]) -> list[str]:
        from uuid import uuid4

        from client.app import audit_sums

        if not all(m.metadata.message_type.endswith(".audit") for m in messages):
            return super().push_messages(messages)
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            self.pushed.append(msg)
            ids.append(msg.metadata.message_id)
            node = int(msg.metadata.dst_node_id)
            set_task_identity()
            reply = audit_sums(msg, self.contexts[node])
            self._replies[msg.metadata.message_id] = self.tamper.get(node, lambda m: m)(reply)
        return ids


def send(grid: AuditGrid) -> Callable[[list[Message]], list[Message]]:
    return lambda messages: exchange(grid, messages, 60.0)


@pytest.fixture(scope="module")
def runs(module_home: Path) -> Iterator[dict[str, sa.Audited]]:
    """The two finished federations (plaintext and CKKS) on the same table, and a shifted new table."""
    table(420, 0).to_csv(module_home / "train.csv", index=False)
    table(300, 1, shift=True).to_csv(module_home / "new.csv", index=False)
    out = {}
    for secure in ("none", "ckks"):
        cfg = RunConfig(dataset="csv", data_path=str(module_home / "train.csv"), target="label", model="logreg",
                        num_clients=3, min_clients=3, num_rounds=1, local_epochs=2, strategy="fedavg", seed=1,
                        run_id=f"audit-{secure}", experiment="tests-audit", secure_aggregation=secure)  # fmt: skip
        cfg = crypto.ensure_simulation_keys(cfg)
        rd = run_federation(AuditGrid(3), cfg, num_partitions=3)
        assert rd.events("end")[-1]["status"] == "completed"
        out[secure] = sa.audited(cfg.run_id)
    yield out


def plaintext_model(audit: sa.Audited) -> RunModel:
    """The final global model as a key holder reads it (decrypted under CKKS), with the run's plan."""
    from uaap.models import build_model, from_record, get_weights, set_weights

    shell = audit.model
    net = build_model(audit.cfg.model, len(shell.preprocessor.feature_names_out_), len(shell.classes))
    if audit.public is None:
        weights = from_record(audit.arrays)
    else:
        weights = crypto.decrypt_global(audit.arrays, crypto.client_context(audit.cfg), like=get_weights(net))
    set_weights(net, weights)
    return RunModel(audit.rd, net, {"family": audit.cfg.model}, shell.preprocessor, True)


def pooled(cfg: RunConfig) -> pd.DataFrame:
    """Every client's rows in one table (what pooling the data would give)."""
    return pd.concat([part.frame for part in raw_parts(cfg, 3)[0]], ignore_index=True)


# ---- explanations -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("secure", "tol"), [("none", 1e-8), ("ckks", 1e-5)])
def test_federated_mean_shap_and_pdp_equal_the_pooled_rows(
    runs: dict[str, sa.Audited], secure: str, tol: float
) -> None:
    audit = runs[secure]
    grid = AuditGrid(3)
    totals = sa.explain(grid, audit, send(grid), points=POINTS, max_evals=MAX_EVALS)
    assert totals.clients == 3 and audit.left_out == []
    if secure == "ckks":  # the server holds a ciphertext sum and one clear row count per client, nothing else
        assert totals.encrypted is not None and set(totals.plain) == {fx.ROWS}
        total = {**totals.plain, **fx.open_sums(totals.encrypted, crypto.client_context(audit.cfg), totals.layout)}
    else:
        assert totals.encrypted is None
        total = dict(totals.plain)
    model = plaintext_model(audit)
    federated = fx.explain_report(total, model, totals.grids, 1)

    rows = pooled(audit.cfg)  # the same computation on the pooled rows, with the grids the pooled extremes give
    for column, points in totals.grids.items():
        if isinstance(points[0], float):
            assert points == pdp.grid_of(pdp.column_plan(model.preprocessor, column), rows[column].min(),
                                         rows[column].max(), POINTS)  # fmt: skip
    columns, values, base, out = fx.shap_values(model, rows, max_evals=MAX_EVALS)
    assert np.abs(values.sum(axis=1) + base - out).max() < 1e-9  # each row's values add up to its output
    assert federated["rows"] == len(rows) == 336
    for i, column in enumerate(columns):
        assert federated["mean_abs_shap"][column] == pytest.approx(np.abs(values[:, i, 1]).mean(), abs=tol)
        assert federated["mean_shap"][column] == pytest.approx(values[:, i, 1].mean(), abs=tol)
    assert federated["base_value"] == pytest.approx(base[1], abs=tol)
    for column, result in federated["pdp"].items():
        central = pdp.dependence(model, rows, column, k=1, points=POINTS)
        assert result["grid"] == central.grid
        np.testing.assert_allclose(result["pdp"], central.pdp, rtol=0, atol=tol)
    assert set(federated["pdp"]) == {"x0", "x1", "x2", "x3", "x4", "x5", "c0", "c1"}
    shap_gap = max(
        max(abs(federated["mean_abs_shap"][c] - np.abs(values[:, i, 1]).mean()) for i, c in enumerate(columns)),
        max(abs(federated["mean_shap"][c] - values[:, i, 1].mean()) for i, c in enumerate(columns)),
    )
    pdp_gap = max(
        float(np.abs(np.asarray(r["pdp"]) - pdp.dependence(model, rows, c, k=1, points=POINTS).pdp).max())
        for c, r in federated["pdp"].items()
    )
    print(f"{secure}: federated mean |SHAP|/mean SHAP vs pooled {shap_gap:.1e}, PDP {pdp_gap:.1e} (tolerance {tol:g})")


def test_a_forged_explanation_is_left_out(runs: dict[str, sa.Audited]) -> None:
    def lie(reply: Message) -> Message:
        record = reply.content.config_records[CONFIG]
        answer = json.loads(str(record[AUDIT_ANSWER]))
        if fx.SHAP_SUM in answer:  # SHAP sums larger than their absolute values allow
            answer[fx.SHAP_SUM] = (np.asarray(answer[fx.SHAP_ABS]) * 2 + 1).tolist()
        if fx.ROWS in answer and "x0:min" in answer:
            answer["x0:min"] = ["low"]
        record[AUDIT_ANSWER] = json.dumps(answer)
        return reply

    audit = sa.audited("audit-none")
    grid = AuditGrid(3, tamper={3: lie})
    totals = sa.explain(grid, audit, send(grid), points=3, max_evals=MAX_EVALS)
    assert totals.clients == 2 and len(audit.left_out) == 2
    assert all("client 3" in why for why in audit.left_out)
    assert "exceeds the sum of their absolute values" in audit.left_out[1]


# ---- permutation importance from loss sums ----------------------------------------------------------------------

SEED, REPEATS = 7, 3


def pooled_log_loss(model: RunModel, rows: pd.DataFrame) -> float:
    """scikit-learn's log-loss summed over ``rows`` (the model's float64 probabilities, as every audit runs it)."""
    from sklearn.metrics import log_loss

    return float(log_loss(rows.label.astype(str), pdp.outputs(model, rows), labels=model.classes, normalize=False))


def own_permuted_losses(model: RunModel, rows: pd.DataFrame) -> np.ndarray:
    """Per raw column and repeat, the summed log-loss with the column permuted among ``rows``: the test's own
    permutations (NumPy's generator seeded with the seed and the column's CRC-32, one permutation a repeat)."""
    X = rows.reset_index(drop=True)
    out = np.zeros((len(model.preprocessor.input_columns), REPEATS))
    for i, column in enumerate(model.preprocessor.input_columns):
        rng = np.random.default_rng([SEED, zlib.crc32(column.encode())])
        for r in range(REPEATS):
            order = rng.permutation(len(X))
            out[i, r] = pooled_log_loss(model, X.assign(**{column: X[column].to_numpy()[order]}))
    return out


@pytest.mark.parametrize(("secure", "tol"), [("none", 1e-8), ("ckks", 1e-5)])
def test_federated_loss_sums_equal_the_pooled_loss_and_each_clients_own_permutations(
    runs: dict[str, sa.Audited], secure: str, tol: float
) -> None:
    audit = runs[secure]
    grid = AuditGrid(3)
    steps: list[list[Message]] = []  # each step's replies, as the server got them

    def capture(messages: list[Message]) -> list[Message]:
        steps.append(exchange(grid, messages, 60.0))
        return steps[-1]

    totals = sa.explain(grid, audit, capture, points=2, seed=SEED, max_evals=MAX_EVALS, repeats=REPEATS)
    secret = crypto.client_context(audit.cfg) if secure == "ckks" else None
    total = dict(totals.plain)
    if secret is not None:  # the loss sums are inside the one ciphertext: nothing of them in the clear
        assert totals.encrypted is not None and set(totals.plain) == {fx.ROWS}
        total.update(fx.open_sums(totals.encrypted, secret, totals.layout))
    assert totals.layout[fx.LOSS_PERMUTED] == (8, REPEATS) and totals.clients == 3
    model = plaintext_model(audit)
    parts = [part.frame for part in raw_parts(audit.cfg, 3)[0]]

    # (a) the base loss is exactly the pooled rows' (scikit-learn's log_loss times the rows)
    rows = pd.concat(parts, ignore_index=True)
    assert total[fx.LOSS][0] == pytest.approx(pooled_log_loss(model, rows), abs=tol)
    federated = fx.explain_report(total, model, totals.grids, 1)
    assert federated["loss"] == "log-loss" and federated["repeats"] == REPEATS
    assert federated["base_loss"] * len(rows) == pytest.approx(pooled_log_loss(model, rows), abs=tol)

    # (b) each client's permuted sums are its own rows permuted as the test permutes them
    assert len(steps) == 2 and len(steps[1]) == 3  # the grids' extremes, then the explanation sums
    own_total = np.zeros((8, REPEATS))
    for reply in steps[1]:
        node = int(reply.metadata.src_node_id)
        if secret is not None:
            sums = fx.open_sums(reply.content.array_records[AUDIT_SUMS], secret, totals.layout)
        else:
            answer = json.loads(str(reply.content.config_records[CONFIG][AUDIT_ANSWER]))
            sums = {key: np.asarray(value) for key, value in answer.items()}
        own = own_permuted_losses(model, parts[node - 1])  # node i holds partition i - 1
        np.testing.assert_allclose(sums[fx.LOSS_PERMUTED], own, rtol=0, atol=tol)
        assert sums[fx.LOSS][0] == pytest.approx(pooled_log_loss(model, parts[node - 1]), abs=tol)
        own_total += own
    np.testing.assert_allclose(total[fx.LOSS_PERMUTED], own_total, rtol=0, atol=tol)
    importance = federated["permutation_importance"]
    expected = (own_total.mean(axis=1) - pooled_log_loss(model, rows)) / len(rows)
    for i, column in enumerate(model.preprocessor.input_columns):
        assert importance[column] == pytest.approx(expected[i], abs=tol)
    assert federated["importance_ranking"][0] == "x0"  # the label's strongest driver


def test_one_client_holding_every_row_gives_the_direct_permutation_importance(runs: dict[str, sa.Audited]) -> None:
    """(c) The whole federation's rows on one client (the real ClientApp): the report's importance is the direct
    computation on the same permutations of those rows (scikit-learn's log_loss on each permuted table)."""
    from sklearn.metrics import log_loss

    audit = runs["none"]
    one = dataclasses.replace(audit, left_out=[])
    grid = AuditGrid(1)  # one node, told it is the only partition: it holds every training row
    totals = sa.explain(grid, one, send(grid), points=2, seed=SEED, max_evals=MAX_EVALS, repeats=REPEATS)
    model = plaintext_model(audit)
    report = fx.explain_report(totals.plain, model, totals.grids, 1)
    rows = raw_parts(audit.cfg, 1)[0][0].frame.reset_index(drop=True)
    assert totals.clients == 1 and report["rows"] == len(rows) == 336

    y, labels = rows.label.astype(str), model.classes
    base = log_loss(y, pdp.outputs(model, rows), labels=labels)
    assert report["base_loss"] == pytest.approx(base, abs=1e-12)
    for column in model.preprocessor.input_columns:
        rng = np.random.default_rng([SEED, zlib.crc32(column.encode())])
        drops = []
        for _ in range(REPEATS):
            shuffled = rows.assign(**{column: rows[column].to_numpy()[rng.permutation(len(rows))]})
            drops.append(log_loss(y, pdp.outputs(model, shuffled), labels=labels) - base)
        assert report["permutation_importance"][column] == pytest.approx(np.mean(drops), abs=1e-10), column
        assert report["permutation_importance_std"][column] == pytest.approx(np.std(drops), abs=1e-10), column


def test_a_forged_loss_sum_is_left_out(runs: dict[str, sa.Audited]) -> None:
    """(d) A negative loss sum and permuted sums of the wrong shape are left out with the reason; the rest is summed."""

    def forge(change: Callable[[dict[str, Any]], None]) -> Callable[[Message], Message]:
        def lie(reply: Message) -> Message:
            record = reply.content.config_records[CONFIG]
            answer = json.loads(str(record[AUDIT_ANSWER]))
            if fx.LOSS in answer:
                change(answer)
            record[AUDIT_ANSWER] = json.dumps(answer)
            return reply

        return lie

    negative = forge(lambda a: a.update({fx.LOSS: [-1.0]}))
    narrow = forge(lambda a: a.update({fx.LOSS_PERMUTED: a[fx.LOSS_PERMUTED][:-1]}))
    audit = sa.audited("audit-none")
    grid = AuditGrid(3, tamper={2: narrow, 3: negative})
    totals = sa.explain(grid, audit, send(grid), points=2, seed=SEED, max_evals=MAX_EVALS, repeats=REPEATS)
    assert totals.clients == 1 and len(audit.left_out) == 2
    assert "client 2" in audit.left_out[0] and f"{fx.LOSS_PERMUTED!r} must be (8, {REPEATS})" in audit.left_out[0]
    assert "client 3" in audit.left_out[1] and "a sum of losses is negative" in audit.left_out[1]
    model = plaintext_model(audit)
    rows = raw_parts(audit.cfg, 3)[0][0].frame  # client 1's rows alone
    assert totals.plain[fx.LOSS][0] == pytest.approx(pooled_log_loss(model, rows), abs=1e-8)
    answer = {fx.SHAP_ABS: [[0.0]], fx.SHAP_SUM: [[0.0]], fx.OUTPUT_SUM: [1.0], fx.ROWS: [2], fx.LOSS: [1.0],
              fx.LOSS_PERMUTED: [[80.0]]}  # fmt: skip
    shapes = {key: np.shape(value) for key, value in answer.items() if key != fx.ROWS}
    with pytest.raises(DataError, match="log-losses summed over 2 rows exceed 36.04 a row"):  # 2 x 36.04 < 80
        fx.check_explain_sums(answer, shapes, classification=True)


# ---- SecAgg+ runs -----------------------------------------------------------------------------------------------


def test_a_secagg_run_is_refused_before_any_client_is_asked(
    runs: dict[str, sa.Audited], module_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run trained under SecAgg+ (pairwise masking, no CKKS keys): its clients' audit sums would travel in the
    clear, so every federated audit refuses it before a message is sent."""
    import simulations.audit
    from uaap import workspace
    from uaap.cli import main

    source = module_home / "runs" / "audit-none"
    shutil.copytree(source, module_home / "runs" / "audit-secagg")
    rd = workspace.existing_run("audit-secagg")
    rd.write_config(rd.read_config().replace(secure_aggregation="secagg+", run_id="audit-secagg"))
    asked: list[str] = []
    monkeypatch.setattr(simulations.audit, "over_flower", lambda audit, job, **_: asked.append(audit.rd.run_id))

    with pytest.raises(ConfigError, match=r"secure-aggregation='secagg\+'.*in the clear.*--secure-aggregation ckks"):
        sa.audited("audit-secagg")
    before = sorted(p.name for p in rd.path.rglob("*"))
    new = str(module_home / "new.csv")
    for args in (["explain", "audit-secagg", "--federated"],
                 ["fairness", "audit-secagg", "--sensitive", "c0", "--federated"],
                 ["monitor", "--reference", "audit-secagg", "--data", new, "--federated"]):  # fmt: skip
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert "pairwise masking" in err and "centrally" in err and "ckks" in err, err
    assert asked == []  # no federation was started, no client asked
    assert sorted(p.name for p in rd.path.rglob("*")) == before  # nothing written


# ---- fairness and drift -----------------------------------------------------------------------------------------


def test_federated_fairness_equals_fairlearn_metricframe_on_the_pooled_predictions(
    runs: dict[str, sa.Audited],
) -> None:
    from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
    from sklearn.metrics import accuracy_score

    audit = runs["ckks"]  # the clients decrypt the global model and encrypt their counts
    grid = AuditGrid(3)
    totals = sa.fairness(grid, audit, send(grid), "c0")
    assert totals.plain == {} and totals.encrypted is not None  # the server holds no count in the clear
    assert sorted(totals.layout) == ["group=east", "group=north", "group=south"]
    total = fair.open_counts(totals.encrypted, crypto.client_context(audit.cfg), totals.layout, 2)
    federated = fair.fairness_from_counts(total, audit.model.classes, "yes")
    plain = runs["none"]  # the same audit in the clear: one step, the counts summed as they are
    grid = AuditGrid(3)
    assert set(sa.fairness(grid, plain, send(grid), "c0").plain) == set(totals.layout)

    rows = pooled(audit.cfg)
    model = plaintext_model(audit)
    y_true = (rows.label == "yes").to_numpy().astype(int)
    y_pred = (model.predict(rows) == "yes").astype(int)
    metrics = {"accuracy": accuracy_score, "selection_rate": selection_rate, "tpr": true_positive_rate,
               "fpr": false_positive_rate}  # fmt: skip
    frame = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=rows.c0.to_numpy())
    assert sorted(federated["groups"]) == ["east", "north", "south"]
    for group, row in federated["groups"].items():
        for name in fair.METRICS:
            assert row[name] == frame.by_group.loc[group, name], (group, name)  # exactly
    for name in fair.METRICS:
        assert federated["overall"][name] == frame.overall[name]
    assert (
        federated["demographic_parity_difference"]
        == frame.by_group["selection_rate"].max() - frame.by_group["selection_rate"].min()
    )


def test_federated_drift_equals_the_pooled_statistics(runs: dict[str, sa.Audited], module_home: Path) -> None:
    audit = runs["none"]
    current = audit.cfg.replace(data_path=str(module_home / "new.csv"))
    grid = AuditGrid(3)
    reference, now = sa.drift(grid, audit, send(grid), current)
    federated = drift.drift_report(reference, now)

    model = plaintext_model(audit)
    plans = drift.monitored_plan(model.preprocessor, model.task)
    ref, new = pooled(audit.cfg), pooled(current)
    ref, new = drift.with_predictions(ref, model.predict(ref)), drift.with_predictions(new, model.predict(new))
    central = drift.federated_drift([ref], [new], plans)
    for name, row in central["features"].items():
        for key, value in row.items():
            if isinstance(value, float):
                assert federated["features"][name][key] == pytest.approx(value, rel=1e-12, abs=1e-12), (name, key)
    assert federated["drifted"] == central["drifted"]
    assert {"x3", "c1"} <= set(federated["drifted"])  # the known shift is found


# ---- the commands -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_fairness_command_runs_the_audit_as_a_flower_simulation_on_ray(
    runs: dict[str, sa.Audited], module_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The one Ray run of this module: the CKKS run's clients decrypt the global model in their Ray actors."""
    from uaap.cli import main

    assert main(["fairness", "audit-ckks", "--sensitive", "c0", "--federated"]) == 0
    assert "demographic parity difference" in capsys.readouterr().out
    folder = module_home / "runs" / "audit-ckks" / "monitor"
    report = json.loads((folder / "fairness-c0-federated.json").read_text())
    grid = AuditGrid(3)
    local = sa.fairness(grid, runs["ckks"], send(grid), "c0")
    counts = fair.open_counts(local.encrypted, crypto.client_context(runs["ckks"].cfg), local.layout, 2)
    expected = fair.fairness_from_counts(counts, ["no", "yes"], "yes")
    assert report["counts"] == expected["counts"] and report["left_out"] == []
    assert report["groups"] == json.loads(json.dumps(expected["groups"]))
    assert (folder / "fairness-c0-federated.png").stat().st_size > 0


@pytest.fixture
def local_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands' audits over the in-process grid (the same messages and ClientApp; Ray is tested above)."""
    import simulations.audit

    def over_grid(audit: sa.Audited, job: Callable[..., Any], **_: object) -> Any:
        grid = AuditGrid(audit.cfg.num_clients)
        return job(grid, send(grid))

    monkeypatch.setattr(simulations.audit, "over_flower", over_grid)


def test_the_explain_and_monitor_commands_write_federated_reports(
    runs: dict[str, sa.Audited], module_home: Path, local_transport: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from uaap.cli import main

    args = ["explain", "audit-ckks", "--federated", "--grid-points", str(POINTS), "--max-evals", str(MAX_EVALS)]
    assert main(args) == 0
    shown = capsys.readouterr().out
    assert "federated: 3 clients, 336 rows" in shown and "mean log-loss 0." in shown
    assert re.search(r"(?m)^│ x0 +│ 0\.\d{4} +│ [+-]0\.\d{4} +│ \+0\.\d{4} ", shown), shown
    folder = module_home / "runs" / "audit-ckks" / "explain"
    report = json.loads((folder / "shap-federated.json").read_text())
    grid = AuditGrid(3)
    local = sa.explain(grid, runs["ckks"], send(grid), points=POINTS, max_evals=MAX_EVALS)
    total = {**local.plain, **fx.open_sums(local.encrypted, crypto.client_context(runs["ckks"].cfg), local.layout)}
    expected = fx.explain_report(total, plaintext_model(runs["ckks"]), local.grids, 1)
    for column, value in expected["mean_abs_shap"].items():
        assert report["mean_abs_shap"][column] == pytest.approx(value, abs=1e-5)
    assert report["secure_aggregation"] == "ckks" and report["ranking"][0] == expected["ranking"][0]
    assert (folder / "shap-federated-bar.png").stat().st_size > 0 and (folder / "pdp-federated.png").stat().st_size > 0
    assert report["repeats"] == 5 and report["importance_ranking"] == expected["importance_ranking"]
    for column, value in expected["permutation_importance"].items():
        assert report["permutation_importance"][column] == pytest.approx(value, abs=1e-5)
    assert (folder / "importance-federated.png").stat().st_size > 0

    new = str(module_home / "new.csv")
    assert main(["monitor", "--reference", "audit-none", "--data", new, "--federated"]) == 0
    shown = capsys.readouterr().out
    assert "drifted: " in shown and "x3" in shown
    drifts = sorted((module_home / "runs" / "audit-none" / "monitor").glob("drift-federated-*.json"))
    assert {"x3", "c1"} <= set(json.loads(drifts[-1].read_text())["drifted"])
    assert drifts[-1].with_suffix(".png").stat().st_size > 0


def test_bad_input_is_refused_before_anything_runs(
    runs: dict[str, sa.Audited], module_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from uaap.cli import main

    pd.DataFrame({"x0": [1.0, 2.0], "label": ["yes", "no"]}).to_csv(module_home / "narrow.csv", index=False)
    cases = {
        r"--pdp 'nosuch'.*choose one of: x0, x1": ["explain", "audit-none", "--data", "x.csv", "--pdp", "nosuch"],
        r"sensitive column 'nosuch' is not a column.*x0, x1": ["fairness", "audit-none", "--sensitive", "nosuch",
                                                               "--federated"],
        r"--mitigate is central": ["fairness", "audit-none", "--sensitive", "c0", "--federated", "--mitigate",
                                   "demographic_parity"],
        r"new rows lack .c0., .c1., .x1.": ["monitor", "--reference", "audit-none", "--data",
                                            str(module_home / "narrow.csv"), "--federated"],
    }  # fmt: skip
    before = sorted(p.name for p in (module_home / "runs" / "audit-none").rglob("*"))
    for pattern, args in cases.items():
        assert main(args) == 2, args
        assert re.search(pattern, capsys.readouterr().err), pattern
    assert sorted(p.name for p in (module_home / "runs" / "audit-none").rglob("*")) == before  # nothing written


def test_central_pdp_with_ice_curves_through_the_preprocessor(runs: dict[str, sa.Audited], module_home: Path) -> None:
    from uaap.cli import main

    model = plaintext_model(runs["none"])
    data = str(module_home / "new.csv")
    args = ["explain", "audit-none", "--data", data, "--pdp", "x0", "--pdp", "c0", "--max-rows", "40",
            "--background-rows", "5", "--grid-points", "7"]  # fmt: skip
    assert main(args) == 0
    folder = module_home / "runs" / "audit-none" / "explain"
    report = json.loads((folder / "pdp.json").read_text())
    rows = pd.read_csv(data)
    rows = rows.iloc[np.sort(np.random.default_rng(0).choice(len(rows), 40, replace=False))].reset_index(drop=True)
    for column in ("x0", "c0"):
        numbers = report["pdp"][column]
        assert numbers["rows"] == 40 and len(numbers["ice"]) == 40
        ice = np.asarray(numbers["ice"])
        np.testing.assert_allclose(numbers["pdp"], ice.mean(axis=0), atol=1e-12)  # the PDP is the mean ICE curve
        for i in (0, 17):  # an ICE point, independently: the row with the column set, through the preprocessor
            one = rows.iloc[[i]].copy()
            one[column] = numbers["grid"][2]
            assert ice[i, 2] == pytest.approx(model.predict_proba(one)[0, 1], abs=1e-6)
        assert (folder / f"pdp-{column}.png").stat().st_size > 0
    assert (
        report["pdp"]["c0"]["grid"]
        == pdp.column_plan(model.preprocessor, "c0").vocabulary
        == ["east", "north", "south"]
    )
    x0 = report["pdp"]["x0"]
    assert x0["grid"][0] == rows.x0.min() and x0["grid"][-1] == pytest.approx(rows.x0.max())
    assert x0["pdp"][-1] > x0["pdp"][0] + 0.2  # x0 drives the label up
