"""Results: the MI of a finished run per landmark and network; compare two runs."""

from __future__ import annotations

import functools

import streamlit as st
from ui import charts, state, tables

from mist_core.runs import RunInfo

st.title("Results")
st.markdown(
    "Each bar is how much one network's representation tells about where one landmark is, "
    "measured on test faces the models never saw during training (in nats; the thin lines "
    "are ± one standard error). Taller bars: the network can point at that landmark more "
    "sharply. A bar slightly below zero means the same as zero: the network's numbers did "
    "not help on new faces (the estimate has noise, and a model fitted to the training "
    "faces can do a little worse than the average-face guess)."
)

listed = state.list_runs()  # reads every run's small files: once per page run
runs = state.runs_with_results(listed)
broken = [info for info in listed if info.problem]
if broken:
    names = ", ".join(f"`{info.name}`" for info in broken[:5]) + (
        f" and {len(broken) - 5} more" if len(broken) > 5 else ""
    )
    st.warning(
        f"{len(broken)} run folder(s) could not be read and are left out: {names}. "
        "Their files are damaged or were edited by hand; the details say which."
    )
    with st.expander("Details"):
        for info in broken:
            st.markdown(f"- `{info.name}`: {info.problem}")
interrupted = state.interrupted_runs(listed)
if interrupted:
    st.info(
        f"{len(interrupted)} run(s) were interrupted (their training process died): "
        + ", ".join(f"`{info.name}`" for info in interrupted[:5])
        + ". Resume them on the **Train** page."
    )
if not runs:
    st.info("No finished run yet. Start one on the **Train** page (the demo takes a few minutes).")
    st.stop()


def show_run(info: RunInfo, slot: str) -> None:
    estimates = tables.run_estimates(info)
    st.plotly_chart(
        charts.mi_bars(estimates, title=f"{info.name}: what each network knows (nats)"),
        key=f"bars_{slot}",
        width="stretch",
    )
    st.dataframe(tables.readable(estimates), hide_index=True, key=f"table_{slot}")
    a, b = st.columns(2)
    a.download_button(
        "Download the table (CSV)",
        tables.csv_bytes(estimates),
        file_name=f"{info.name}-mi.csv",
        mime="text/csv",
        key=f"csv_{slot}",
    )
    b.download_button(  # made when clicked: metrics.csv can hold millions of rows
        "Download the training curves (CSV)",
        functools.partial(state.metrics_csv, info.name),
        file_name=f"{info.name}-metrics.csv",
        mime="text/csv",
        key=f"metrics_{slot}",
    )
    with st.expander("Settings and timings"):
        summary = info.summary or {}
        seconds = summary.get("train_seconds")
        st.markdown(
            f"Steps: {summary.get('steps', '?')}, epochs: {summary.get('epochs', '?')}"
            + (f", training time: {seconds / 60:.1f} min" if seconds else "")
        )
        if info.config is not None:
            st.json(info.config.to_dict(), expanded=False)
        if summary.get("environment"):
            st.json(summary["environment"], expanded=False)


first = st.selectbox("Run", runs, format_func=state.run_label, key="run_a")
compare = st.toggle("Compare with another run", key="compare", disabled=len(runs) < 2)
if compare and len(runs) >= 2:
    others = [info for info in runs if info.name != first.name]
    second = st.selectbox("Second run", others, format_func=state.run_label, key="run_b")
    left, right = st.columns(2)
    with left:
        show_run(first, "a")
    with right:
        show_run(second, "b")
    st.subheader("Side by side")
    st.dataframe(
        tables.side_by_side(
            tables.run_estimates(first), tables.run_estimates(second), first.name, second.name
        ),
        hide_index=True,
        key="table_compare",
    )
else:
    show_run(first, "a")
