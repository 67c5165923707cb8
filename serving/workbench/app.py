"""The workbench's Streamlit entry script (``uaap ui`` serves it): one page per step of the workflow."""

from __future__ import annotations

import streamlit as st

from serving.workbench import pages

st.set_page_config(page_title="UAAP workbench", layout="wide")
st.navigation(
    [
        st.Page(pages.data_page, title="Data", url_path="data", default=True),
        st.Page(pages.train_page, title="Train", url_path="train"),
        st.Page(pages.runs_page, title="Runs and compare", url_path="runs"),
        st.Page(pages.explain_page, title="Explain", url_path="explain"),
        st.Page(pages.privacy_page, title="Privacy", url_path="privacy"),
        st.Page(pages.predict_page, title="Predict", url_path="predict"),
    ]
).run()
