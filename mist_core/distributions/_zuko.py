"""The one place that imports zuko.

zuko switches off argument validation for every ``torch.distributions.Distribution`` at
import time. mist imports it here and puts torch's global defaults back, so importing
mist_core does not change the behaviour of other code in the process; the distributions
mist builds pass ``validate_args=False`` where they need to.
"""

from __future__ import annotations

from torch.distributions import Distribution

_validate_args = Distribution._validate_args
_arg_constraints = Distribution.__dict__.get("arg_constraints")

import zuko  # noqa: E402
from zuko.distributions import NormalizingFlow  # noqa: E402
from zuko.flows.autoregressive import MaskedAutoregressiveTransform  # noqa: E402
from zuko.lazy import Flow, LazyDistribution, LazyTransform  # noqa: E402
from zuko.nn import MaskedLinear  # noqa: E402
from zuko.transforms import (  # noqa: E402
    DependentTransform,
    MonotonicAffineTransform,
    MonotonicRQSTransform,
)
from zuko.utils import broadcast, unpack  # noqa: E402

Distribution._validate_args = _validate_args
if _arg_constraints is not None:
    Distribution.arg_constraints = _arg_constraints
# zuko's own distributions do not declare constraints; they never validated anyway.
NormalizingFlow._validate_args = False
NormalizingFlow.arg_constraints = {}

__all__ = [
    "DependentTransform",
    "Flow",
    "LazyDistribution",
    "LazyTransform",
    "MaskedAutoregressiveTransform",
    "MaskedLinear",
    "MonotonicAffineTransform",
    "MonotonicRQSTransform",
    "NormalizingFlow",
    "broadcast",
    "unpack",
    "zuko",
]
