"""Training and evaluating MI estimators: ``train_mi_estimator``, ``evaluate_mi``, ``estimate_mi``.

- :mod:`~mist_core.training.inputs`: the data forms accepted, turned into batches;
- :mod:`~mist_core.training.optim`: the optimizers by name;
- :mod:`~mist_core.training.state`: what the loop reports (:class:`Progress`), hands to a
  checkpoint (:class:`TrainState`) and resumes from (:class:`ResumeFrom`);
- :mod:`~mist_core.training.parts`: the loop's small pieces of state (early stopping, log,
  checkpoint schedule, cancellation, budget);
- :mod:`~mist_core.training.loop`: :func:`train_mi_estimator`;
- :mod:`~mist_core.training.evaluate`: :func:`evaluate_mi` and the typed
  :func:`evaluate_pairs`;
- :mod:`~mist_core.training.auto`: how ``estimate_mi``'s default ``"auto"`` chooses its
  densities (:class:`AutoConfig`);
- :mod:`~mist_core.training.estimate`: :func:`estimate_mi`, from samples to an estimate.
"""

from mist_core.devices import resolve_device
from mist_core.training.auto import AutoConfig
from mist_core.training.estimate import EstimateResult, estimate_mi
from mist_core.training.evaluate import evaluate_mi, evaluate_pairs
from mist_core.training.loop import train_mi_estimator
from mist_core.training.optim import OPTIMIZERS, make_optimizer
from mist_core.training.state import Progress, ResumeFrom, TrainState

__all__ = [
    "OPTIMIZERS",
    "AutoConfig",
    "EstimateResult",
    "Progress",
    "ResumeFrom",
    "TrainState",
    "estimate_mi",
    "evaluate_mi",
    "evaluate_pairs",
    "make_optimizer",
    "resolve_device",
    "train_mi_estimator",
]
