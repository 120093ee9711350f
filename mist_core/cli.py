"""Headless training and evaluation:
``python -m mist_core {train,resume,evaluate,list,note,estimate}``.

The CLI drives the same job engine and run directories as the dashboard, so a run trained
on a GPU server shows up in the dashboard's Results page and vice versa.

    python -m mist_core train --preset demo-cpu
    python -m mist_core train --config my.json --set epochs=3 --set device=cuda
    python -m mist_core resume 20261128-093000-1a2b3c
    python -m mist_core evaluate runs/20261128-093000-1a2b3c
    python -m mist_core evaluate RUN_SEED0 RUN_SEED1 RUN_SEED2
    python -m mist_core list
    python -m mist_core note RUN --note "lr too high?" --tag baseline
    python -m mist_core estimate samples.npz --estimator auto
    python -m mist_core estimate x.npy y.npy --json

``evaluate`` prints the MI table of the run's last checkpoint on the test images, then how
often its posterior regions held the true positions (the figures its job stored when it
finished; ``--measure`` measures them again, ``--save`` also stores them: a few minutes).
Under the table, a ``Warnings:`` block names each pair whose number may not be trusted, and
why (:mod:`mist_core.reliability`).
Given several runs, ``evaluate`` does that for each, then, for runs whose configs differ only
in ``seed`` (:func:`mist_core.comparison.seed_key`), prints the mean ± standard error across
those seeds, with ``k`` the number of runs behind each number.

``list`` shows each run's tags and the start of its note; ``note RUN`` prints them, ``note RUN
--note TEXT --tag T`` sets the note and adds tags (``--clear-tags`` drops the old ones first).
Notes may be written while the run trains.

``estimate`` estimates I(X;Y) from paired samples: a ``.npz`` file holding arrays ``x`` and
``y`` (others with ``--x NAME --y NAME``), or two ``.npy`` files, each ``(N,)`` or ``(N, D)``.
It prints the estimate with its standard error, the estimator used (and why, for
``--estimator auto``), the time taken, and a ``warning:`` line for each reason to doubt it;
``--json`` prints one JSON object instead.

``resume``, ``evaluate`` and ``note`` take a run's name or its folder (``runs/NAME``, as tab
completion gives it; a folder outside ``--run-dir`` is opened where it is). A mistake (an
unknown config field, a value out of range, a run being trained by another process, a damaged
run file) prints one ``error:`` line and exits with status 2.

Ctrl-C stops training after the current step and saves a checkpoint (``resume`` continues).
More than one process (``torchrun --nproc_per_node=N -m mist_core train ...``) trains data-
parallel, NCCL on GPUs and gloo on CPUs, each process on 1/N of every batch; rank 0 writes
the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch

from mist_core import distributed
from mist_core.calibration import CalibrationReport, calibrate
from mist_core.checkpoints import restore_checkpoint, run_store
from mist_core.cli_samples import load_samples
from mist_core.cli_text import (
    format_calibration,
    format_group_table,
    format_notes,
    format_table,
    format_warnings,
    run_line,
)
from mist_core.comparison import group_by_seed, mean_estimates
from mist_core.experiment import PRESETS, ExperimentConfig, LandmarkExperiment, preset
from mist_core.jobs import DeviceBusyError, Job, JobRegistry, QueueFullError
from mist_core.results import PairEstimate, to_frame
from mist_core.runs import (
    CorruptCheckpointError,
    Run,
    RunBusyError,
    RunInfo,
    RunNotes,
    RunStatus,
)
from mist_core.training.estimate import estimate_mi

__all__ = ["main", "stop_on_sigterm"]


def _parse_value(text: str) -> object:
    """``--set key=value`` values are JSON when they parse as JSON, else plain strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _config(args: argparse.Namespace) -> ExperimentConfig:
    if args.config:
        try:
            config = ExperimentConfig.load(args.config)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{args.config}: {error}") from error
    else:
        config = preset(args.preset or "demo-cpu")
    changes = {}
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        changes[key.strip()] = _parse_value(value)
    if not changes:
        return config
    try:
        return ExperimentConfig.from_dict({**config.to_dict(), **changes})
    except TypeError as error:  # a value of a type the config cannot take
        raise ValueError(f"invalid --set value: {error}") from error


def _open_run(args: argparse.Namespace, text: str | None = None) -> Run:
    """The run ``text`` (default ``args.run``) names: a name in ``--run-dir``, or a run
    folder's path (whose own folder is then the store, when it is not ``--run-dir``)."""
    text = args.run if text is None else text
    store = run_store(args.run_dir)
    if any(sep in text for sep in ("/", "\\")) and Path(text).name not in ("", ".", ".."):
        folder = Path(text).expanduser().parent
        try:
            same = folder.resolve() == store.root.resolve()
        except (OSError, ValueError):
            same = False
        if not same:
            store = run_store(folder)
        text = Path(text).name
    return store.open(text)


