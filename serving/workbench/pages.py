"""The workbench's pages (Streamlit): data, train, runs and compare, explain, privacy, predict.

Each page is one function that ``app.py`` hands to ``st.navigation``. What they share across pages (the table
picked on the data page, the run just trained) lives in ``st.session_state``; the API key typed on the predict
page stays in its password field and in this process' memory, and is never printed, logged or put in a URL.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from serving.workbench import (
    MODELS,
    UPLOAD_SUFFIXES,
    ApiError,
    TrainForm,
    call_api,
    example_row,
    explain_files,
    progress,
    run_of,
    save_upload,
    stream,
    train_args,
)


def _runs() -> list[str]:
    """The workspace's runs, newest first."""
    from uaap import workspace

    return list(reversed(workspace.list_runs()))


def _pick_run(label: str, key: str) -> str | None:
    """A run selector that starts at the run trained last on the train page."""
    runs = _runs()
    if not runs:
        st.info("No runs in the workspace yet: train one on the train page.")
        return None
    wanted = st.query_params.get("run") or st.session_state.get("last_run")  # ?run=<id> preselects a run
    index = runs.index(wanted) if wanted in runs else 0
    picked: str = st.selectbox(label, runs, index=index, key=key)
    return picked


def _console(args: list[str], title: str) -> tuple[int, list[str]]:
    """Run ``uaap ARGS``, showing its output as it comes and a progress bar when it announces one."""
    st.caption(f"`uaap {' '.join(args)}`")
    bar = st.progress(0.0, text=title)
    box = st.empty()
    lines: list[str] = []
    code = -1
    for line in stream(args):
        if line.startswith("exit ") and line[5:].lstrip("-").isdigit():
            code = int(line[5:])
            continue
        lines.append(line)
        done = progress(line)
        if done is not None:
            bar.progress(done, text=f"{title}: {done:.0%}")
        box.code("\n".join(lines[-40:]) or " ", language=None)
    bar.progress(1.0, text=f"{title}: {'done' if code == 0 else f'failed (exit {code})'}")
    return code, lines


# ---- data -------------------------------------------------------------------------------------------------------


def data_page() -> None:
    """Pick a table (upload, a path or URL, or a bundled set) and see the profile ``uaap data profile`` makes."""
    from uaap.data import BUNDLED, load_bundled
    from uaap.data.loaders import read_frame, shown
    from uaap.data.profile import profile, summary_lines

    st.title("Data")
    kind = st.radio("source", ("a bundled data set", "a file path or URL", "upload a file"), horizontal=True)
    frame: pd.DataFrame | None = None
    source, target_default = "", ""
    try:
        if kind == "a bundled data set":
            name = st.selectbox("data set", BUNDLED, index=BUNDLED.index("breast_cancer"))
            data = load_bundled(name)
            frame = pd.DataFrame(data.X, columns=list(data.feature_names))
            frame["target"] = data.y
            source, target_default = name, "target"
        elif kind == "a file path or URL":
            source = st.text_input("CSV, TSV, JSON(L) or Parquet path, or an http(s) URL", key="data_path").strip()
            if source:
                frame = read_frame(source)
        else:
            upload = st.file_uploader("table", type=list(UPLOAD_SUFFIXES))
            if upload is not None:
                saved = st.session_state.setdefault("uploads", {})  # each upload is written once, not per rerun
                if upload.file_id not in saved:
                    saved[upload.file_id] = str(save_upload(upload.name, upload.getvalue()))
                source = saved[upload.file_id]
                frame = read_frame(source)
    except Exception as exc:  # noqa: BLE001 - the library's message says what is wrong with the source
        st.error(str(exc))
        return
    if frame is None:
        st.info("Pick a source to profile it.")
        return
    st.caption(f"{shown(source)}: {len(frame)} rows x {frame.shape[1]} columns")
    st.dataframe(frame.head(20), hide_index=True)
    columns = list(map(str, frame.columns))
    target_default = target_default or next((c for c in ("label", "target") if c in columns), "")
    target = st.selectbox(
        "target column", columns, index=columns.index(target_default) if target_default in columns else len(columns) - 1
    )
    if st.button("Profile", type="primary"):
        try:
            report = profile(frame, target, shown(source))
        except Exception as exc:  # noqa: BLE001
            st.error(str(exc))
            return
        st.session_state["profile"] = (source, target, report)
        if kind != "a bundled data set":
            st.session_state["table"] = (source, target)
    found = st.session_state.get("profile")
    if found is None or found[0] != source or found[1] != target:
        return
    report = found[2]
    st.subheader(f"Profile: {report.rows} rows, {report.duplicates} duplicates")
    for line in summary_lines(report):
        (st.warning if line.startswith("warning") else st.write)(line)
    st.dataframe(
        pd.DataFrame(
            [
                {"column": c.name, "kind": c.kind, "dtype": c.dtype, "missing": f"{c.missing:.1%}",
                 "distinct": c.distinct, "low": _short(c.low), "high": _short(c.high),
                 "outliers (IQR/z)": f"{c.outliers_iqr}/{c.outliers_z}" if c.kind == "numeric" else "-",
                 "flags": ", ".join(c.flags) or "-", "plan": c.plan}
                for c in report.columns
            ]
        ),
        hide_index=True,
    )  # fmt: skip
    if kind != "a bundled data set":
        st.success(f"The train page will use this table with target {target!r}.")


