"""Train: pick networks and landmarks, press Start, watch the MI curves grow."""

from __future__ import annotations

import streamlit as st
from ui import charts, labels, state, tables

from mist_core.data import LANDMARKS, expected_files
from mist_core.encoders import list_encoders
from mist_core.experiment import PRESETS, PreparedImages, preset
from mist_core.jobs import DeviceBusyError, Job, JobSnapshot, QueueFullError
from mist_core.resources import ResourceError, estimate_resources
from mist_core.runs import RunBusyError, RunStatus

st.title("Train")
st.markdown(
    "A neural network turns a face picture into a list of numbers (its *representation*). "
    "Here we ask: **from those numbers alone, how sharply can you point at the nose?** "
    "The answer is a *mutual information*, in **nats**: 0 nats means the numbers say "
    "nothing about where the nose is; each extra nat means the guess is about e ≈ 2.7 "
    "times more precise (a region 2.7 times smaller). Press **Start** to measure it for "
    "a few networks at once."
)

registry = state.registry()
job = state.current_job()
snapshot = job.snapshot() if job is not None else None
busy = snapshot is not None and not snapshot.done
if st.query_params.get("job") and job is None:
    st.info(
        "The training this link pointed to is not running in this server any more (it was "
        "restarted, or it ended long ago). Its results, if it finished, are on the "
        "**Results** page."
    )
#: What Start or Resume could not do on the previous run of this page (shown once).
start_error = st.session_state.pop("start_error", None)

#: Seconds between redraws of the live progress and curves. Each redraw costs CPU that a
#: training on the same cores needs: the demo in the dashboard took 86.7-107.6 s from Start to
#: finished with a redraw every second, 82.6-92.6 s every 2 s (2-core AMD EPYC, float32,
#: headless Chromium on the same cores, ui/garbage.py's freeze in both; bench.dashboard_demo).
LIVE_REFRESH_S = 2.0

PRESET_HELP = {
    "demo-cpu": "The demo: built-in drawn faces, 1,800 small images for training, 1,200 held "
    "out for validation and 1,200 for the test, 4 epochs (about a minute and a half on a "
    "2-core CPU, the last part of it spent checking how often the posterior regions hold "
    "the true positions).",
    "seed": "The seed notebook's experiment: CelebA at full size, 20 epochs (hours; for a GPU).",
}


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _job_words(other: Job) -> str:
    snap = other.snapshot()
    what = f"run **{snap.run_name}**" if snap.run_name else f"job {snap.id}"
    where = f"{snap.state.value} on {snap.device}"
    if snap.total_steps:
        where += f", step {snap.step}/{snap.total_steps}"
    return f"{what} ({where})"


# --- settings -------------------------------------------------------------------------------

