"""The privacy ledger (SQLAlchemy, sqlite by default, any URL via UAAP_LEDGER_URL) and the budget table."""

from __future__ import annotations

import io

from rich.console import Console

from uaap.privacy.ledger import Budget, Ledger, Release, ledger_url, per_round
from uaap.privacy.report import budget_rows, budget_table, client_table, final_epsilons


def _rows(run: str) -> list[Release]:
    return [
        Release(run, 1, "partition-0", "example", "dp-sgd", 0.8, 0.05, 20, 1e-5, 1.5),
        Release(run, 1, "*", "user", "central-gaussian", 1.0, 0.5, 1, 1e-5, 3.89),
        Release(run, 2, "partition-1", "example", "dp-sgd", 0.9, 0.04, 25, 1e-5, 1.2),
        Release(run, 2, "*", "user", "central-gaussian", 1.0, 0.5, 1, 1e-5, 5.38),
    ]


def test_default_location_is_the_workspace_and_url_overrides(uaap_home, tmp_path, monkeypatch):
    assert ledger_url() == f"sqlite:///{uaap_home / 'ledger.db'}"
    other = tmp_path / "elsewhere.db"
    monkeypatch.setenv("UAAP_LEDGER_URL", f"sqlite:///{other}")
    ledger = Ledger()
    ledger.set_budget(Budget("r", 6.0, 1e-5, "rdp", "user+example"))
    ledger.record(_rows("r"))
    assert other.is_file() and not (uaap_home / "ledger.db").exists()
    assert [b.run_id for b in Ledger(f"sqlite:///{other}").runs()] == ["r"]


def test_record_read_truncate_and_tables(uaap_home):
    ledger = Ledger()
    ledger.set_budget(Budget("r", 6.0, 1e-5, "rdp", "user+example"))
    ledger.set_budget(Budget("r", 7.0, 1e-5, "rdp", "user+example"))  # replaced, not duplicated
    assert ledger.record(_rows("r")) == 4
    ledger.record(_rows("other"))
    assert len(ledger.releases("r")) == 4 and len(ledger.releases("r", level="user")) == 2
    assert ledger.budget("r").max_epsilon == 7.0 and len(ledger.runs()) == 1
    assert set(per_round(ledger.releases("r"))[2]) == {"partition-1", "*"}
    rows = budget_rows("r", ledger)
    assert [r["user_epsilon"] for r in rows] == [3.89, 5.38]
    assert [r["example_epsilon_max"] for r in rows] == [1.5, 1.5]  # partition-0 keeps its 1.5 in round 2
    assert final_epsilons("r", ledger) == {"user": 5.38, "partition-0": 1.5, "partition-1": 1.2}
    out = io.StringIO()
    console = Console(file=out, width=150)
    console.print(budget_table("r", ledger))
    console.print(client_table("r", ledger))
    text = out.getvalue()
    assert "5.380" in text and "77%" in text and "max-epsilon=7" in text and "partition-1" in text
    assert ledger.truncate("r", after_round=1) == 2
    assert [r.round for r in ledger.releases("r")] == [1, 1]
    assert len(ledger.releases("other")) == 4


def test_ledger_urls_are_printed_without_their_password():
    from uaap.privacy.ledger import redact

    secret = "s3cr3t-Pa55"
    shown = redact(f"postgresql+psycopg2://ledger:{secret}@db.example:5432/privacy")
    assert secret not in shown and shown == "postgresql+psycopg2://ledger:***@db.example:5432/privacy"
    assert redact("sqlite:////tmp/ledger.db") == "sqlite:////tmp/ledger.db"
    assert secret not in redact(f"not a url {secret}")


def _render(*tables) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=100, color_system=None)
    for table in tables:
        console.print(table)
    return [line.rstrip() for line in out.getvalue().splitlines()]