def _short(value: float | str | None) -> str:
    """A profile's range end as the terminal report prints it."""
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)[:19]


# ---- train ------------------------------------------------------------------------------------------------------


def train_page() -> None:
    """Central training or a federated simulation, run by the ``uaap`` CLI with its output streamed here."""
    from uaap import workspace
    from uaap.data import BUNDLED

    st.title("Train")
    mode = st.radio("mode", ("central", "federated"), horizontal=True, key="train_mode")
    table = st.session_state.get("table")
    choices = [*BUNDLED, *(["table"] if table else [])]
    dataset = st.selectbox(
        "data", choices, index=choices.index("breast_cancer"), key="train_data",
        format_func=lambda d: f"the data page's table: {Path(table[0]).name} -> {table[1]}" if d == "table" and table
        else d,
    )  # fmt: skip
    model = st.selectbox("model", MODELS, key="train_model")
    cols = st.columns(3)
    he = dp_local = dp_central = False
    epsilon = 8.0
    if mode == "central":
        epochs = int(cols[0].number_input("epochs", 1, 200, 3, key="train_epochs"))
        rounds, clients = 2, 2
    else:
        epochs = 3
        rounds = int(cols[0].number_input("rounds", 1, 50, 2, key="train_rounds"))
        clients = int(cols[1].number_input("clients", 2, 20, 2, key="train_clients"))
        he = st.toggle("HE: CKKS secure aggregation (the server only adds ciphertexts)", key="train_he")
        dp_local = st.toggle("DP-SGD on every client (example-level DP)", key="train_dp_local")
        dp_central = st.toggle("client-level DP on the server", key="train_dp_central")
        if dp_local:
            epsilon = float(cols[2].number_input("target epsilon", 0.1, 100.0, 8.0, key="train_eps"))
    more = st.text_input(
        "more flags, as on the command line", key="train_more",
        placeholder="--text-columns hashing --drop-columns cost (see `uaap train --help`, `uaap simulate --help`)",
    )  # fmt: skip
    try:
        extra = tuple(shlex.split(more))
        form = TrainForm(
            mode=mode, dataset=dataset, source=table[0] if table else "", target=table[1] if table else "",
            model=model, epochs=epochs, rounds=rounds, clients=clients, he=he, dp_local=dp_local,
            dp_central=dp_central, epsilon=epsilon, extra=extra,
        )  # fmt: skip
        args = train_args(form)
    except Exception as exc:  # noqa: BLE001
        st.error(str(exc))
        return
    if not st.button("Train", type="primary"):
        last = st.session_state.get("last_run")
        if last:
            st.info(f"Last run trained here: {last}")
        return
    before = set(workspace.list_runs())
    code, lines = _console(args, "training" if mode == "central" else "federated simulation")
    run_id = run_of(lines, before)
    if code == 0 and run_id:
        st.session_state["last_run"] = run_id
        st.success(f"run {run_id} finished")
    else:
        st.error(f"training failed (exit {code}); its output is above")


