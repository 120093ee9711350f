"""MI estimators: generative (DoE, BA, CLUB, L1Out), discriminative (NWJ, MINE, InfoNCE, JS,
SMILE), the closed-form Gaussian DoE, and the wrappers that combine them (Multi,
Transformed)."""

from collections.abc import Callable, Collection

from mist_core.estimators.base import (
    BatchEstimator,
    BatchTerms,
    MIEstimator,
    Terms,
    mi_name,
    parse_mi_name,
)
from mist_core.estimators.critics import JointCritic, SeparableCritic
from mist_core.estimators.discriminative import (
    JS,
    MINE,
    NWJ,
    SMILE,
    DiscriminativeEstimator,
    InfoNCE,
    infonce,
    js,
    mine,
    nwj,
    smile,
)
from mist_core.estimators.gaussian import GaussianDoE, gaussian
from mist_core.estimators.generative import BA, CLUB, DoE, L1Out, ba, club, doe, l1out
from mist_core.estimators.multi import MultiMIEstimator
from mist_core.estimators.transformed import TransformedMIEstimator

#: Estimator factories by name: ``ESTIMATORS[name](x_dim, y_dim, **options)``.
ESTIMATORS: dict[str, Callable[..., MIEstimator]] = {
    "doe": doe,
    "ba": ba,
    "club": club,
    "l1out": l1out,
    "nwj": nwj,
    "mine": mine,
    "infonce": infonce,
    "js": js,
    "smile": smile,
    "gaussian": gaussian,
}


#: Estimators made of a density q(y|x) alone per pair (DoE adds a q(y) shared by a target's
#: pairs): they give posterior maps, and the landmark experiment builds one per pair.
CONDITIONAL_DENSITY_ESTIMATORS = ("doe", "club", "l1out")


def check_estimator_name(name: object, valid: Collection[str] = ESTIMATORS, why: str = "") -> str:
    """``name`` when it is one of ``valid`` (every estimator by default); otherwise a
    ``ValueError`` that lists the valid names, with ``why`` (e.g. ``" (posterior maps need
    one)"``) saying why only those."""
    if not isinstance(name, str) or name not in valid:
        raise ValueError(f"unknown estimator {name!r}{why}; valid names: {', '.join(valid)}")
    return name


def build_estimator(name: str, x_dim: int, y_dim: int, **options: object) -> MIEstimator:
    """Build an estimator by name; unknown names or options raise a ``ValueError``."""
    return ESTIMATORS[check_estimator_name(name)](x_dim, y_dim, **options)


__all__ = [
    "BA",
    "CLUB",
    "CONDITIONAL_DENSITY_ESTIMATORS",
    "ESTIMATORS",
    "JS",
    "MINE",
    "NWJ",
    "SMILE",
    "BatchEstimator",
    "BatchTerms",
    "DiscriminativeEstimator",
    "DoE",
    "GaussianDoE",
    "InfoNCE",
    "JointCritic",
    "L1Out",
    "MIEstimator",
    "MultiMIEstimator",
    "SeparableCritic",
    "Terms",
    "TransformedMIEstimator",
    "ba",
    "build_estimator",
    "check_estimator_name",
    "club",
    "doe",
    "gaussian",
    "infonce",
    "js",
    "l1out",
    "mi_name",
    "parse_mi_name",
    "mine",
    "nwj",
    "smile",
]
