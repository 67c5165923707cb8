"""`uaap compare`'s family view: each family's central and federated results on the same data side by side."""

from __future__ import annotations

from uaap.compare import TEST, VALIDATION, RunRow, family_rows, family_table


def _row(run: str, kind: str, model: str, value: float | None, metric: str = "accuracy", on: str = TEST) -> RunRow:
    return RunRow(run, run, kind, run, "digits" if metric == "accuracy" else "diabetes", model, "none", value, None,
                  10, 1.0, "completed", "seed 42, 20%", measured_on=on, metric=metric)  # fmt: skip


def test_each_family_shows_its_best_central_and_federated_result_and_their_gap():
    rows = [
        _row("c1", "central", "random_forest", 0.95),
        _row("c2", "central", "random_forest", 0.97),
        _row("f1", "federated", "random_forest", 0.93),
        _row("f2", "federated", "random_forest", 0.99, on=VALIDATION),  # other rows: left out
        _row("f3", "federated", "mlp", 0.90),
        _row("r1", "central", "mlp", 60.0, metric="rmse"),
        _row("r2", "federated", "mlp", 55.0, metric="rmse"),
        _row("r3", "federated", "mlp", 58.0, metric="rmse"),
        _row("x", "federated", "logreg", None),
    ]
    got = {(r["family"], r["metric"]): r for r in family_rows(rows)}
    assert set(got) == {("random_forest", "accuracy"), ("mlp", "accuracy"), ("mlp", "rmse")}
    forest = got[("random_forest", "accuracy")]
    assert (forest["central"], forest["federated"]) == (0.97, 0.93)
    assert forest["federated - central"] == 0.93 - 0.97
    assert got[("mlp", "accuracy")]["central"] is None and got[("mlp", "accuracy")]["federated - central"] is None
    assert got[("mlp", "rmse")]["federated"] == 55.0  # lower is better for an error
    assert len(family_table(rows).rows) == 3
