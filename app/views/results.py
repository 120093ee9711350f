"""Results: the MI of a finished run per landmark and network, how often its posterior
regions hold the truth (calibration); compare two runs."""

from __future__ import annotations

import functools

import streamlit as st
from ui import calibration, charts, labels, state, tables

from mist_core.results import PairEstimate
from mist_core.runs import RunInfo

st.title("Results")
st.markdown(
    "Each bar is how much one network's representation tells about where one landmark is, "
    "measured on test faces the models never saw during training (in nats; the thin lines "
    "are ± one standard error). Taller bars: the network can point at that landmark more "
    "sharply. A bar slightly below zero means the same as zero: the network's numbers did "
    "not help on new faces (the estimate has noise, and a model fitted to the training "
    "faces can do a little worse than the average-face guess). A ⚠ beside a number in the "
    "table means a check found a reason to doubt it; the reasons are listed under the table."
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


#: The calibration chart's landmark choice that pools them all.
POOLED = "all"


def show_calibration(info: RunInfo, slot: str, wide: bool = True) -> None:
    """The calibration chart of a run and a sentence per network (beside it when ``wide``,
    else under it), or a note saying why there is none."""
    found = calibration.run_calibration(info)
    st.markdown(
        "**Calibration: do the posterior regions hold the true position as often as they say?**"
    )
    if found.report is None:
        st.info(found.note)
        return
    report = found.report
    landmarks = list(dict.fromkeys(r.landmark for r in report.rows))
    can_fix = any(r.recalibrated is not None for r in report.rows)
    a, b = st.columns(2)
    picked = a.selectbox(
        "Landmark",
        [POOLED, *landmarks],
        format_func=lambda lm: "All landmarks (pooled)" if lm == POOLED else labels.landmark(lm),
        key=f"calib_landmark_{slot}",
    )
    landmark = None if picked == POOLED else picked
    fixed = b.toggle(
        "Recalibrated regions",
        key=f"calib_fixed_{slot}",
        disabled=not can_fix,
        help="As the Posteriors page draws them: each region's size corrected on faces "
        "held out of training, so that it holds the truth as often as it says."
        if can_fix
        else "This run held no training faces out for validation (valid_fraction = 0), so "
        "its regions could not be recalibrated.",
    )
    curves = {
        encoder: calibration.curve(report, encoder, landmark, fixed and can_fix)
        for encoder in calibration.densities(report)
    }
    where = "all landmarks" if landmark is None else labels.landmark(landmark)
    how = "Recalibrated" if fixed and can_fix else "As drawn"
    chart, words = st.columns(2, gap="medium") if wide else (st.container(), st.container())
    chart.plotly_chart(
        charts.calibration_chart(curves, title=f"{how} · {where}"),
        key=f"calibration_{slot}",
        width="stretch",
    )
    chart.caption(
        "On the Posteriors page each network draws a cyan line around the region it "
        "thinks holds the landmark with 50% chance, and a yellow one for 90%. An honest "
        "line follows the dashed diagonal; below it the regions are too small "
        "(overconfident), above it too wide. The grey band is where an honest line falls "
        "19 times in 20 by chance on this many faces."
    )
    with words:
        for sentence in calibration.sentences(report, landmark):
            st.markdown(sentence)


def show_flags(estimates: list[PairEstimate]) -> None:
    """Why the numbers marked ⚠ in the table may not be trusted (nothing when none is)."""
    notes = tables.flag_notes(estimates)
    if notes:
        with st.expander(f"{tables.FLAG} Why some numbers are flagged", expanded=len(notes) <= 3):
            st.markdown("\n".join(f"- {note}" for note in notes))


def show_run(info: RunInfo, slot: str, wide: bool = True) -> None:
    """A run's MI bars, its calibration right under them, its table, downloads, settings
    (``wide``: the page's whole width, else half of it)."""
    estimates = tables.run_estimates(info)
    st.plotly_chart(
        charts.mi_bars(estimates, title=f"{info.name}: what each network knows (nats)"),
        key=f"bars_{slot}",
        width="stretch",
    )
    show_calibration(info, slot, wide)
    st.dataframe(tables.readable(estimates), hide_index=True, key=f"table_{slot}")
    show_flags(estimates)
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
        show_run(first, "a", wide=False)
    with right:
        show_run(second, "b", wide=False)
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