# ---- runs and compare -------------------------------------------------------------------------------------------


def runs_page() -> None:
    """The runs MLflow holds, side by side (``uaap compare``): final metric per run and the per-round curves."""
    from uaap.compare import collect_runs, metric_name, sort_rows

    st.title("Runs and compare")
    try:
        rows = collect_runs(limit=100)
    except Exception as exc:  # noqa: BLE001
        st.error(str(exc))
        return
    if not rows:
        st.info("MLflow holds no run yet: train one on the train page.")
        return
    metric = metric_name(rows)
    table = pd.DataFrame(
        [
            {"run": r.run_id, "kind": r.kind, "dataset": r.dataset, "model": r.model, "privacy": r.privacy,
             metric: r.value, "epsilon": r.epsilon, "steps": r.steps, "seconds": r.seconds, "status": r.status,
             "measured on": r.measured_on}
            for r in sort_rows(rows)
        ]
    )  # fmt: skip
    st.dataframe(table, hide_index=True)
    picked = st.multiselect("compare", [r.run_id for r in rows], default=[r.run_id for r in rows[:5]])
    chosen = [r for r in rows if r.run_id in picked and r.value is not None]
    if not chosen:
        return
    bars = pd.DataFrame([{"run": r.run_id, "kind": r.kind, metric: r.value} for r in chosen])
    st.subheader(f"Final {metric}")
    st.altair_chart(
        alt.Chart(bars).mark_bar().encode(x=alt.X(f"{metric}:Q"), y=alt.Y("run:N", sort="-x"), color="kind:N",
                                          tooltip=["run", metric]),
        width="stretch",
    )  # fmt: skip
    curves = pd.DataFrame([{"run": r.run_id, "step": s, metric: v} for r in chosen for s, v in r.curve])
    if not curves.empty:
        st.subheader(f"{metric} per round or epoch")
        st.altair_chart(
            alt.Chart(curves)
            .mark_line(point=True)
            .encode(x=alt.X("step:Q", axis=alt.Axis(tickMinStep=1, format="d")), y=f"{metric}:Q", color="run:N"),
            width="stretch",
        )


# ---- explain ----------------------------------------------------------------------------------------------------


def explain_page() -> None:
    """``uaap explain``'s SHAP plots of a run; a button runs it on a table."""
    st.title("Explain")
    run_id = _pick_run("run", "explain_run")
    if run_id is None:
        return
    table = st.session_state.get("table")
    source = st.text_input("rows to explain (a table of the run's columns)", value=table[0] if table else "",
                           key="explain_source")  # fmt: skip
    rows = int(st.number_input("at most this many rows", 20, 2000, 200, key="explain_rows"))
    if st.button("Run uaap explain", type="primary"):
        if not source.strip():
            st.error("give the table whose rows are explained (the data page's table, or a path)")
        else:
            code, _ = _console(["explain", run_id, "--data", source.strip(), "--max-rows", str(rows)], "explaining")
            if code != 0:
                st.error(f"uaap explain failed (exit {code}); its output is above")
    plots, report = explain_files(run_id)
    if report is None and not plots:
        st.info(f"Run {run_id} has no explanation yet: run `uaap explain` on a table of its columns.")
        return
    if report is not None:
        st.write(
            f"{report['explainer']} explainer, output {report['output']}, base value {report['base_value']:.4f}, "
            f"{report['rows']} rows of {Path(str(report.get('data', ''))).name}"
        )
        ranking = pd.DataFrame(
            [{"column": c, "mean |SHAP|": report["mean_abs_shap"][c], "mean SHAP": report["mean_shap"][c]}
             for c in report["ranking"]]
        )  # fmt: skip
        st.dataframe(ranking, hide_index=True)
    for start in range(0, len(plots), 3):  # three plots a row
        for column, plot in zip(st.columns(3), plots[start : start + 3], strict=False):
            column.image(str(plot), caption=plot.name)


# ---- privacy ----------------------------------------------------------------------------------------------------