def _print_table(estimates: Sequence[PairEstimate]) -> None:
    print(format_table(to_frame(estimates)), flush=True)
    block = format_warnings(estimates)
    if block:
        print(block, flush=True)


def _follow(job: Job) -> int:
    """Show a progress bar until the job ends; Ctrl-C asks it to stop (checkpoint first)."""
    from tqdm.auto import tqdm

    # tqdm draws only on a terminal (disable=None); logs and CI get the summary lines.
    bar = tqdm(total=None, unit="step", desc="waiting", disable=None, mininterval=0.5)
    print(f"training on {job.device} (Ctrl-C stops with a checkpoint)", flush=True)
    interrupted = False
    try:
        while not job.wait(0.25):
            try:
                snap = job.snapshot()
                if snap.total_steps and bar.total != snap.total_steps:
                    bar.total = snap.total_steps
                bar.n = snap.step
                bar.set_description(f"{snap.state.value} epoch {snap.epoch}")
                if snap.loss is not None:
                    bar.set_postfix(loss=f"{snap.loss:.3f}")
                bar.refresh()
            except KeyboardInterrupt:
                raise
    except KeyboardInterrupt:
        interrupted = True
        bar.write(
            "stopping after the current step and saving a checkpoint (Ctrl-C again to "
            "abort without one)..."
        )
        job.stop()
        job.wait()
    finally:
        bar.close()
    snap = job.snapshot()
    print(
        f"run {snap.run_name}: {snap.state.value} at step {snap.step}"
        + (f" - {snap.message}" if snap.message else "")
    )
    if snap.state is RunStatus.FAILED:
        print(snap.traceback or snap.error, file=sys.stderr)
        return 1
    if snap.mi_table:
        _print_table(snap.mi_table)
    if snap.state is RunStatus.STOPPED:
        print(f"resume with: python -m mist_core resume {snap.run_name}")
    return 130 if interrupted else 0


def _helper_rank(config: ExperimentConfig, run_dir: str | Path, resume_run: str | None) -> int:
    """A torchrun process other than rank 0: train its shard; rank 0 writes the run."""
    experiment = LandmarkExperiment(config)
    resume = None
    if resume_run is not None:
        resume = restore_checkpoint(experiment, run_store(run_dir).open(resume_run))
    try:
        experiment.train(resume=resume)
    except KeyboardInterrupt:  # torchrun forwards Ctrl-C to every process; rank 0 decides
        pass
    return 0


def _start(
    args: argparse.Namespace,
    config: ExperimentConfig,
    resume_run: str | None,
    run_dir: str | Path | None = None,
) -> int:
    run_dir = args.run_dir if run_dir is None else run_dir
    device = distributed.init_from_env()
    try:
        if device is not None:  # under torchrun: this process's GPU (or the CPU with gloo)
            config = config.replace(device=str(device))
            if not distributed.is_main_process():
                return _helper_rank(config, run_dir, resume_run)
        registry = JobRegistry(run_store(run_dir))
        if resume_run is not None:
            return _follow(registry.resume(resume_run, config=config))
        return _follow(registry.submit(config, run_name=args.name))
    finally:
        if device is not None:
            torch.distributed.destroy_process_group()


def _train(args: argparse.Namespace) -> int:
    return _start(args, _config(args), None)


def _resume(args: argparse.Namespace) -> int:
    run = _open_run(args)
    run.check_not_busy()  # another process trains it: say so now, before any work
    try:
        config = run.config()
    except ValueError as error:
        raise ValueError(f"cannot resume run {run.name!r}: {error}") from error
    store_root = run.path.parent
    return _start(args, config, run.name, store_root)


