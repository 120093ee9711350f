"""One landmark experiment trained in a background thread (:class:`Job`)."""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pandas as pd

from mist_core.calibration import calibrate
from mist_core.checkpoints import capture_checkpoint, restore_checkpoint
from mist_core.devices import device_key
from mist_core.experiment import ExperimentConfig, LandmarkExperiment, PreparationStopped
from mist_core.jobs.checkpoint_writer import CheckpointWriter
from mist_core.jobs.metric_buffer import MetricBuffer
from mist_core.jobs.snapshot import ENDED, JobSnapshot, environment, speed, thin_curve
from mist_core.results import PairEstimate
from mist_core.runs import Run, RunStatus
from mist_core.training import Progress, ResumeFrom, TrainState

if TYPE_CHECKING:
    from mist_core.jobs.registry import JobRegistry

__all__ = ["Job"]

logger = logging.getLogger(__name__)


#: Test faces (at most) on which a finished job measures how often the posterior regions
#: hold the truth, and validation faces (at most) that fit their recalibration: about
#: 0.2 s a face on two CPU cores for two encoders and five landmarks (5 min for the demo).
CALIBRATION_FACES = 300
CALIBRATION_VALID_FACES = 1200


class _CalibrationStopped(Exception):
    """A stop arrived while the regions were being checked."""