with st.container(border=True):
    st.subheader("1. What to measure")
    left, right = st.columns(2)
    with left:
        dataset = st.radio(
            "Faces",
            list(labels.FACES),
            format_func=labels.FACES.get,
            disabled=busy,
            key="dataset",
        )
        celeba_root = None
        if dataset == "celeba":
            celeba_root = st.text_input(
                "CelebA folder",
                value="data",
                help="The folder that holds celeba/ (img_align_celeba/ and the annotation "
                "files), as torchvision lays it out.",
                disabled=busy,
            )
            missing = [p for p in expected_files(celeba_root) if not p.exists()]
            if missing:
                st.warning(
                    "CelebA is not in that folder. Missing: "
                    + ", ".join(f"`{p}`" for p in missing[:3])
                    + ". Download it from the CelebA website (aligned images and the "
                    "landmark, partition and attribute files) and unpack it there, or use "
                    "the built-in drawn faces."
                )
        preset_names = list(PRESETS)
        preset_name = st.selectbox(
            "Preset",
            preset_names,
            index=preset_names.index("seed" if dataset == "celeba" else state.DEFAULT_PRESET),
            help="\n\n".join(f"**{k}**: {v}" for k, v in PRESET_HELP.items()),
            disabled=busy,
        )
        st.caption(PRESET_HELP.get(preset_name, ""))
        base = preset(preset_name)
    with right:
        st.markdown("**Networks** (each is a ResNet18)")
        chosen_encoders = []
        missing_how: dict[str, str] = {}
        for choice in list_encoders():
            label = labels.encoder(choice.name)
            if choice.available:
                on = st.checkbox(
                    label,
                    value=choice.name in base.encoders,
                    help=labels.encoder_help(choice.name),
                    disabled=busy,
                    key=f"encoder_{choice.name}",
                )
                if on:
                    chosen_encoders.append(choice.name)
            else:
                st.checkbox(
                    label,
                    value=False,
                    disabled=True,
                    key=f"encoder_{choice.name}",
                    help=f"Not available: {choice.reason}.",
                )
                missing_how[choice.missing] = choice.how_to_enable
        if missing_how:
            with st.expander("Why are some networks greyed out?"):
                for reason, how in missing_how.items():
                    st.markdown(f"**{reason}.** {how}")
        estimator = st.selectbox(
            "Estimator",
            list(labels.ESTIMATORS),
            format_func=labels.ESTIMATORS.get,
            help="DoE fits q(landmark) and q(landmark | representation); the MI is the "
            "difference of their entropies.",
            disabled=busy,
        )

    landmarks = st.pills(
        "Landmarks",
        list(LANDMARKS),
        selection_mode="multi",
        default=list(base.landmarks),
        format_func=labels.landmark,
        disabled=busy,
        key="landmarks",
    )
    with st.expander("Advanced settings"):
        a, b, c = st.columns(3)
        epochs = a.number_input("Epochs", 1, 500, base.epochs, disabled=busy)
        batch_size = b.number_input("Batch size", 2, 1024, base.batch_size, disabled=busy)
        lr = c.number_input(
            "Learning rate", 1e-6, 1.0, base.lr, format="%.5f", step=1e-4, disabled=busy
        )
        train_size = a.number_input(
            "Training images",
            16,
            1_000_000,
            base.train_size or 162_770,
            disabled=busy,
            help=f"{base.valid_fraction:.0%} of them are held out of training: they give the "
            "validation curves and recalibrate the posterior regions.",
        )
        test_size = b.number_input(
            "Test images", 16, 100_000, base.test_size or 19_962, disabled=busy
        )
        device = c.selectbox("Device", state.devices(), disabled=busy)
        height = a.number_input("Image height (px)", 32, 218, base.image_size[0], disabled=busy)
        width = b.number_input("Image width (px)", 32, 178, base.image_size[1], disabled=busy)
        precision = c.selectbox(
            "Arithmetic",
            list(labels.ARITHMETIC),
            index=list(labels.ARITHMETIC).index(base.precision),
            format_func=labels.ARITHMETIC.get,
            disabled=busy,
            help="How a network that is being trained does its sums. Automatic uses 16-bit "
            "numbers (bfloat16) for its training steps where this computer has hardware for "
            "them: 2-3x faster on large images; the MI moves by less than between two runs "
            "with different seeds. 32-bit is exact and gives the same numbers run after run. "
            "Measuring (the results) is always 32-bit.",
        )
        schedule = a.selectbox(
            "Learning rate over the run",
            list(labels.SCHEDULES),
            index=list(labels.SCHEDULES).index(base.lr_schedule),
            format_func=labels.SCHEDULES.get,
            disabled=busy,
            help="One-cycle rises to the learning rate over the first quarter of the steps, "
            "then falls to almost nothing: a network trained from scratch learns more in "
            "the same epochs, and its last epoch is a settled one. Constant keeps the "
            "learning rate throughout (the seed notebook's training).",
        )

config = None
problem = None
if not chosen_encoders:
    problem = "Pick at least one network."
elif not landmarks:
    problem = "Pick at least one landmark."
else:
    try:
        config = base.replace(
            dataset=dataset,
            celeba_root=celeba_root if dataset == "celeba" else None,
            encoders=tuple(chosen_encoders),
            landmarks=tuple(lm for lm in LANDMARKS if lm in landmarks),
            estimator=estimator,
            epochs=int(epochs),
            batch_size=int(batch_size),
            lr=float(lr),
            lr_schedule=schedule,
            train_size=int(train_size),
            test_size=int(test_size),
            image_size=(int(height), int(width)),
            device=device,
            precision=precision,
        )
    except ValueError as error:
        problem = str(error)

# --- what it needs ---------------------------------------------------------------------------

