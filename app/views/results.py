"""Results: the table of runs (search, notes, tags); the selected runs compared (training
curves overlaid, MI bars grouped by landmark, the settings that differ, seeds grouped into a
mean ± standard error); one run in detail (calibration, downloads, notes, repeat with more
seeds). The selections live in the URL, so a reload or a pasted link opens the same view."""

from __future__ import annotations

import streamlit as st
from ui import compare_charts, labels, run_detail, run_groups, run_table, state, url

from mist_core.comparison import differing_settings

st.title("Results")
st.markdown(
    "How much each network's view of a face tells about where each landmark is, in nats, "
    "measured on test faces the models never saw during training. Pick one run or several "
    "to compare them; runs that differ only by their random seed can be shown as one mean "
    "with its standard error."
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

by_name = {info.name: info for info in runs}
names = list(by_name)

# --- the table of runs ----------------------------------------------------------------------
st.subheader("Runs")
url.restore("run_search", "q", "")
query = st.text_input(
    "Search the runs",
    key="run_search",
    placeholder="a name, a tag, words of a note, a dataset…",
    help="Shows the runs whose name, date, dataset, networks, status, tags or note contain "
    "every word you type.",
)
url.keep("q", query.strip(), "")
found = [info for info in runs if run_table.matches(info, query)]
st.caption(
    f"{len(found)} of {len(runs)} finished runs, newest first. Mean MI is the average over "
    "the run's networks and landmarks."
)
st.dataframe(run_table.frame(found), hide_index=True, width="stretch")

url.restore_list("runs_shown", "run", names, default=names[:1])
chosen = st.multiselect(
    "Runs to compare",
    names,
    key="runs_shown",
    format_func=lambda name: state.run_label(by_name[name]),
    help="The newest run is picked at first. Add runs to overlay their curves and bars.",
)
url.keep_list("run", chosen)
selected = [by_name[name] for name in chosen]

left, right = st.columns(2)
url.restore("group_seeds", "seeds", True, parse=lambda t: t == "1", valid=lambda v: v in (0, 1))
by_seed = left.toggle(
    "Group runs that differ only by seed",
    key="group_seeds",
    help="Runs with the same settings but another random seed are shown as one entry: "
    "their mean, with a band or whiskers of ± one standard error across the seeds.",
)
url.keep("seeds", int(by_seed), 1)
url.restore("export_format", "fmt", "png", valid=lambda v: v in compare_charts.EXPORT_FORMATS)
fmt = right.radio(
    "Chart downloads (the camera icon on a chart)",
    compare_charts.EXPORT_FORMATS,
    key="export_format",
    format_func=str.upper,
    horizontal=True,
)
url.keep("fmt", fmt, "png")
entries = run_groups.shown(selected, by_seed)
colours = compare_charts.colours_for([entry.label for entry in entries])

# --- curves ---------------------------------------------------------------------------------
st.subheader("Training curves")
st.caption(
    "How the estimate grew while each network learnt, for one landmark: one line per run "
    "and network (colour: the run; dash: the network), from the training batches. The "
    "diamond at the end of a line is the final estimate on held-out test faces."
)
# The controls are drawn even with no run picked, so that they keep their values.
landmarks = run_groups.landmarks_of(entries or run_groups.shown(runs[:1], False))
a, b, c = st.columns(3)
url.restore("curve_landmark", "landmark", landmarks[0], valid=lambda v: v in landmarks)
landmark = a.selectbox("Landmark", landmarks, key="curve_landmark", format_func=labels.landmark)
url.keep("landmark", landmark, landmarks[0])
url.restore("smoothing", "smooth", 0.0, parse=float, valid=lambda v: 0.0 <= v <= 0.99)
smoothing = b.slider(
    "Smoothing",
    0.0,
    0.99,
    step=0.01,
    key="smoothing",
    help="An exponential moving average of the per-batch estimates (0: off). The raw "
    "points stay faint behind the smoothed line.",
)
url.keep("smooth", round(smoothing, 2), 0.0)
url.restore("log_steps", "log", False, parse=lambda t: t == "1", valid=lambda v: v in (0, 1))
log_steps = c.toggle("Logarithmic step axis", key="log_steps")
url.keep("log", int(log_steps), 0)
lines = run_groups.curve_lines(entries, landmark, state.train_curves)
if not entries:
    st.info("Pick one or more runs above to see their results.")
    st.stop()
if lines:
    st.plotly_chart(
        compare_charts.compare_curves(
            lines,
            colours,
            smoothing=smoothing,
            log_steps=log_steps,
            title=f"MI while training · {labels.landmark(landmark)} (nats)",
        ),
        key="curves",
        width="stretch",
        config=compare_charts.download_config(fmt, f"mist-curves-{landmark}"),
    )
else:
    st.info("The selected runs kept no training curves for this landmark.")

# --- bars -----------------------------------------------------------------------------------
st.subheader("What each network knows")
st.caption(
    "Each bar is how much one network's representation tells about where one landmark is, "
    "on test faces (nats; whiskers: ± one standard error, across seeds for a group). "
    "Colour: the run; pattern: the network. A bar slightly below zero means the same as "
    "zero: the network's numbers did not help on new faces."
)
st.plotly_chart(
    compare_charts.compare_bars({entry.label: entry.estimates for entry in entries}, colours),
    key="bars_compare",
    width="stretch",
    config=compare_charts.download_config(fmt, "mist-compared-mi"),
)
st.dataframe(run_groups.readable(entries), hide_index=True, width="stretch")
st.download_button(
    "Download the compared runs (CSV)",
    run_groups.compared_csv(entries),
    file_name="mist-compared-runs.csv",
    mime="text/csv",
    key="csv_compare",
)
if len(selected) > 1:
    st.markdown("**Settings that differ between the selected runs**")
    differ = differing_settings({i.name: i.config for i in selected if i.config is not None})
    if differ.empty:
        st.caption("The selected runs have the same settings.")
    else:
        st.dataframe(differ, width="stretch")

# --- one run in detail ----------------------------------------------------------------------
st.divider()
st.subheader("One run in detail")
url.restore("run_a", "detail", chosen[0], valid=lambda v: v in chosen)
detail = by_name[
    st.selectbox(
        "Run", chosen, key="run_a", format_func=lambda name: state.run_label(by_name[name])
    )
]
url.keep("detail", detail.name, chosen[0])
notes, repeat = st.columns([3, 1])
with notes:
    run_detail.show_notes(detail)
with repeat:
    run_detail.show_repeat(detail, listed)
run_detail.show_run(detail, "a", fmt=fmt)
