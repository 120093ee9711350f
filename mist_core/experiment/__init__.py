"""The landmark experiment of the seed notebook as a typed, reusable piece.

A frozen :class:`ExperimentConfig` (JSON in, JSON out; :mod:`.config`) becomes a
:class:`LandmarkExperiment` (:mod:`.model`): the encoders, one estimator per (encoder,
landmark) with one marginal q(landmark) shared across encoders, the seed's model
(``TransformedMIEstimator`` over a ``MultiMIEstimator``), and the data loaders over the images
of :mod:`.data`. :class:`PreparedImages` (:mod:`.prepared`) draws or loads a config's images
ahead of the trainings that will use them.
"""

from mist_core.data.stopping import PreparationStopped
from mist_core.experiment.config import (
    DATASETS,
    LIMITS,
    PRESETS,
    REPRESENTATIONS,
    ExperimentConfig,
    preset,
)
from mist_core.experiment.data import _Preloaded as _Preloaded  # the tests build one directly
from mist_core.experiment.model import LandmarkExperiment, instantiate_estimators
from mist_core.experiment.prepared import PreparedImages

__all__ = [
    "DATASETS",
    "LIMITS",
    "PRESETS",
    "REPRESENTATIONS",
    "ExperimentConfig",
    "LandmarkExperiment",
    "PreparationStopped",
    "PreparedImages",
    "instantiate_estimators",
    "preset",
]