estimate = None
if config is not None:
    try:
        estimate = estimate_resources(config)
    except Exception as error:  # noqa: BLE001 - an estimate must not break the page
        st.caption(f"The memory these settings need could not be estimated: {error}")
if estimate is not None:
    if estimate.fits:
        needs = f"These settings need {estimate.message}"
        if estimate.seconds is not None and "roughly" not in estimate.message:
            needs += f", and roughly {_format_seconds(estimate.seconds)} of training"
        st.caption(needs + ".")
    else:
        st.error(f"These settings are too much for this machine: {estimate.message}")

# --- start / stop ---------------------------------------------------------------------------

st.subheader("2. Train")
# One training per device across every tab: a job started elsewhere blocks Start here.
elsewhere = [j for j in registry.active() if j is not job]
blocking = registry.active(config.device) if config is not None else elsewhere
blocking = [j for j in blocking if j is not job]
blocked = None
if blocking:
    blocked = (
        f"A training is already running: {_job_words(blocking[0])}. Wait for it to end or stop it."
    )
elif estimate is not None and not estimate.fits:
    blocked = "Start is off: these settings need more memory than this machine has."
start_col, stop_col, status_col = st.columns([1, 1, 4])
if start_col.button(
    "Start",
    type="primary",
    disabled=busy or config is None or blocked is not None,
    width="stretch",
    key="start",
    help=blocked,
):
    assert config is not None
    try:
        job = registry.submit(config, exclusive=True)
    except (DeviceBusyError, QueueFullError, ResourceError) as error:
        st.session_state["start_error"] = f"Not started: {error}"
    else:
        state.attach(job)
    st.rerun()
#: The job this page follows: this tab's, else one running in the server (another tab's).
shown = job if (job is not None and (not job.done or not elsewhere)) else None
if shown is None and elsewhere:
    shown = elsewhere[0]
following_other = shown is not None and shown is not job
if stop_col.button("Stop", disabled=shown is None or shown.done, width="stretch", key="stop"):
    assert shown is not None
    shown.stop()
    st.rerun()
if start_error:
    status_col.error(start_error)
elif problem:
    status_col.warning(problem)
elif blocked and not busy:
    status_col.warning(blocked)
elif not busy and config is not None and not registry.is_prepared(config):
    default = state.default_config()
    same_faces = PreparedImages.data_key(config) == PreparedImages.data_key(default)
    if state.WARM_UP and same_faces and not registry.is_prepared(default):
        status_col.caption(
            "Drawing the demo's faces in the background… Start now and training begins as "
            "soon as they are ready."
        )
    else:
        status_col.caption("The faces for these settings are prepared when you press Start.")


def _show_progress(snap: JobSnapshot) -> None:
    total = snap.total_steps or 0
    text = f"**{snap.state.value}**"
    if snap.message and snap.message.strip().lower() != snap.state.value.lower():
        text += f" · {snap.message}"  # a message that only repeats the state is left out
    if total and snap.done:
        text += f" · step {snap.step}/{total}"
    elif total:
        text += (
            f" · epoch {snap.epoch + 1}/{snap.config.epochs} · step {snap.step}/{total}"
            f" · {snap.samples_per_s or 0:.0f} images/s · time left {_format_seconds(snap.eta_s)}"
        )
    st.progress(snap.fraction, text=text)


def _show_curves(snap: JobSnapshot) -> None:
    encoders, landmarks = list(snap.config.encoders), list(snap.config.landmarks)
    pick_e, pick_l = st.container(), st.container()
    shown_e = pick_e.pills(
        "Show networks",
        encoders,
        selection_mode="multi",
        default=encoders,
        format_func=labels.encoder,
        key="curve_encoders",
    )
    shown_l = pick_l.pills(
        "Show landmarks",
        landmarks,
        selection_mode="multi",
        default=landmarks,
        format_func=labels.landmark,
        key="curve_landmarks",
    )
    pairs = charts.pair_curves(snap.train_curves)
    if not pairs:
        st.info("The first curves appear after the first training step.")
        return
    st.plotly_chart(
        charts.mi_curves(pairs, encoders=shown_e, landmarks=shown_l),
        key="live_curves",
        width="stretch",
    )
    latest = ", ".join(
        f"{labels.pair(p.encoder, p.landmark)} {p.latest:.2f}" for p in pairs if p.points
    )
    st.caption(
        f"Latest step {snap.step}: {latest}"
        " nats (per-batch estimates; the lines are averaged over 15 steps)."
    )


