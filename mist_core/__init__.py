"""mist: estimate and maximise mutual information between representations and targets.

The public API follows the seed notebook (a torch-mist tutorial): change its imports to
``from mist_core import ...`` and it runs.
"""

from mist_core.data import LANDMARKS, CelebALandmarks, SyntheticFaces
from mist_core.distributions import (
    ConditionalTransformedNormal,
    EMANorm,
    TransformedNormal,
    conditional_transformed_normal,
    transformed_normal,
)
from mist_core.encoders import ResNet18Encoder
from mist_core.estimators import (
    BA,
    CLUB,
    ESTIMATORS,
    JS,
    MINE,
    NWJ,
    SMILE,
    DoE,
    InfoNCE,
    L1Out,
    MIEstimator,
    MultiMIEstimator,
    TransformedMIEstimator,
    ba,
    build_estimator,
    club,
    doe,
    infonce,
    js,
    l1out,
    mine,
    nwj,
    smile,
)
from mist_core.experiment import (
    PRESETS,
    REPRESENTATIONS,
    ExperimentConfig,
    LandmarkExperiment,
    PreparationStopped,
    instantiate_estimators,
    preset,
)
from mist_core.freeze import freeze, is_frozen
from mist_core.resources import (
    ResourceError,
    ResourceEstimate,
    check_resources,
    estimate_resources,
)
from mist_core.training import (
    AutoConfig,
    EstimateResult,
    Progress,
    estimate_mi,
    evaluate_mi,
    resolve_device,
    train_mi_estimator,
)

__version__ = "0.1.0"

__all__ = [
    "LANDMARKS",
    "PRESETS",
    "REPRESENTATIONS",
    "AutoConfig",
    "BA",
    "CLUB",
    "ESTIMATORS",
    "JS",
    "MINE",
    "NWJ",
    "SMILE",
    "CelebALandmarks",
    "ConditionalTransformedNormal",
    "DoE",
    "EMANorm",
    "EstimateResult",
    "ExperimentConfig",
    "InfoNCE",
    "L1Out",
    "LandmarkExperiment",
    "MIEstimator",
    "MultiMIEstimator",
    "PreparationStopped",
    "Progress",
    "ResNet18Encoder",
    "ResourceError",
    "ResourceEstimate",
    "SyntheticFaces",
    "TransformedMIEstimator",
    "TransformedNormal",
    "ba",
    "build_estimator",
    "check_resources",
    "club",
    "conditional_transformed_normal",
    "doe",
    "estimate_mi",
    "estimate_resources",
    "evaluate_mi",
    "freeze",
    "infonce",
    "instantiate_estimators",
    "is_frozen",
    "js",
    "l1out",
    "mine",
    "nwj",
    "preset",
    "resolve_device",
    "smile",
    "train_mi_estimator",
    "transformed_normal",
]