def test_budget_and_client_tables_print_exactly_what_the_ledger_holds(uaap_home):
    # Checked by hand against the rows: budget used is the headline epsilon over max-epsilon 8 (3.89 -> 49%),
    # a client's example epsilon is its latest (node-1: 2.25 from round 2 on), epsilons above 100 drop decimals.
    ledger = Ledger()
    ledger.set_budget(Budget("g", 8.0, 1e-5, "rdp", "user+example"))
    ledger.record(
        [
            Release("g", 1, "node-1", "example", "dp-sgd", 0.8, 0.05, 20, 1e-5, 1.5),
            Release("g", 1, "*", "user", "central-gaussian", 1.0, 0.5, 1, 1e-5, 3.89),
            Release("g", 2, "node-2", "example", "dp-sgd", 0.9, 0.04, 25, 1e-5, 1.2),
            Release("g", 2, "node-1", "example", "dp-sgd", 0.8, 0.05, 20, 1e-5, 2.25),
            Release("g", 2, "*", "user", "central-gaussian", 1.0, 0.5, 1, 1e-5, 5.38),
            Release("g", 3, "node-2", "example", "dp-sgd", 0.9, 0.04, 25, 1e-5, 1.7),
            Release("g", 3, "*", "user", "central-gaussian", 1.0, 0.5, 1, 1e-5, 123.4),
        ]
    )
    assert _render(budget_table("g", ledger), client_table("g", ledger)) == [
        "                    privacy budget of g",
        "       central            user   DP-SGD  max example  budget",
        "round    sigma      q  epsilon  clients      epsilon    used",
        "────────────────────────────────────────────────────────────",
        "    1     1.00  0.500    3.890        1        1.500     49%",
        "    2     1.00  0.500    5.380        2        2.250     67%",
        "    3     1.00  0.500    123.4        1        2.250   1542%",
        "user-level epsilon 123.400, max example-level epsilon 2.250,",
        "delta=1e-05, accountant=rdp, levels=user+example,",
        "max-epsilon=8. user: client-level (central DP); example:",
        "DP-SGD, the largest client's so far",
        "     example-level DP-SGD per client (g)",
        "client  sigma       q  rounds  steps  epsilon",
        "─────────────────────────────────────────────",
        "node-1  0.800  0.0500       2     40    2.250",
        "node-2  0.900  0.0400       2     50    1.700",
    ]
    assert final_epsilons("g", ledger) == {"node-1": 2.25, "user": 123.4, "node-2": 1.7}
    ledger.set_budget(Budget("u", 0.0, 1e-5, "prv", "example"))
    ledger.record([Release("u", 1, "node-1", "example", "dp-sgd", 0.8, 0.05, 20, 1e-5, 1.5)])
    assert _render(budget_table("u", ledger)) == [
        "                  privacy budget of u",
        "       central        user   DP-SGD  max example  budget",
        "round    sigma  q  epsilon  clients      epsilon    used",
        "────────────────────────────────────────────────────────",
        "    1        -  -        -        1        1.500       -",
        "delta=1e-05, max example-level epsilon 1.500,",
        "accountant=prv, levels=example, no budget limit. user:",
        "client-level (central DP); example: DP-SGD, the largest",
        "client's so far",
    ]
    assert _render(budget_table("none", ledger))[-1] == "no DP releases recorded for this run"
    assert budget_rows("none", ledger) == [] and final_epsilons("none", ledger) == {}


def test_ledger_orders_runs_by_creation_and_truncate_counts_what_it_dropped(uaap_home):
    from uaap.privacy.ledger import redact

    ledger = Ledger()
    ledger.set_budget(Budget("later", 1.0, 1e-5, "rdp", "user", created=20.0))
    ledger.set_budget(Budget("earlier", 1.0, 1e-5, "rdp", "user", created=10.0))
    assert [b.run_id for b in ledger.runs()] == ["earlier", "later"]
    assert ledger.truncate("later", after_round=0) == 0
    ledger.record(_rows("later"))
    assert ledger.truncate("later", after_round=5) == 0 and ledger.truncate("later", after_round=1) == 2
    assert redact("::not a url::") == "<unparsable ledger URL>"


