"""Budget tables from the privacy ledger (rich), for ``uaap privacy report RUN`` and the demo."""

from __future__ import annotations

from typing import Any

from uaap.privacy.ledger import EXAMPLE, SERVER_CLIENT, USER, Ledger, per_round


def budget_rows(run_id: str, ledger: Ledger | None = None) -> list[dict[str, Any]]:
    """One dict per round: user-level release and epsilon, clients' DP-SGD releases and largest epsilon."""
    ledger = ledger or Ledger()
    latest: dict[str, float] = {}
    rows = []
    for rnd, by_client in per_round(ledger.releases(run_id)).items():
        user = by_client.get(SERVER_CLIENT)
        local = [r for c, r in by_client.items() if c != SERVER_CLIENT]
        for r in local:
            latest[r.client] = r.epsilon
        rows.append(
            {
                "round": rnd,
                "sigma": user.sigma if user else None,
                "q": user.q if user else None,
                "user_epsilon": user.epsilon if user else None,
                "clients": len(local),
                "example_epsilon_max": max(latest.values()) if latest else None,
            }
        )
    return rows


def budget_table(run_id: str, ledger: Ledger | None = None) -> Any:
    """A rich Table: per round, the client-level release and epsilon, the DP-SGD clients and their max epsilon."""
    from uaap.report import fmt, fmt_epsilon, narrow_table

    ledger = ledger or Ledger()
    budget = ledger.budget(run_id)
    rows = budget_rows(run_id, ledger)
    max_eps = budget.max_epsilon if budget else 0.0
    table = narrow_table(
        f"privacy budget of {run_id}",
        ["round", "central\nsigma", "q", "user\nepsilon", "DP-SGD\nclients", "max example\nepsilon", "budget\nused"],
    )

    for row in rows:
        headline = row["user_epsilon"] if row["user_epsilon"] is not None else row["example_epsilon_max"]
        used = f"{100 * headline / max_eps:.0f}%" if max_eps > 0 and headline is not None else "-"
        table.add_row(
            str(row["round"]),
            fmt(row["sigma"], 2),
            fmt(row["q"], 3),
            fmt_epsilon(row["user_epsilon"]),
            str(row["clients"] or "-"),
            fmt_epsilon(row["example_epsilon_max"]),
            used,
        )
    if budget is None:
        table.caption = "no DP releases recorded for this run"
    else:
        final = rows[-1] if rows else {}
        parts = [f"delta={budget.delta:g}", f"accountant={budget.accountant}", f"levels={budget.levels}"]
        if final.get("user_epsilon") is not None:
            parts.insert(0, f"user-level epsilon {final['user_epsilon']:.3f}")
        if final.get("example_epsilon_max") is not None:
            parts.insert(1, f"max example-level epsilon {final['example_epsilon_max']:.3f}")
        parts.append(f"max-epsilon={max_eps:g}" if max_eps > 0 else "no budget limit")
        table.caption = (
            ", ".join(parts) + ". user: client-level (central DP); example: DP-SGD, the largest client's so far"
        ) + lineage(run_id)
    return table


def lineage(run_id: str) -> str:
    """A caption's note on the runs this one continues (``continue-from``), whose epsilon its own includes."""
    from uaap import workspace

    try:
        events = workspace.run_dir(run_id).events("continue")
    except Exception:  # a ledger without the run's folder: nothing to say
        return ""
    if not events:
        return ""
    e = events[-1]
    totals = [f"{label} {e[key]:.3f}" for key, label in (("user_epsilon", "user-level epsilon"),
              ("example_epsilon_max", "max example-level epsilon")) if key in e]  # fmt: skip
    spent = f": {', '.join(totals)} after its {int(e.get('parent_round', 0))} rounds" if totals else ""
    return f". Continues run {e['parent']}{spent}; the epsilons above include it (continual training)"


def client_table(run_id: str, ledger: Ledger | None = None) -> Any:
    """A rich Table: each client's DP-SGD noise, rounds, steps and final example-level epsilon."""
    from uaap.report import narrow_table

    ledger = ledger or Ledger()
    stats: dict[str, dict[str, Any]] = {}
    for r in ledger.releases(run_id, level=EXAMPLE):
        s = stats.setdefault(r.client, {"rounds": 0, "steps": 0})
        s.update(sigma=r.sigma, q=r.q, epsilon=r.epsilon)
        s["rounds"] += 1
        s["steps"] += r.steps
    table = narrow_table(
        f"example-level DP-SGD per client ({run_id})", ["client", "sigma", "q", "rounds", "steps", "epsilon"]
    )
    for client, s in sorted(stats.items()):
        table.add_row(
            client, f"{s['sigma']:.3f}", f"{s['q']:.4f}", str(s["rounds"]), str(s["steps"]), f"{s['epsilon']:.3f}"
        )
    return table


def final_epsilons(run_id: str, ledger: Ledger | None = None) -> dict[str, float]:
    """``{"user": eps, "<client>": eps, ...}``: the last cumulative epsilon of every subject of a run."""
    ledger = ledger or Ledger()
    out: dict[str, float] = {}
    for r in ledger.releases(run_id):
        out[USER if r.level == USER else r.client] = r.epsilon
    return out