def _evaluate(args: argparse.Namespace) -> int:
    runs: dict[Path, Run] = {}
    for text in args.runs:  # every name is checked before minutes of work
        run = _open_run(args, text)
        if run.path.resolve() in runs:
            print(f"warning: run {run.name} is given twice; evaluated once", file=sys.stderr)
        runs.setdefault(run.path.resolve(), run)
    if len(runs) == 1:
        _evaluate_run(args, *runs.values())
        return 0
    evaluated: dict[Path, tuple[RunInfo, list[PairEstimate]]] = {}
    failed = False
    for i, (key, run) in enumerate(runs.items()):
        if i:
            print()
        try:
            evaluated[key] = _evaluate_run(args, run)
        except _USER_ERRORS as error:  # the others are still evaluated
            failed = True
            print(f"error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
    tables = {info.path: estimates for info, estimates in evaluated.values()}
    for group in group_by_seed([info for info, _ in evaluated.values()]):
        if len(group.runs) > 1:
            print()
            means = mean_estimates([tables[info.path] for info in group.runs])
            print(format_group_table(group, means), flush=True)
    return 2 if failed else 0


def _evaluate_run(args: argparse.Namespace, run: Run) -> tuple[RunInfo, list[PairEstimate]]:
    """Print one run's MI table and calibration (see the module's doc); return its
    :class:`RunInfo` and the estimates."""
    info = run_store(run.path.parent).info(run.name)
    if info.problem:
        print(f"warning: run {run.name}: {info.problem}", file=sys.stderr)
    try:
        experiment = LandmarkExperiment(run.config())
        restored = restore_checkpoint(experiment, run)
    except (ValueError, OSError, CorruptCheckpointError) as error:
        raise ValueError(f"cannot evaluate run {run.name!r}: {error}") from error
    experiment.model.eval()
    print(f"run {run.name}, checkpoint of step {restored.step}")
    estimates = list(experiment.estimates(args.split))
    _print_table(estimates)
    if args.calibration_faces == 0:
        return info, estimates
    stored = None if args.measure or args.save else _stored_calibration(run)
    if stored is not None:
        print(format_calibration(stored))
        print("(measured when the run finished; --measure measures it again)")
        return info, estimates
    report = calibrate(
        experiment,
        faces=args.calibration_faces,
        valid_faces=args.valid_faces,
        progress=_calibration_progress,
    )
    print(format_calibration(report))
    if args.save:
        _save_calibration(run, report)
    return info, estimates


def _stored_calibration(run: Run) -> CalibrationReport | None:
    """The calibration the run's job stored in its summary, or None (none, or unreadable:
    then it is measured again)."""
    try:
        summary = run.summary()
        return None if summary is None else CalibrationReport.from_dict(summary["calibration"])
    except (KeyError, ValueError):  # RunFileError is a ValueError
        return None


def _calibration_progress(split: str, done: int, total: int) -> None:
    faces = "validation" if split == "valid" else "test"
    line = f"checking the posterior regions: {faces} face {done}/{total}"
    if sys.stderr.isatty():  # one line, redrawn
        print(f"\r{line}", end="\n" if done == total else "", file=sys.stderr, flush=True)
    elif done == total:
        print(line, file=sys.stderr, flush=True)


def _save_calibration(run: Run, report: CalibrationReport) -> None:
    """Write the report into the run's summary (the pages read it), under its writer lock."""
    writer = run.acquire_writer()
    try:
        summary = run.summary()
        if summary is None:
            raise ValueError(
                f"run {run.name!r} has no summary.json (it never finished): nothing to add to"
            )
        run.write_summary({**summary, "calibration": report.to_dict()})
    finally:
        writer.release()
    print(f"saved into {run.summary_path}")


def _estimate(args: argparse.Namespace) -> int:
    x, y = load_samples(args.files, args.x, args.y)
    result = estimate_mi(x, y, estimator=args.estimator, seed=args.seed, device=args.device)
    warnings = list(getattr(result, "warnings", ()))
    details = dict(getattr(result, "details", None) or {})
    if args.json:
        record = {
            "mi": result.mi,
            "std_error": result.std_error,
            "estimator": result.estimator,
            "details": details,
            "warnings": warnings,
            "seconds": result.seconds,
            "n_train": result.n_train,
            "n_test": result.n_test,
        }
        print(json.dumps(record, indent=2, default=str))
        return 0
    print(f"I(X;Y) = {result.mi:.4g} ± {result.std_error:.2g} nats")
    print(f"estimator: {result.estimator}")
    if details.get("reason"):
        print(f"why: {details['reason']}")
    where = details.get("evaluated_on") or (
        f"{result.n_train:,} samples to fit, {result.n_test:,} held out"
    )
    print(f"evaluated on: {where}; {result.seconds:.1f} s")
    for text in warnings:
        print(f"warning: {text}")
    return 0


def _list(args: argparse.Namespace) -> int:
    runs = run_store(args.run_dir).list()
    if not runs:
        print(f"no runs in {args.run_dir}")
        return 0
    for info in runs:
        print(run_line(info))
    return 0


def _note(args: argparse.Namespace) -> int:
    run = _open_run(args)
    if args.note is None and not args.tag and not args.clear_tags:
        print(format_notes(run.name, run.notes()))
        return 0
    # read what is kept (a damaged notes.json need not be read when all of it is replaced)
    keep_note, keep_tags = args.note is None, not args.clear_tags
    current = run.notes() if keep_note or keep_tags else RunNotes()
    note = current.note if keep_note else args.note
    tags = [*(current.tags if keep_tags else ()), *(args.tag or ())]
    print(format_notes(run.name, run.set_notes(note, tags)))
    return 0


#: What a user's mistake or a damaged run raises: one ``error:`` line, exit status 2 (the
#: traceback with ``--verbose``). ValueError covers RunFileError and the config's checks.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    OSError,
    RunBusyError,
    CorruptCheckpointError,
    QueueFullError,
    DeviceBusyError,
)


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    """The ``evaluate`` command: several runs, calibration flags."""
    evaluate = commands.add_parser(
        "evaluate",
        help="print runs' MI tables (and, for runs that differ only in seed, their mean)",
    )
    evaluate.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run names or run folders (runs/NAME); runs that differ only in seed are also "
        "summarised together",
    )
    evaluate.add_argument("--split", default="test", choices=["test", "train"])
    evaluate.add_argument(
        "--calibration-faces",
        type=int,
        default=300,
        metavar="N",
        help="test faces on which to check the posterior regions when measuring them (0: "
        "print no calibration; about 0.2 s a face)",
    )
    evaluate.add_argument(
        "--valid-faces",
        type=int,
        default=1200,
        metavar="N",
        help="validation faces that fit the regions' recalibration (0: none)",
    )
    evaluate.add_argument(
        "--measure",
        action="store_true",
        help="measure the calibration again even when the run's summary holds one",
    )
    evaluate.add_argument(
        "--save",
        action="store_true",
        help="measure the calibration and store it in the run's summary.json",
    )
    evaluate.add_argument("--run-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    evaluate.set_defaults(func=_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mist_core",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run-dir", default="runs", help="folder of run directories")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an experiment into a new run")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--config", help="an ExperimentConfig JSON file")
    source.add_argument("--preset", choices=sorted(PRESETS), help="a ready-made config")
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="change a config field, e.g. --set epochs=3 (repeatable)",
    )
    train.add_argument("--name", help="run name (default: time stamp)")
    train.add_argument("--run-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    train.set_defaults(func=_train)

    resume = commands.add_parser(
        "resume", help="continue a stopped or interrupted run from its checkpoint"
    )
    resume.add_argument("run", help="a run name or a run folder (runs/NAME)")
    resume.add_argument("--run-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    resume.set_defaults(func=_resume)

    _add_evaluate(commands)

    listing = commands.add_parser("list", help="list the runs")
    listing.add_argument("--run-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    listing.set_defaults(func=_list)

    notes = commands.add_parser(
        "note", help="print a run's note and tags, or set them (also while it trains)"
    )
    notes.add_argument("run", help="a run name or a run folder (runs/NAME)")
    notes.add_argument("--note", metavar="TEXT", help="replace the note ('' removes it)")
    notes.add_argument(
        "--tag",
        action="append",
        metavar="TAG",
        help="add a tag (repeatable; the run's tags are kept unless --clear-tags)",
    )
    notes.add_argument(
        "--clear-tags", action="store_true", help="remove the run's tags (before any --tag)"
    )
    notes.add_argument("--run-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    notes.set_defaults(func=_note)

    estimate = commands.add_parser(
        "estimate",
        help="estimate I(X;Y) from paired samples in a .npz file (x, y) or two .npy files",
    )
    estimate.add_argument(
        "files", nargs="+", metavar="FILE", help="a .npz holding x and y, or X.npy Y.npy"
    )
    estimate.add_argument("--x", metavar="NAME", help="the .npz array of x (default: x)")
    estimate.add_argument("--y", metavar="NAME", help="the .npz array of y (default: y)")
    estimate.add_argument(
        "--estimator",
        default="auto",
        help="auto (chosen for the data), or an estimator's name: doe, infonce, gaussian, ...",
    )
    estimate.add_argument("--seed", type=int, default=0, help="the split and the weights' seed")
    estimate.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto, ...")
    estimate.add_argument("--json", action="store_true", help="print one JSON object")
    estimate.add_argument("--run-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    estimate.set_defaults(func=_estimate)
    return parser


def stop_on_sigterm() -> None:
    """SIGTERM (a scheduler, torchrun shutting down) stops like Ctrl-C: checkpoint first."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    started = time.perf_counter()
    try:
        code = args.func(args)
    except _USER_ERRORS as error:
        if args.verbose:
            traceback.print_exc()
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    if args.verbose:
        print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return code
