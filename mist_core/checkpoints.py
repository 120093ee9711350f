"""A landmark experiment kept in a run: what mist writes into the run files and reads back.

:mod:`mist_core.runs` keeps a run's config as a JSON object and a checkpoint as tensors plus
an ``extra`` JSON object, and knows nothing of experiments. This module is mist's side:

* The config. :data:`EXPERIMENT_CONFIG` reads ``config.json`` as an :class:`ExperimentConfig`
  (:func:`load_config`: a run written before a field existed gets the value it was trained
  with); :func:`run_store` is a :class:`~mist_core.runs.RunStore` that uses it.
* A checkpoint. The model's state without the frozen encoders (the config rebuilds them
  exactly), the optimizer's state, and in ``extra`` (:class:`CheckpointExtra`):

  ``batches_in_epoch``
      batches done in the epoch being trained: where a resumed training starts.
  ``reason``
      why it was saved: ``"epoch"``, ``"stopped"``, ``"early_stopped"`` or ``"finished"``.
  ``frozen_fingerprints``
      ``{encoder: weights hash}`` of the frozen encoders, compared on restore: a checkpoint
      is never combined with other frozen weights (another ImageNet file, another torch).

  :func:`capture_checkpoint` copies a training's state (in the training thread),
  :meth:`ExperimentCheckpoint.save` writes it (in any thread), :func:`restore_checkpoint`
  loads one into an experiment and :func:`load_experiment` rebuilds a run's experiment.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from mist_core.experiment import ExperimentConfig, LandmarkExperiment
from mist_core.runs import ConfigFormat, Run, RunStore
from mist_core.training import ResumeFrom, TrainState

__all__ = [
    "EXPERIMENT_CONFIG",
    "CheckpointExtra",
    "ExperimentCheckpoint",
    "capture_checkpoint",
    "load_config",
    "load_experiment",
    "restore_checkpoint",
    "run_store",
]

#: Config fields added after runs were first saved, with the value that runs saved without
#: them were trained with (the default, "auto", would give bfloat16 on a GPU).
_VALUES_BEFORE_THE_FIELD: dict[str, Any] = {"precision": "float32"}


def load_config(data: Mapping[str, Any]) -> ExperimentConfig:
    """A run's ``config.json`` object as an :class:`ExperimentConfig`; fields the run was
    saved without get the value it was trained with.

    Raises:
        ValueError, TypeError: not a valid config (the message names the field).
    """
    missing = {k: v for k, v in _VALUES_BEFORE_THE_FIELD.items() if k not in data}
    return ExperimentConfig.from_dict({**data, **missing})


def _config_json(config: Any) -> dict[str, Any]:
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"config must be an ExperimentConfig, got {type(config).__name__}")
    return config.to_dict()


#: The run store's format for experiment configs.
EXPERIMENT_CONFIG = ConfigFormat(to_json=_config_json, from_json=load_config)


def run_store(root: str | Path = "runs", *, keep_checkpoints: int = 3) -> RunStore:
    """The folder of runs at ``root``, whose runs' configs are :class:`ExperimentConfig`."""
    return RunStore(root, keep_checkpoints=keep_checkpoints, config_format=EXPERIMENT_CONFIG)


def _experiment_config(run: Run) -> ExperimentConfig:
    """``run.config()`` as an :class:`ExperimentConfig`, whatever the run's config format."""
    config = run.config()
    if isinstance(config, ExperimentConfig):
        return config
    return Run(run.path, config_format=EXPERIMENT_CONFIG).config()


# --- checkpoints ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointExtra:
    """The ``extra`` of mist's checkpoints (see the module's docstring for each key).

    ``frozen_fingerprints`` is ``None`` for a checkpoint saved without them (nothing to
    compare); ``reason`` is ``None`` when it was not recorded.
    """

    batches_in_epoch: int = 0
    reason: str | None = None
    frozen_fingerprints: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "batches_in_epoch": self.batches_in_epoch,
            "reason": self.reason,
            "frozen_fingerprints": dict(self.frozen_fingerprints or {}),
        }

    @classmethod
    def from_json(cls, extra: Mapping[str, Any] | None) -> CheckpointExtra:
        extra = extra or {}
        return cls(
            batches_in_epoch=int(extra.get("batches_in_epoch", 0)),
            reason=extra.get("reason"),
            frozen_fingerprints=extra.get("frozen_fingerprints"),
        )


@dataclass(frozen=True)
class ExperimentCheckpoint:
    """A training's state at one step, copied: training may go on while it is written."""

    step: int
    epoch: int
    model_state: dict[str, Tensor] = field(repr=False)
    optimizer_state: dict = field(repr=False)
    extra: CheckpointExtra

    def save(self, run: Run) -> Path:
        """Write it into ``run`` (see :meth:`Run.save_checkpoint`); returns its JSON file."""
        return run.save_checkpoint(
            self.model_state,
            step=self.step,
            epoch=self.epoch,
            optimizer_state=self.optimizer_state,
            extra=self.extra.to_json(),
        )


def capture_checkpoint(experiment: LandmarkExperiment, state: TrainState) -> ExperimentCheckpoint:
    """Copy what a checkpoint of ``experiment`` at ``state`` holds (tens of ms for a ResNet)."""
    return ExperimentCheckpoint(
        step=state.step,
        epoch=state.epoch,
        model_state={k: v.detach().clone() for k, v in experiment.checkpoint_state().items()},
        optimizer_state=copy.deepcopy(state.optimizer.state_dict()),
        extra=CheckpointExtra(
            batches_in_epoch=state.batches_in_epoch,
            reason=state.reason,
            frozen_fingerprints=experiment.frozen_fingerprints(),
        ),
    )


def restore_checkpoint(
    experiment: LandmarkExperiment, run: Run, which: str | int = "latest"
) -> ResumeFrom:
    """Load a checkpoint of ``run`` (``"latest"`` or a step) into ``experiment``; returns
    where training resumes.

    Raises:
        CorruptCheckpointError: the checkpoint's files are damaged.
        ValueError: it does not fit the experiment (another model, other frozen weights).
    """
    checkpoint = run.load_checkpoint(which)
    extra = CheckpointExtra.from_json(checkpoint.extra)
    experiment.load_checkpoint_state(checkpoint.model_state, extra.frozen_fingerprints)
    return ResumeFrom(
        step=checkpoint.step,
        epoch=checkpoint.epoch,
        batches_in_epoch=extra.batches_in_epoch,
        optimizer_state=checkpoint.optimizer_state,
    )


def load_experiment(run: Run, which: str | int = "latest", **kwargs: Any) -> LandmarkExperiment:
    """Rebuild a run's experiment with the weights of one of its checkpoints, in eval mode
    (e.g. to evaluate it or draw posteriors). ``kwargs`` go to :class:`LandmarkExperiment`
    (``cache``...)."""
    experiment = LandmarkExperiment(_experiment_config(run), **kwargs)
    restore_checkpoint(experiment, run, which)
    experiment.model.eval()
    return experiment