def test_tables_read_the_ledger_they_are_given_and_show_partial_rounds_and_small_budgets(uaap_home, tmp_path):
    # The workspace's own ledger holds a decoy of run "e": every table must read the ledger it is handed instead.
    decoy = Ledger()
    decoy.set_budget(Budget("e", 50.0, 1e-5, "rdp", "user"))
    decoy.record([Release("e", 1, "*", "user", "central-gaussian", 9.0, 0.9, 1, 1e-5, 99.0)])
    ledger = Ledger(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    ledger.set_budget(Budget("e", 3.0, 1e-5, "rdp", "user+example"))
    ledger.record(
        [
            Release("e", 1, "*", "user", "central-gaussian", 1.0, 0.5, 1, 1e-5, 0.3),  # no DP-SGD client yet
            Release("e", 2, "node-1", "example", "dp-sgd", 0.8, 0.05, 20, 1e-5, 1.5),  # no central release
            Release("x", 1, "node-9", "example", "dp-sgd", 0.7, 0.02, 10, 1e-5, 9.0),  # another run
        ]
    )
    assert budget_rows("e", ledger) == [
        {"round": 1, "sigma": 1.0, "q": 0.5, "user_epsilon": 0.3, "clients": 0, "example_epsilon_max": None},
        {"round": 2, "sigma": None, "q": None, "user_epsilon": None, "clients": 1, "example_epsilon_max": 1.5},
    ]
    assert final_epsilons("e", ledger) == {"user": 0.3, "node-1": 1.5}
    # budget used: the user epsilon over max-epsilon 3 (0.3 -> 10%), else the largest example epsilon (1.5 -> 50%)
    assert _render(budget_table("e", ledger))[4:6] == [
        "    1     1.00  0.500    0.300        -            -     10%",
        "    2        -      -        -        1        1.500     50%",
    ]
    assert _render(client_table("e", ledger))[3:] == ["node-1  0.800  0.0500       1     20    1.500"]
    # a budget below 1 is still a limit (0.25 of 0.5 -> 50%); a budget without releases still has its caption
    ledger.set_budget(Budget("small", 0.5, 1e-5, "rdp", "user"))
    ledger.record([Release("small", 1, "*", "user", "central-gaussian", 2.0, 0.1, 1, 1e-5, 0.25)])
    assert _render(budget_table("small", ledger))[4:] == [
        "    1     2.00  0.100    0.250        -            -     50%",
        "user-level epsilon 0.250, delta=1e-05, accountant=rdp,",
        "levels=user, max-epsilon=0.5. user: client-level (central",
        "DP); example: DP-SGD, the largest client's so far",
    ]
    ledger.set_budget(Budget("empty", 2.0, 1e-5, "rdp", "user"))
    assert budget_rows("empty", ledger) == [] and _render(budget_table("empty", ledger))[4:] == [
        "delta=1e-05, accountant=rdp, levels=user, max-epsilon=2.",
        "user: client-level (central DP); example: DP-SGD, the",
        "largest client's so far",
    ]
    # releases without a budget row: no limit to measure against
    ledger.record([Release("nobudget", 1, "*", "user", "central-gaussian", 2.0, 0.1, 1, 1e-5, 0.25)])
    assert (
        _render(budget_table("nobudget", ledger))[4] == "    1     2.00  0.100    0.250        -            -       -"
    )


def test_times_are_stamped_when_missing_and_a_resumed_budget_keeps_its_creation_time(uaap_home, monkeypatch):
    import sqlite3
    import time
    from contextlib import closing

    ledger = Ledger()
    monkeypatch.setattr(time, "time", lambda: 1000.0)
    ledger.set_budget(Budget("r", 6.0, 1e-5, "rdp", "user"))  # created 0: now
    assert ledger.budget("r") == Budget("r", 6.0, 1e-5, "rdp", "user", created=1000.0)
    monkeypatch.setattr(time, "time", lambda: 2000.0)
    ledger.set_budget(Budget("r", 7.0, 1e-5, "rdp", "user"))  # resumed with a new limit: still created at 1000
    ledger.set_budget(Budget("s", 1.0, 1e-5, "rdp", "user", created=5.0))  # an explicit time is kept
    assert [(b.run_id, b.max_epsilon, b.created) for b in ledger.runs()] == [("s", 1.0, 5.0), ("r", 7.0, 1000.0)]
    rows = _rows("r")
    rows[0] = Release(**{**rows[0].__dict__, "time": 7.5})
    assert ledger.record(rows) == 4 and ledger.record([]) == 0
    assert [r.time for r in ledger.releases("r")] == [7.5, 2000.0, 2000.0, 2000.0]
    # write-ahead logging: the dashboard and `uaap privacy report` read while the server writes
    with closing(sqlite3.connect(uaap_home / "ledger.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with ledger.engine.connect() as conn:  # and a writer waits up to 30 s for another's lock (sqlite's default: 5)
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_a_ledger_that_cannot_be_opened_is_named_without_its_password():
    import pytest

    from uaap.errors import WorkspaceError

    with pytest.raises(WorkspaceError) as err:
        Ledger("mysql+mysqldb://ledger:s3cr3t@db.example/privacy")  # no MySQL driver here
    shown = str(err.value)
    assert shown.startswith("cannot open the privacy ledger at 'mysql+mysqldb://ledger:***@db.example/privacy': ")
    assert shown.endswith("; check UAAP_LEDGER_URL") and "s3cr3t" not in shown