def _show_result(snap: JobSnapshot) -> None:
    if snap.error:
        st.error(f"Training failed: {snap.error}")
        with st.expander("Details (for a developer)"):
            st.code(snap.traceback or "", language="text")
    elif snap.mi_table:
        st.success(
            f"Finished in {_format_seconds((snap.finished or 0) - (snap.started or 0))}. "
            f"Run **{snap.run_name}** is saved: compare it on **Results**, look at its "
            "posteriors on **Posteriors**."
        )
        st.plotly_chart(charts.mi_bars(snap.mi_table), key="final_bars", width="stretch")
        notes = tables.flag_notes(snap.mi_table)
        if notes:
            with st.expander(
                f"{tables.FLAG} Some numbers may not be trusted: why", expanded=False
            ):
                st.markdown("\n".join(f"- {note}" for note in notes))
    elif snap.state is RunStatus.STOPPED:
        st.info(
            f"{snap.message[:1].upper()}{snap.message[1:]}. Run **{snap.run_name}** keeps its "
            "checkpoint: its posteriors can be looked at now."
        )


def live(job_id: str, redraw_when_done: bool, started_elsewhere: bool) -> None:
    try:
        current = registry.get(job_id)
    except KeyError:
        return
    if started_elsewhere:
        st.info(
            "A training started elsewhere (another tab, or before a reload) is running in "
            f"this server: {_job_words(current)}. Its progress is shown below."
        )
    snap = current.snapshot()
    _show_progress(snap)
    _show_curves(snap)
    if snap.done:
        _show_result(snap)
    if redraw_when_done and current.done:
        # it ended since the page was drawn: redraw the settings and Start as enabled
        st.rerun(scope="app")


def watch_for_other_jobs(seen: tuple[str, ...]) -> None:
    """Redraw the page when a training starts or ends in another tab."""
    if tuple(j.id for j in registry.active()) != seen:
        st.rerun(scope="app")


if following_other:
    assert shown is not None
    if st.button("Follow it in this tab", key="attach", help="Put its link in this tab's URL"):
        state.attach(shown)
        st.rerun()
if shown is None:
    st.caption("Nothing is training yet from this page.")
else:
    running = not shown.done
    every = LIVE_REFRESH_S if running else None
    st.fragment(run_every=every)(live)(shown.id, running, following_other)
if shown is None or shown.done:
    seen = tuple(j.id for j in registry.active())
    st.fragment(run_every=2.0)(watch_for_other_jobs)(seen)
queued = [j for j in elsewhere if j is not shown]
if queued:
    st.caption(
        "Also training or waiting in this server: "
        + ", ".join(f"[{j.snapshot().run_name or j.id}](?job={j.id})" for j in queued)
    )

# --- interrupted runs -------------------------------------------------------------------------


def _resume(name: str) -> None:
    try:
        resumed = registry.resume(name, exclusive=True)
    except (
        RunBusyError,
        DeviceBusyError,
        QueueFullError,
        ResourceError,
        ValueError,
        OSError,
    ) as e:
        st.session_state["start_error"] = f"Not resumed: {e}"
    else:
        state.attach(resumed)


interrupted = state.interrupted_runs()
if interrupted:
    st.subheader("Interrupted runs")
    st.caption(
        "The process that trained these runs died (the server was stopped or killed) before "
        "they ended. A run with a checkpoint continues from it with **Resume**."
    )
    for info in interrupted[:10]:
        name_col, button_col = st.columns([5, 1])
        try:
            resumable = state.store().open(info.name).has_checkpoint()
        except Exception:  # noqa: BLE001 - a broken run: nothing to resume from
            resumable = False
        name_col.markdown(
            state.run_label(info)
            + ("" if resumable else " · no checkpoint was saved: it cannot be resumed")
        )
        button_col.button(  # a callback: it resumes the run clicked, whatever this run lists
            "Resume",
            key=f"resume_{info.name}",
            disabled=not resumable or bool(elsewhere) or busy,
            width="stretch",
            on_click=_resume,
            args=(info.name,),
        )
