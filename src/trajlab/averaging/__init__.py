"""Iterate averaging: rules (EMA, SWA, two-point, kernels), online container, post hoc, BN recalibration."""

from trajlab.averaging.bn import update_bn
from trajlab.averaging.callback import AveragingCallback
from trajlab.averaging.online import AveragedWeights, unwrap_model
from trajlab.averaging.post_hoc import NotRepresentableError, TrajectoryStore, plan, post_hoc, post_hoc_many
from trajlab.averaging.rules import (
    EMA,
    SWA,
    Kernel,
    LerpState,
    MultiPoint,
    PowerEMA,
    RingState,
    Rule,
    TwoPoint,
    lerp_,
)

__all__ = [
    "EMA",
    "SWA",
    "AveragedWeights",
    "AveragingCallback",
    "Kernel",
    "LerpState",
    "MultiPoint",
    "NotRepresentableError",
    "PowerEMA",
    "RingState",
    "Rule",
    "TrajectoryStore",
    "TwoPoint",
    "lerp_",
    "plan",
    "post_hoc",
    "post_hoc_many",
    "unwrap_model",
    "update_bn",
]
