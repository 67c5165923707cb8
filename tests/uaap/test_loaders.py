"""Tables from files, URLs and databases (uaap.data.loaders), each read with pandas and pyarrow, and the errors."""

from __future__ import annotations

import gzip
import http.server
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from uaap.config import RunConfig
from uaap.data import load_config_table, load_table
from uaap.data.loaders import ReadOptions, read_frame, shown
from uaap.errors import DataError

ROWS = 40


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "age": rng.integers(20, 80, ROWS),
            "dose": np.round(rng.normal(1.5, 0.4, ROWS), 3),
            "site": rng.choice(["north", "south", "east"], ROWS),
            "label": rng.choice(["yes", "no"], ROWS),
        }
    )


@pytest.fixture(scope="module")
def files(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tables")
    out = {
        "csv": folder / "t.csv",
        "semicolon": folder / "eu.csv",
        "tsv": folder / "t.tsv",
        "json": folder / "t.json",
        "jsonl": folder / "t.jsonl",
        "parquet": folder / "t.parquet",
        "gz": folder / "t.csv.gz",
        "sqlite": folder / "t.db",
    }
    frame.to_csv(out["csv"], index=False)
    frame.to_csv(out["semicolon"], index=False, sep=";", decimal=",")  # a European spreadsheet export
    frame.to_csv(out["tsv"], index=False, sep="\t")
    frame.to_json(out["json"], orient="records")
    frame.to_json(out["jsonl"], orient="records", lines=True)
    frame.to_parquet(out["parquet"], index=False)
    out["gz"].write_bytes(gzip.compress(out["csv"].read_bytes()))
    with sqlite3.connect(out["sqlite"]) as conn:
        frame.to_sql("patients", conn, index=False)
    return out


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/slow"):
            time.sleep(3)
        super().do_GET()


@pytest.fixture(scope="module")
def server(files: dict[str, Path]) -> Iterator[str]:
    folder = str(files["csv"].parent)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Handler(*a, directory=folder))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("kind", ["csv", "tsv", "json", "jsonl", "parquet", "gz"])
def test_every_file_format_reads_the_same_table(files: dict[str, Path], frame: pd.DataFrame, kind: str) -> None:
    pd.testing.assert_frame_equal(read_frame(files[kind]), frame, check_dtype=False)


def test_sniffed_delimiter_and_decimal_comma(files: dict[str, Path], frame: pd.DataFrame) -> None:
    got = read_frame(files["semicolon"], ReadOptions(decimal=","))
    pd.testing.assert_frame_equal(got, frame, check_dtype=False)
    assert got["dose"].dtype.kind == "f"


def test_urls_and_databases(files: dict[str, Path], server: str, frame: pd.DataFrame) -> None:
    for source in (f"{server}/t.csv", f"{server}/t.parquet", f"{server}/t.jsonl", files["csv"].as_uri()):
        pd.testing.assert_frame_equal(read_frame(source), frame, check_dtype=False)
    url = f"sqlite:///{files['sqlite']}"
    pd.testing.assert_frame_equal(read_frame(url, ReadOptions(table="patients")), frame, check_dtype=False)
    young = read_frame(url, ReadOptions(query="SELECT age, label FROM patients WHERE age < 50"))
    assert list(young.columns) == ["age", "label"] and len(young) == int((frame["age"] < 50).sum())
    cfg = RunConfig(dataset="csv", data_path=url, target="label", data_table="patients")
    data = load_config_table(cfg)  # the run settings reach the reader
    assert data.X.shape == (ROWS, 2 + 3 + 1) and data.n_classes == 2  # age, dose, three one-hot sites, infrequent


def test_bad_sources_say_what_is_wrong(files: dict[str, Path], server: str, tmp_path: Path) -> None:
    url = f"sqlite:///{files['sqlite']}"
    cases = [
        (tmp_path / "missing.csv", ReadOptions(), "does not exist"),
        (files["csv"].with_suffix(".xyz"), ReadOptions(), "does not exist"),
        (f"{server}/nothing.csv", ReadOptions(), "HTTP 404"),
        (f"{server}/slow/t.csv", ReadOptions(timeout=0.5), "could not be fetched within 0.5s"),
        (url, ReadOptions(table="visits"), "table 'visits' is not in .*its tables are: patients"),
        (url, ReadOptions(), "exactly one of --data-table NAME or --data-query"),
        (url, ReadOptions(query="SELECT nope FROM patients"), "could not read from sqlite"),
    ]
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header = tmp_path / "header.csv"
    header.write_text("a,b,label\n")
    odd = tmp_path / "t.xml"
    odd.write_text("<t/>")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("name,label\nJos\xe9,1\nAna,0\n".encode("latin-1"))
    cases += [
        (empty, ReadOptions(), "is empty"),
        (header, ReadOptions(), "has a header but no rows"),
        (odd, ReadOptions(), "suffix '.xml'; expected one of"),
        (latin, ReadOptions(), "is not utf-8 text.*--data-encoding"),
    ]
    for source, options, message in cases:
        with pytest.raises(DataError, match=message):
            read_frame(source, options)
    assert read_frame(latin, ReadOptions(encoding="latin-1"))["name"][0] == "José"
    with pytest.raises(DataError, match="target column 'outcome' is not in"):
        load_table(files["csv"], "outcome")


def test_passwords_never_appear_in_what_is_printed() -> None:
    url = "postgresql+psycopg2://reader:s3cret@db.example:5432/clinic"
    assert shown(url) == "postgresql+psycopg2://reader:***@db.example:5432/clinic"
    with pytest.raises(DataError) as err:
        read_frame(url.replace("db.example", "127.0.0.1").replace("5432", "1"), ReadOptions(table="t", timeout=2))
    assert "s3cret" not in str(err.value)
