"""One run in detail on the Results page: its MI bars, calibration, table, downloads and
settings; its notes and tags (edited here, stored in the run folder); and "Repeat with 3
more seeds"."""

from __future__ import annotations

import functools

import streamlit as st

from mist_core.comparison import repeat_configs, seed_key
from mist_core.jobs import QueueFullError
from mist_core.resources import ResourceError
from mist_core.results import PairEstimate
from mist_core.runs import RunInfo, RunStatus

from . import calibration, charts, labels, state, tables
from .compare_charts import download_config

__all__ = ["POOLED", "REPEATS", "show_notes", "show_repeat", "show_run"]

#: The calibration chart's landmark choice that pools them all.
POOLED = "all"


def show_calibration(info: RunInfo, slot: str, wide: bool = True, fmt: str = "png") -> None:
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
        config=download_config(fmt, f"{info.name}-calibration"),
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


def show_run(info: RunInfo, slot: str, wide: bool = True, fmt: str = "png") -> None:
    """A run's MI bars, its calibration right under them, its table, downloads, settings
    (``wide``: the page's whole width, else half of it; ``fmt``: the charts' download
    format)."""
    estimates = tables.run_estimates(info)
    st.plotly_chart(
        charts.mi_bars(estimates, title=f"{info.name}: what each network knows (nats)"),
        key=f"bars_{slot}",
        width="stretch",
        config=download_config(fmt, f"{info.name}-mi"),
    )
    show_calibration(info, slot, wide, fmt)
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


#: The session key that carries "saved" over the rerun that redraws the run table.
_SAVED = "notes_saved"
#: How many more seeds "Repeat" queues.
REPEATS = 3


def show_notes(info: RunInfo) -> None:
    """The run's note and tags, editable; saved into the run folder (``notes.json``) when
    the person presses Save. The run table and ``python -m mist_core list`` show them."""
    if st.session_state.pop(_SAVED, None) == info.name:
        st.success("Notes saved with the run.")
    with st.form(key=f"notes_form_{info.name}", border=True):
        st.markdown("**Notes and tags** (kept with the run; search for them in the table above)")
        note = st.text_area(
            "Note",
            value=info.note,
            key=f"note_text_{info.name}",
            placeholder="What was this run for? What did you notice?",
            height=90,
        )
        tags = st.text_input(
            "Tags (separated by commas)",
            value=", ".join(info.tags),
            key=f"note_tags_{info.name}",
            placeholder="baseline, lr-sweep",
        )
        saved = st.form_submit_button("Save notes", key="save_notes")
    if not saved:
        return
    try:
        state.store().open(info.name).set_notes(note, [t for t in tags.split(",") if t.strip()])
    except ValueError as error:  # a tag too long, too many tags: the sentence says what to do
        st.error(f"The notes were not saved: {error}")
        return
    except OSError as error:
        st.error(f"The notes could not be written into the run folder: {error}")
        return
    st.session_state[_SAVED] = info.name
    st.rerun()  # the run table above shows the new note


def _taken_seeds(info: RunInfo, every: list[RunInfo]) -> set[int]:
    """Seeds of runs (and of jobs running or waiting) with the same settings as ``info``
    but for the seed."""
    key = seed_key(info.config)
    taken = {i.config.seed for i in every if i.config is not None and seed_key(i.config) == key}
    for job in state.registry().active():
        if seed_key(job.config) == key:
            taken.add(job.config.seed)
    return taken


def show_repeat(info: RunInfo, every: list[RunInfo]) -> None:
    """A button that queues the run's settings with :data:`REPEATS` more seeds."""
    finished = info.status is RunStatus.FINISHED and info.config is not None
    pressed = st.button(
        f"Repeat with {REPEATS} more seeds",
        key="repeat_seeds",
        disabled=not finished,
        help="Trains the same settings again with other random seeds (other training "
        "faces order and starting weights), one after another. Runs that differ only by "
        "their seed are then shown together as a mean with its standard error, which says "
        "how much of a difference between runs is luck.",
    )
    if not pressed:
        return
    configs = repeat_configs(info.config, REPEATS, taken=_taken_seeds(info, every))
    queued = []
    try:
        for config in configs:
            state.registry().submit(config)
            queued.append(config.seed)
    except (QueueFullError, ResourceError) as error:
        st.error(f"Queued {len(queued)} of {REPEATS} runs; the rest could not be: {error}")
        return
    st.success(
        f"Queued {REPEATS} runs with seeds {', '.join(map(str, queued))}; they train one "
        "after another (follow them on **Train**). Select them here when they have finished."
    )
