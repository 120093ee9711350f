"""Densities for y: q(y) and q(y | x) as normalizing flows, and the EMA standardiser."""

from mist_core.distributions.flows import (
    CONDITIONAL_TRANSFORMS,
    TRANSFORMS,
    ConditionalTransformedNormal,
    TransformedNormal,
    conditional_transformed_normal,
    transformed_normal,
)
from mist_core.distributions.normalization import EMANorm

__all__ = [
    "CONDITIONAL_TRANSFORMS",
    "TRANSFORMS",
    "ConditionalTransformedNormal",
    "EMANorm",
    "TransformedNormal",
    "conditional_transformed_normal",
    "transformed_normal",
]