class Job:
    """One experiment trained in a background thread. Create jobs with :class:`JobRegistry`.

    The thread exists only while the job runs: the registry starts it when the job's device
    is free. ``run``/``owner`` (a resumed run and its writer lock, taken by the registry)
    are held until the job has ended.
    """

    def __init__(
        self,
        registry: JobRegistry,
        config: ExperimentConfig,
        *,
        run_name: str | None = None,
        resume: bool = False,
        run: Run | None = None,
        owner: Any = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.config = config
        self._registry = registry
        self._resume = resume
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards every field a snapshot reads
        self._done = threading.Event()
        self._device = device_key(config.device)
        self._state = RunStatus.QUEUED
        self._run_name = run.name if run is not None else run_name
        self._run: Run | None = run
        self._owner = owner  # the run's RunWriter (writer lock + heartbeat) while we hold it
        self._created = time.time()
        self._started: float | None = None
        self._finished: float | None = None
        self._training = False  # past the preparation: a stop then saves a checkpoint
        self._progress: Progress | None = None
        self._first_step: tuple[int, float] | None = None  # (samples, elapsed_s) at step one
        self._curves: dict[str, dict[str, list[tuple[int, float]]]] = {"train": {}, "valid": {}}
        self._metrics = MetricBuffer()
        self._writer = CheckpointWriter(name=f"mist-ckpt-{self.id}")
        self._mi_table: tuple[PairEstimate, ...] = ()
        self._message = "waiting for the device" if not resume else "waiting to resume"
        self._error: str | None = None
        self._traceback: str | None = None
        self._thread = threading.Thread(target=self._main, name=f"mist-job-{self.id}", daemon=True)

    # --- public ---------------------------------------------------------------------------

    @property
    def device(self) -> str:
        """Where it trains, as :func:`~mist_core.devices.device_key` names it (``"cpu"``,
        ``"cuda:0"``...)."""
        return self._device

    @property
    def run_name(self) -> str | None:
        return self._run_name

    @property
    def created(self) -> float:
        """When the job was submitted (``time.time()``)."""
        return self._created

    @property
    def done(self) -> bool:
        """Whether the job has ended and let go of its device and run (``wait`` returns)."""
        return self._done.is_set()

    def stop(self) -> None:
        """Ask the job to stop: a queued job is withdrawn at once; a preparing one stops
        within about 2 s; a training one after its current step (it saves a checkpoint)."""
        with self._lock:
            if self._state in ENDED:
                return
            self._stop.set()
            if self._state is RunStatus.RUNNING:
                self._state = RunStatus.STOPPING
                self._message = "stopping after the current step" if self._training else "stopping"
        if self._registry._withdraw(self):  # it was still waiting: no thread to tell
            self._end_unstarted(RunStatus.STOPPED, "cancelled while queued")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended; True if it has."""
        return self._done.wait(timeout)

    def snapshot(self) -> JobSnapshot:
        """The job's progress now, as an immutable copy (cheap: a UI may poll it often)."""
        with self._lock:
            progress = self._progress
            rate = eta = None
            if progress is not None and self._first_step is not None:
                rate, eta = speed(progress, self._first_step, self.config.batch_size)
            train = {k: thin_curve(v) for k, v in self._curves["train"].items()}
            valid = {k: tuple(v) for k, v in self._curves["valid"].items()}
            return JobSnapshot(
                id=self.id,
                run_name=self._run_name,
                state=self._state,
                config=self.config,
                device=self._device,
                epoch=progress.epoch if progress else 0,
                step=progress.step if progress else 0,
                total_steps=progress.total_steps if progress else None,
                samples_per_s=rate,
                eta_s=eta,
                loss=progress.loss if progress and progress.split == "train" else None,
                train_curves=MappingProxyType(train),
                valid_curves=MappingProxyType(valid),
                mi_table=self._mi_table,
                message=self._message,
                error=self._error,
                traceback=self._traceback,
                created=self._created,
                started=self._started,
                finished=self._finished,
            )

    # --- life cycle -----------------------------------------------------------------------

    def _launch(self) -> None:
        """Start the thread; the registry calls this once the job holds its device."""
        with self._lock:
            if self._state is RunStatus.QUEUED:
                self._state, self._message = RunStatus.RUNNING, "starting"
        try:
            self._thread.start()
        except BaseException as error:  # noqa: BLE001 - e.g. "can't start new thread"
            logger.error("job %s: could not start its thread: %s", self.id, error)
            with self._lock:
                self._error = f"{type(error).__name__}: {error}"
            self._end_unstarted(RunStatus.FAILED, f"could not start its thread: {error}")

    def _set(self, state: RunStatus, message: str = "") -> None:
        """The state in memory first (it never fails), then in the run's status.json; a
        failed write is logged and said in the message."""
        with self._lock:
            self._state = state
            self._message = message
            if state in ENDED and self._finished is None:
                self._finished = time.time()
        if self._run is None:
            return
        try:
            self._run.set_status(state, message=message or None, traceback=self._traceback)
        except Exception as error:  # noqa: BLE001 - the UI still shows the state; disk full?
            logger.warning("could not write the status of run %s: %s", self._run_name, error)
            with self._lock:
                self._message = (
                    f"{message} (the run's status could not be written: {error})"
                    if message
                    else f"the run's status could not be written: {error}"
                )

    def _end_unstarted(self, state: RunStatus, message: str) -> None:
        """End a job whose thread never ran (cancelled while queued, or no thread could be
        started). A resumed run's files are left as they were."""
        with self._lock:
            self._state, self._message = state, message
            self._finished = time.time()
        self._release_owner()
        try:
            self._registry._job_ended(self)
        finally:
            self._done.set()

    def _release_owner(self) -> None:
        owner, self._owner = self._owner, None
        if owner is None:
            return
        try:
            owner.release()
        except Exception as error:  # noqa: BLE001 - the lock goes with the file anyway
            logger.warning(
                "could not release the writer lock of run %s: %s", self._run_name, error
            )

    def _main(self) -> None:
        try:
            try:
                self._train()
            except PreparationStopped:
                self._stopped_while_preparing()
        except BaseException as error:  # noqa: BLE001 - a worker must never take the process down
            self._fail(error, traceback.format_exc())
        finally:
            self._end()

    def _stopped_while_preparing(self) -> None:
        message = "stopped while preparing the images"
        if self._resume:
            message += "; it can be resumed"
        self._set(RunStatus.STOPPED, message)

    def _fail(self, error: BaseException, trace: str) -> None:
        """Record the failure; every file written on the way out may fail too, and is then
        named in the message instead."""
        with self._lock:
            self._error = f"{type(error).__name__}: {error}"
            self._traceback = trace
            self._finished = time.time()
        logger.error("job %s failed: %s", self.id, self._error)
        also = []
        try:
            self._writer.wait()
        except BaseException as late:  # noqa: BLE001 - reported below
            also.append(f"the last checkpoint could not be saved ({late})")
        try:
            self._metrics.flush(self._run, force=True)
        except BaseException as late:  # noqa: BLE001 - reported below
            logger.error("job %s: could not write its last metrics: %s", self.id, late)
            also.append(f"its last metrics could not be written ({late})")
        message = self._error if not also else f"{self._error}; also, {'; '.join(also)}"
        self._set(RunStatus.FAILED, message)

    def _end(self) -> None:
        """Whatever happened: an ended state in memory, the run's lock released (after its
        last status write), the device handed to the next job, waiters woken."""
        try:
            with self._lock:
                if self._state not in ENDED:  # the failure path itself failed
                    self._state = RunStatus.FAILED
                    self._error = self._error or "the job ended unexpectedly"
                    self._message = self._error
                if self._finished is None:
                    self._finished = time.time()
            self._release_owner()
            self._registry._job_ended(self)
        except BaseException:  # noqa: BLE001 - waiters must be woken whatever happens
            logger.exception("job %s: error while ending", self.id)
        finally:
            self._done.set()

    # --- worker: open the run, prepare, train, evaluate -----------------------------------

    def _train(self) -> None:
        """The worker thread's whole path; a stop before training raises PreparationStopped."""
        if self._stop.is_set():  # stopped between leaving the queue and starting: no run
            self._set(RunStatus.STOPPED, "cancelled before it started")
            return
        self._open_run()
        experiment, resume = self._prepare()
        log = self._fit(experiment, resume)
        steps = int(log.attrs.get("steps", 0))
        if log.attrs.get("stopped"):
            # A stop must be quick: the checkpoint is saved; evaluation can come later.
            self._set(RunStatus.STOPPED, f"stopped at step {steps}; it can be resumed")
            return
        summary = self._evaluate(experiment, steps=steps, epochs=int(log.attrs.get("epochs", 0)))
        self._set(RunStatus.FINISHED, self._calibrate(experiment, summary))

    def _open_run(self) -> None:
        """Create the run (a resumed job already has one), owning its writer lock."""
        if self._run is None:
            self._run = self._registry.store.create(self.config, self._run_name, acquire=True)
            self._owner = self._run.writer
            with self._lock:
                self._run_name = self._run.name
        with self._lock:
            self._started = time.time()
        self._set(RunStatus.RUNNING, "preparing the images and encoders")

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise PreparationStopped("stopped while preparing the images")

    def _prepare(self) -> tuple[LandmarkExperiment, ResumeFrom | None]:
        """The experiment with its images and frozen features ready (reusing what the
        registry prepared ahead), restored from the run's checkpoint when resuming."""
        self._check_stop()
        experiment = LandmarkExperiment(
            self.config,
            cache=self._registry.feature_cache,
            data=self._registry.prepared_data(self.config, stop_event=self._stop),
            stop_event=self._stop,
        )
        self._check_stop()
        resume = self._resume_point(experiment) if self._resume else None
        experiment.frozen_fingerprints()
        experiment.datasets()
        with self._lock:
            self._check_stop()
            self._training = True  # from here a stop saves a checkpoint
        return experiment, resume

    def _resume_point(self, experiment: LandmarkExperiment) -> ResumeFrom:
        assert self._run is not None
        resume = restore_checkpoint(experiment, self._run)
        self._run.truncate_metrics(resume.step)  # rows after the checkpoint are redone
        metrics = self._run.read_metrics()
        with self._lock:  # show the curves so far
            for row in metrics.itertuples(index=False):
                self._curves[row.split].setdefault(row.name, []).append((row.step, row.value))
        return resume

    def _fit(self, experiment: LandmarkExperiment, resume: ResumeFrom | None) -> pd.DataFrame:
        """Train until the end or a stop; every checkpoint and metric row is on disk after."""
        self._set(RunStatus.RUNNING, "training")
        log = experiment.train(
            callback=self._on_progress,
            stop_event=self._stop,
            checkpoint=lambda state: self._checkpoint(experiment, state),
            resume=resume,
        )
        self._writer.wait()
        self._metrics.flush(self._run, force=True)
        return log

    def _evaluate(self, experiment: LandmarkExperiment, *, steps: int, epochs: int) -> dict:
        """The test-set estimates, into the run's summary (returned) and the snapshot's
        table."""
        with self._lock:
            self._message = "evaluating on the test images"
        estimates = tuple(experiment.estimates("test"))
        assert self._run is not None
        summary = {
            "mi": [e.to_dict() for e in estimates],
            "steps": steps,
            "epochs": epochs,
            "train_seconds": time.time() - (self._started or time.time()),
            "environment": environment(experiment.device),
        }
        self._run.write_summary(summary)
        with self._lock:
            self._mi_table = estimates
        return summary

    def _calibrate(self, experiment: LandmarkExperiment, summary: dict) -> str:
        """How often the posterior regions hold the truth (and their recalibration), added
        to the summary after the MI estimates, which the pages show meanwhile. A stop or a
        failure here leaves the run finished without it. Returns the final message."""

        def progress(split: str, done: int, total: int) -> None:
            if self._stop.is_set():
                raise _CalibrationStopped
            faces = "validation" if split == "valid" else "test"
            with self._lock:
                self._message = f"checking the posterior regions on {faces} faces ({done}/{total})"

        try:
            report = calibrate(
                experiment,
                faces=CALIBRATION_FACES,
                valid_faces=CALIBRATION_VALID_FACES,
                progress=progress,
            )
        except _CalibrationStopped:
            return "finished (stopped before the posterior regions were checked)"
        except Exception as error:  # noqa: BLE001 - the MI estimates are saved already
            logger.exception("job %s: the calibration failed", self.id)
            return f"finished; the posterior regions could not be checked ({error})"
        assert self._run is not None
        self._run.write_summary({**summary, "calibration": report.to_dict()})
        return "finished"

    def _on_progress(self, progress: Progress) -> None:
        names = ({"loss": progress.loss} | progress.mi).items()
        rows = [(progress.step, progress.epoch, progress.split, n, v) for n, v in names]
        with self._lock:
            self._progress = progress
            if self._first_step is None and progress.split == "train":
                self._first_step = (progress.samples, progress.elapsed_s)
            curves = self._curves.setdefault(progress.split, {})
            for name, value in names:
                curves.setdefault(name, []).append((progress.step, value))
        self._metrics.add(rows)
        self._metrics.flush(self._run)

    def _checkpoint(self, experiment: LandmarkExperiment, state: TrainState) -> None:
        """Copy the state now (tens of ms) and write it in the background, so training goes
        on while hundreds of MB reach the disk; a stop or the end waits for the write."""
        assert self._run is not None
        if state.reason == "stopped":
            with self._lock:
                self._message = f"saving a checkpoint at step {state.step}"
        self._metrics.flush(self._run, force=True)  # the checkpoint's metrics are on disk first
        pending = capture_checkpoint(experiment, state)
        run = self._run
        self._writer.start(lambda: pending.save(run))
        if state.reason != "epoch":  # only an epoch's checkpoint may overlap the training
            self._writer.wait()
