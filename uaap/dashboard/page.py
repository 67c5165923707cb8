"""The privacy-budget page (Streamlit): what ``uaap dashboard`` serves alone and the workbench (``uaap ui``) shows
as its privacy page; one :func:`render` for both.

``UAAP_HOME`` / ``UAAP_LEDGER_URL`` say where the workspace and the ledger are, ``UAAP_DASHBOARD_REFRESH`` how
often (seconds) the page re-reads them.
"""

from __future__ import annotations

import os

import altair as alt
import pandas as pd
import streamlit as st

from uaap.dashboard import WARN_AT, accuracy_vs_epsilon, budget_status, epsilon_series
from uaap.privacy.ledger import Ledger, redact


def render() -> None:
    """Budget gauges and epsilon curves of the run picked in the sidebar, then accuracy against epsilon."""
    st.title("Privacy budget")

    ledger = Ledger()
    runs = ledger.runs()
    if not runs:
        st.info(
            f"No differentially private runs in the ledger yet ({redact(ledger.url)}). "
            "Start one with --dp-central or --dp-local."
        )
        return

    run_ids = [b.run_id for b in reversed(runs)]  # newest first
    wanted = st.query_params.get("run")  # ?run=<id> preselects a run (shareable link)
    run_id = st.sidebar.selectbox("run", run_ids, index=run_ids.index(wanted) if wanted in run_ids else 0)
    refresh = float(os.environ.get("UAAP_DASHBOARD_REFRESH", "5"))
    st.sidebar.caption(f"ledger: {redact(ledger.url)}" + (f" (refresh every {refresh:g} s)" if refresh > 0 else ""))

    def run_panel() -> None:
        """Budget gauges, warnings and the epsilon curves of the selected run (re-read on every refresh)."""
        status = budget_status(ledger, run_id)
        cols = st.columns(4)
        cols[0].metric(f"epsilon spent ({status['level']} level)", f"{status['epsilon']:.3f}")
        cols[1].metric("max-epsilon", f"{status['max_epsilon']:g}" if status["max_epsilon"] > 0 else "no limit")
        cols[2].metric("budget remaining", "-" if status["remaining"] is None else f"{status['remaining']:.3f}")
        cols[3].metric("rounds released", status["rounds"])
        if status["used"] is not None:
            st.progress(min(status["used"], 1.0), text=f"{100 * status['used']:.0f}% of the budget used")
            if status["state"] == "exhausted":
                st.error(
                    f"Privacy budget exhausted: epsilon {status['epsilon']:.3f} >= "
                    f"max-epsilon {status['max_epsilon']:g}."
                )
            elif status["state"] == "warning":
                st.warning(f"Over {100 * WARN_AT:.0f}% of the privacy budget is spent ({100 * status['used']:.0f}%).")
        st.caption(f"delta = {status['delta']:g}, accountant = {status['accountant']}")

        series = pd.DataFrame(epsilon_series(ledger, run_id))
        st.subheader("Epsilon per round")
        if series.empty:
            st.info("No release recorded yet for this run.")
            return
        chart = (
            alt.Chart(series)
            .mark_line(point=True)
            .encode(
                x=alt.X("round:Q", title="round", axis=alt.Axis(tickMinStep=1, format="d")),
                y=alt.Y("epsilon:Q", title="cumulative epsilon"),
                color=alt.Color("subject:N", title="subject"),
                strokeDash=alt.StrokeDash("level:N", title="level"),
                tooltip=["round", "subject", "epsilon"],
            )
        )
        if status["max_epsilon"] > 0:
            rule = alt.Chart(pd.DataFrame({"max_epsilon": [status["max_epsilon"]]})).mark_rule(
                color="red", strokeDash=[6, 3]
            )
            chart = chart + rule.encode(y="max_epsilon:Q")
        st.altair_chart(chart, width="stretch")
        with st.expander("ledger rows"):
            st.dataframe(pd.DataFrame([r.__dict__ for r in ledger.releases(run_id)]), hide_index=True)

    if refresh > 0:
        st.fragment(run_every=refresh)(run_panel)()
    else:
        run_panel()

    st.subheader("Accuracy against epsilon, across runs")
    points = pd.DataFrame(accuracy_vs_epsilon(ledger, runs))
    if points.empty:
        st.info("No run has both an accuracy and a DP release yet.")
    else:
        scatter = (
            alt.Chart(points)
            .mark_circle(size=90)
            .encode(
                x=alt.X("epsilon:Q", title="final epsilon"),
                y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
                color=alt.Color("level:N"),
                tooltip=["run_id", "epsilon", "accuracy", "level"],
            )
        )
        st.altair_chart(scatter, width="stretch")
