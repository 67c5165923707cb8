"""The privacy ledger: one row per DP release, in SQL (sqlite in the workspace by default).

Every release a run makes is recorded with what is needed to re-account it independently:
run, round, client (``*`` for the server's client-level release), level (``user`` or ``example``),
mechanism, noise multiplier ``sigma``, sampling probability ``q``, ``steps``, ``delta`` and the
subject's cumulative ``epsilon`` after the release. A ``budgets`` table holds each run's settings
(max-epsilon, delta, accountant) for reports and the dashboard.

Location: ``UAAP_LEDGER_URL`` (any SQLAlchemy URL, e.g. ``postgresql+psycopg2://user@host/db``), else
``sqlite:///<workspace>/ledger.db``. Only the server process writes; readers (report, dashboard) may run
while a run is going (sqlite WAL mode lets them read without blocking the writer).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from uaap.errors import WorkspaceError

LEDGER_ENV = "UAAP_LEDGER_URL"
USER, EXAMPLE = "user", "example"
SERVER_CLIENT = "*"


@dataclass(frozen=True)
class Release:
    """One DP release and the subject's cumulative epsilon after it."""

    run_id: str
    round: int
    client: str
    level: str
    mechanism: str
    sigma: float
    q: float
    steps: int
    delta: float
    epsilon: float
    accountant: str = "rdp"
    time: float = 0.0


@dataclass(frozen=True)
class Budget:
    """A run's privacy settings."""

    run_id: str
    max_epsilon: float
    delta: float
    accountant: str
    levels: str
    created: float = 0.0


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for anything printed or logged)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show nothing of it
        return "<unparsable ledger URL>"


def ledger_url() -> str:
    """``UAAP_LEDGER_URL`` or the workspace's ``ledger.db``."""
    from uaap import workspace

    return os.environ.get(LEDGER_ENV) or f"sqlite:///{workspace.home() / 'ledger.db'}"


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[Any, Any, Any]:
    from sqlalchemy import Column, Float, Integer, MetaData, String, Table

    meta = MetaData()
    releases = Table(
        "releases",
        meta,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("run_id", String(200), nullable=False, index=True),
        Column("round", Integer, nullable=False),
        Column("client", String(200), nullable=False),
        Column("level", String(16), nullable=False),
        Column("mechanism", String(64), nullable=False),
        Column("sigma", Float, nullable=False),
        Column("q", Float, nullable=False),
        Column("steps", Integer, nullable=False),
        Column("delta", Float, nullable=False),
        Column("epsilon", Float, nullable=False),
        Column("accountant", String(16), nullable=False),
        Column("time", Float, nullable=False),
    )
    budgets = Table(
        "budgets",
        meta,
        Column("run_id", String(200), primary_key=True),
        Column("max_epsilon", Float, nullable=False),
        Column("delta", Float, nullable=False),
        Column("accountant", String(16), nullable=False),
        Column("levels", String(32), nullable=False),
        Column("created", Float, nullable=False),
    )
    return meta, releases, budgets


class Ledger:
    """Read and write the privacy ledger at ``url`` (default :func:`ledger_url`)."""

    def __init__(self, url: str | None = None) -> None:
        from sqlalchemy import create_engine, event

        self.url = url or ledger_url()
        sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}} if sqlite else {"pool_pre_ping": True}
        try:
            self.engine = create_engine(self.url, **kwargs)
        except Exception as exc:  # bad URL or missing driver
            raise WorkspaceError(
                f"cannot open the privacy ledger at {redact(self.url)!r}: {exc}; check {LEDGER_ENV}"
            ) from exc
        if sqlite:

            @event.listens_for(self.engine, "connect")
            def _wal(dbapi_conn: Any, _: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.close()

        meta, self._releases, self._budgets = _tables()
        meta.create_all(self.engine)

    # ---- writing ---------------------------------------------------------------------------------
    def set_budget(self, budget: Budget) -> None:
        """Insert or replace a run's budget settings (a resumed run keeps its creation time)."""
        from sqlalchemy import delete, insert

        old = self.budget(budget.run_id)
        row = asdict(budget) | {"created": budget.created or (old.created if old else time.time())}
        with self.engine.begin() as conn:
            conn.execute(delete(self._budgets).where(self._budgets.c.run_id == budget.run_id))
            conn.execute(insert(self._budgets).values(**row))

    def record(self, releases: Iterable[Release]) -> int:
        """Append releases (one transaction); returns how many."""
        from sqlalchemy import insert

        now = time.time()
        rows = [asdict(r) | {"time": r.time or now} for r in releases]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(insert(self._releases), rows)
        return len(rows)

    def truncate(self, run_id: str, after_round: int) -> int:
        """Delete a run's rows after ``after_round`` (a resumed run replays those rounds); returns how many."""
        from sqlalchemy import delete

        with self.engine.begin() as conn:
            res = conn.execute(
                delete(self._releases).where(self._releases.c.run_id == run_id, self._releases.c.round > after_round)
            )
        return int(res.rowcount or 0)

    # ---- reading ---------------------------------------------------------------------------------
    def releases(self, run_id: str | None = None, level: str | None = None) -> list[Release]:
        """Releases in insertion order, optionally of one run and one level."""
        from sqlalchemy import select

        t = self._releases
        query = select(t).order_by(t.c.id)
        if run_id is not None:
            query = query.where(t.c.run_id == run_id)
        if level is not None:
            query = query.where(t.c.level == level)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [Release(**{k: v for k, v in row.items() if k != "id"}) for row in rows]

    def budget(self, run_id: str) -> Budget | None:
        """A run's budget settings, or None when the run made no DP release."""
        from sqlalchemy import select

        with self.engine.connect() as conn:
            row = conn.execute(select(self._budgets).where(self._budgets.c.run_id == run_id)).mappings().first()
        return Budget(**row) if row else None

    def runs(self) -> list[Budget]:
        """Every run with a budget row, oldest first."""
        from sqlalchemy import select

        with self.engine.connect() as conn:
            rows = conn.execute(select(self._budgets).order_by(self._budgets.c.created)).mappings().all()
        return [Budget(**row) for row in rows]

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()


def per_round(releases: Iterable[Release]) -> dict[int, dict[str, Release]]:
    """``{round: {client: last release}}``; the server's user-level release is under ``*``."""
    out: dict[int, dict[str, Release]] = {}
    for r in releases:
        out.setdefault(r.round, {})[r.client if r.level == EXAMPLE else SERVER_CLIENT] = r
    return dict(sorted(out.items()))
