"""The validation report (uaap.data.profile) on a messy table whose faults the test planted and counts itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from uaap.data.profile import profile
from uaap.errors import DataError

ROWS = 400


@pytest.fixture(scope="module")
def messy() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    income = rng.normal(50_000, 8_000, ROWS)
    spikes = rng.choice(ROWS, 12, replace=False)  # 3% outliers, far beyond 1.5 IQR
    income[spikes] = rng.choice([-1, 1], 12) * 400_000
    age = rng.integers(18, 90, ROWS).astype(float)
    age[rng.choice(ROWS, 40, replace=False)] = np.nan  # 10% missing
    city = rng.choice(["Lyon", "Oslo", "Porto", "Graz"], ROWS).astype(object)
    city[rng.choice(ROWS, 40, replace=False)] = None
    label = rng.choice(["churn", "stay"], ROWS, p=[0.2, 0.8])
    words = ["late", "payment", "call", "support", "upgrade", "cancel", "discount", "router", "bill", "angry"]
    notes = [" ".join(rng.choice(words, 8)) + f" ticket {i}" for i in range(ROWS)]
    return pd.DataFrame(
        {
            "customer_id": np.arange(100_000, 100_000 + ROWS),
            "age": age,
            "income": income,
            "city": city,
            "joined": pd.date_range("2020-01-01", periods=ROWS, freq="D").strftime("%Y-%m-%d"),
            "notes": notes,
            "plan": "basic",  # constant
            "churn_flag": np.where(label == "churn", "Y", "N"),  # the target under another name
            "label": label,
        }
    )


def test_each_planted_fault_is_reported(messy: pd.DataFrame) -> None:
    report = profile(messy, "label", "messy.csv")
    kinds = {c.name: c.kind for c in report.columns}
    assert kinds == {
        "customer_id": "numeric", "age": "numeric", "income": "numeric", "city": "categorical",
        "joined": "datetime", "notes": "text", "plan": "categorical", "churn_flag": "categorical",
    }  # fmt: skip
    assert report.column("age").missing == pytest.approx(0.10) and report.column("city").missing == pytest.approx(0.10)
    x = messy["income"].to_numpy()
    q1, q3 = np.percentile(x, [25, 75])
    fences = (x < q1 - 1.5 * (q3 - q1)) | (x > q3 + 1.5 * (q3 - q1))  # the rule, computed here independently
    assert report.column("income").outliers_iqr == int(fences.sum()) and (np.abs(x) > 300_000).sum() == 12
    assert fences[np.abs(x) > 300_000].all()  # every planted spike is among them
    assert report.column("income").outliers_z == 12  # |z| > 3: exactly the spikes
    assert report.column("age").outliers_iqr == 0
    assert "ID-like" in report.column("customer_id").flags and report.column("customer_id").plan == "drop"
    assert "constant" in report.column("plan").flags and report.column("plan").plan == "drop"
    assert "free text" in report.column("notes").flags
    assert report.leakage == ("churn_flag",) and any("churn_flag" in w for w in report.warnings)
    assert report.column("age").plan.startswith("impute median")
    assert (
        report.column("city").plan
        == "impute most frequent, one-hot (the 20 most frequent; rare and unseen values: one infrequent column)"
    )
    assert report.column("joined").plan.startswith("expand") and report.column("joined").low == "2020-01-01 00:00:00"
    assert report.target.task == "classification"
    assert report.target.counts == {k: int(v) for k, v in messy["label"].value_counts().sort_index().items()}
    assert report.outlier_rows >= 12 and report.duplicates == 0
    # pandera's inferred schema checks another table: a value outside the observed range is caught
    import pandera.pandas as pa

    bad = messy.copy()
    bad.loc[0, "income"] = 10_000_000.0
    with pytest.raises(pa.errors.SchemaError):
        report.schema.validate(bad)


def test_regression_target_and_duplicates(messy: pd.DataFrame) -> None:
    frame = pd.concat([messy, messy.iloc[:5]], ignore_index=True)
    report = profile(frame.drop(columns=["churn_flag"]), "income")
    assert report.target.task == "regression" and report.duplicates == 5
    assert report.target.quantiles["median"] == pytest.approx(float(np.median(frame["income"])))
    with pytest.raises(DataError, match="target column 'nope' is not in table"):
        profile(messy, "nope")


def test_the_cli_prints_and_writes_html(messy: pd.DataFrame, tmp_path: Path, uaap_home: Path, capsys) -> None:
    from uaap.cli import main

    path = tmp_path / "messy.csv"
    messy.to_csv(path, index=False)
    assert main(["data", "profile", str(path), "--target", "label"]) == 0
    out = capsys.readouterr().out
    assert "churn_flag" in out and "determines the target" in out and "income" in out
    pages = list((uaap_home / "profiles").glob("messy-*.html"))
    assert len(pages) == 1 and "customer_id" in pages[0].read_text() and "ID-like" in pages[0].read_text()
    assert main(["data", "profile", str(path), "--target", "nope"]) == 2


def test_the_example_table_is_as_messy_as_promised_and_the_profile_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from uaap.cli import main

    out = tmp_path / "visits.parquet"
    assert main(["data", "example", str(out), "--rows", "400", "--seed", "2"]) == 0
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["age", "income", "score", "city", "plan", "visit", "notes", "label", "cost"]
    assert 0.06 < frame["age"].isna().mean() < 0.14 and frame["label"].notna().all()
    capsys.readouterr()
    assert main(["data", "profile", str(out), "--target", "label", "--out", str(tmp_path / "p.html")]) == 0
    assert "report:" in capsys.readouterr().out and (tmp_path / "p.html").is_file()
    notes = profile(frame, "label").column("notes")
    assert "high cardinality" in notes.flags and "--text-columns hashing" in notes.plan, notes
    assert main(["data", "example", str(tmp_path / "t.xml")]) == 2  # a suffix it cannot write: a clear refusal
