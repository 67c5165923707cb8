"""The demo's tables fit an 80-column terminal: no header or number is cut, and piped output stays plain."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from uaap import workspace
from uaap.config import RunConfig
from uaap.privacy.ledger import Budget, Ledger, Release
from uaap.privacy.report import budget_table, client_table
from uaap.report import comparison_table, summary_table

RUN = "run-20261128-231439-0b49"  # run ids as workspace.new_run_id makes them
USER_EPS = 1486.2345  # the demo's user-level epsilon: 10 clients cannot buy a small one


def _render(table: object, width: int = 80) -> str:
    out = io.StringIO()
    Console(file=out, width=width).print(table)  # a file: what CI logs and pipes get
    return out.getvalue()


def _demo_like_run() -> None:
    rd = workspace.run_dir(RUN)
    rd.write_config(RunConfig(run_id=RUN))
    for r in range(11):
        event: dict[str, object] = {"round": r, "central": {"loss": 2.3 / (r + 1), "accuracy": 0.1 + 0.08 * r}}
        if r:
            event |= {
                "replies": 10,
                "seconds": 112.345,
                "train": {"train-loss": 1.23456 / r},
                "evaluate": {"loss": 0.9 / r, "accuracy": 0.5 + 0.04 * r},
                "privacy": {"epsilon": USER_EPS * r / 10, "user_epsilon": USER_EPS * r / 10},
            }
        rd.log_event("round", **event)
    ledger = Ledger()
    ledger.set_budget(Budget(RUN, 0.0, 1e-5, "rdp", "user+example"))
    releases = []
    for r in range(1, 11):
        releases.append(Release(RUN, r, "*", "user", "central-gaussian", 0.02, 1.0, 1, 1e-5, USER_EPS * r / 10))
        releases += [
            Release(RUN, r, f"partition-{c}", "example", "dpsgd", 1.1, 0.05, 40, 1e-5, 0.795 * r) for c in (0, 9)
        ]
    ledger.record(releases)
    ledger.close()


def _assert_whole(text: str, headers: list[str], numbers: list[str]) -> None:
    assert "…" not in text and "..." not in text, text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    for header in headers:
        assert re.search(rf"(^|\s){re.escape(header)}(\s|$)", text, re.MULTILINE), (header, text)
    for number in numbers:
        assert number in text, (number, text)
    assert "\x1b[" not in text, "piped output carries no terminal escapes"


def test_round_privacy_and_comparison_tables_fit_80_columns(uaap_home: Path) -> None:
    _demo_like_run()
    rd = workspace.existing_run(RUN)
    _assert_whole(
        _render(summary_table(rd, central_accuracy=0.9722)),
        ["round", "clients", "train", "loss", "val.", "acc.", "test", "epsilon", "secs"],
        [RUN, "1486.2", "0.1235", "0.9000", "112.3", "0.9722"],
    )
    _assert_whole(
        _render(budget_table(RUN)),
        ["round", "central", "sigma", "q", "user", "epsilon", "DP-SGD", "clients", "max example", "budget", "used"],
        [RUN, "1486.2", "0.02", "1.000", "7.950", "1486.235"],
    )
    _assert_whole(_render(client_table(RUN)), ["client", "sigma", "rounds", "steps", "epsilon"], ["partition-9"])
    rows = [
        ("federated, secure aggregation", RUN, 0.9433, 0.9412, None, None),
        ("federated, secure aggregation + DP", "run-20261128-231901-77ab", 0.7431, 0.739, USER_EPS, 7.95),
        ("central training (no federation)", "central-20261128-232210-9c1d", 0.9722, None, None, None),
    ]
    _assert_whole(
        _render(comparison_table(rows)),
        ["run", "test", "acc.", "val.", "user", "example", "epsilon"],
        [label for label, *_ in rows] + [r[1] for r in rows] + ["0.9433", "0.7390", "1486.2", "7.950", "0.9722"],
    )


def test_a_regression_run_reports_and_plots_r2(uaap_home: Path) -> None:
    from uaap.report import accuracy_plot

    rd = workspace.run_dir("regression-run")
    rd.write_config(RunConfig(run_id="regression-run", dataset="diabetes"))
    for r, r2 in enumerate((-0.8, 0.31, 0.4567)):
        event = {"round": r, "central": {"loss": 3000.0 / (r + 1), "r2": r2}}
        rd.log_event("round", **(event | ({"evaluate": {"loss": 2500.0, "r2": r2 - 0.01}} if r else {})))
    text = _render(summary_table(rd, central_accuracy=0.5))
    assert "R2" in text
    assert "0.4567" in text and "acc." not in text and "test r2 0.5000" in " ".join(text.split())
    png = accuracy_plot(rd)
    assert png.stat().st_size > 10_000  # two curves and a baseline, not an empty frame