def privacy_page() -> None:
    """The privacy-budget dashboard (``uaap dashboard``'s page)."""
    from uaap.dashboard.page import render

    render()


# ---- predict ----------------------------------------------------------------------------------------------------


def predict_page() -> None:
    """Register a run (``uaap register``) and try a prediction against a running ``uaap serve``."""
    st.title("Predict")
    st.subheader("1. Register a run")
    run_id = _pick_run("run", "predict_run")
    cols = st.columns(2)
    name = cols[0].text_input("model name", value="workbench", key="predict_name").strip()
    alias = cols[1].text_input("alias", value="champion", key="predict_alias").strip()
    if run_id is not None and st.button("Register"):
        code, lines = _console(["register", run_id, "--name", name, "--alias", alias], "registering")
        if code == 0:
            st.session_state["registered"] = lines[-1] if lines else "registered"
        else:
            st.error(f"uaap register failed (exit {code}); its output is above")
    if st.session_state.get("registered"):
        st.success(st.session_state["registered"])

    st.subheader("2. Try a prediction")
    default_url = os.environ.get("UAAP_API_URL", "http://127.0.0.1:8000")  # docker-compose.yml: http://api:8000
    url = st.text_input("API URL (`uaap serve`)", value=default_url, key="predict_url").strip()
    key = st.text_input("API key (`uaap api-keys create`)", type="password", key="predict_key")
    spec = f"{name}@{alias}" if alias else name
    if st.button("Load the model schema"):
        try:
            loaded = call_api(url, key, "GET", f"/v1/models/{spec}")
        except ApiError as exc:
            st.error(str(exc))
        else:
            st.session_state["predict_info"] = loaded
            st.session_state["predict_row"] = json_text(example_row(loaded["input_schema"], loaded.get("run_id")))
    info = st.session_state.get("predict_info")
    if info is None:
        return
    st.caption(
        f"{info['name']} version {info['version']} ({info['runtime']}), run {info['run_id']}, task {info['task']}"
    )
    text = st.text_area("one row (JSON)", key="predict_row", height=180)
    go = st.columns(2)
    predict, explain = go[0].button("Predict", type="primary"), go[1].button("Explain this row")
    if not (predict or explain):
        return
    import json

    try:
        row = json.loads(text)
    except ValueError as exc:
        st.error(f"the row is not JSON: {exc}")
        return
    try:
        if predict:
            answer = call_api(url, key, "POST", f"/v1/models/{spec}/predict", {"row": row})
            found = answer["predictions"][0]
            probs = found.get("probabilities")
            sure = f", probability {max(probs):.4f}" if probs else ""
            st.success(f"prediction: {found['prediction']}{sure} (version {answer['version']}, {answer['runtime']})")
            if found.get("probabilities") is not None:
                classes = info.get("classes") or [str(i) for i in range(len(found["probabilities"]))]
                st.dataframe(pd.DataFrame({"class": classes, "probability": found["probabilities"]}), hide_index=True)
        else:
            answer = call_api(url, key, "POST", f"/v1/models/{spec}/explain", {"row": row})
            st.success(f"{answer['explainer']} explainer: {answer['output']} = {answer['model_output']:.4f} "
                       f"from a base value of {answer['base_value']:.4f}")  # fmt: skip
            shap = list(answer["values"].values())
            values = pd.DataFrame(
                {"column": list(answer["values"]), "SHAP": shap, "size": [abs(v) for v in shap],
                 "sign": ["raises" if v >= 0 else "lowers" for v in shap]}
            )  # fmt: skip
            order = alt.EncodingSortField(field="size", order="descending")
            st.altair_chart(
                alt.Chart(values.nlargest(20, "size"))
                .mark_bar()
                .encode(x="SHAP:Q", y=alt.Y("column:N", sort=order), color=alt.Color("sign:N", title="the output"),
                        tooltip=["column", "SHAP"]),
                width="stretch",
            )  # fmt: skip
            st.caption(f"background: {answer['background']}")
    except ApiError as exc:
        st.error(str(exc))


def json_text(row: dict[str, Any]) -> str:
    """A row as indented JSON for the text area."""
    import json

    return json.dumps(row, indent=1)
