"""Streamlit page: privacy budget per run (``uaap dashboard`` serves it; reads the ledger live).

Run directly with ``streamlit run uaap/dashboard/app.py``; ``UAAP_HOME`` / ``UAAP_LEDGER_URL`` say where the
workspace and the ledger are, ``UAAP_DASHBOARD_REFRESH`` how often (seconds) the page re-reads them. The page
itself is :func:`uaap.dashboard.page.render`, which the workbench (``uaap ui``) shows as its privacy page.
"""

from __future__ import annotations

import streamlit as st

from uaap.dashboard.page import render

st.set_page_config(page_title="UAAP privacy budget", layout="wide")
render()
