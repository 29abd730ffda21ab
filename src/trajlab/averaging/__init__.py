"""Iterate averaging: rules (EMA, SWA, two-point, kernels), online container, post hoc, BN recalibration."""

from trajlab.averaging.bn import evaluate_with_bn, update_bn
from trajlab.averaging.callback import AveragingCallback
from trajlab.averaging.cpu_kernel import KernelBuild
from trajlab.averaging.online import AveragedWeights, StorageOptions, unwrap_model
from trajlab.averaging.post_hoc import NotRepresentableError, SnapshotReader, plan, post_hoc, post_hoc_many
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
    "KernelBuild",
    "Kernel",
    "LerpState",
    "MultiPoint",
    "NotRepresentableError",
    "PowerEMA",
    "RingState",
    "Rule",
    "SnapshotReader",
    "StorageOptions",
    "TwoPoint",
    "lerp_",
    "plan",
    "post_hoc",
    "post_hoc_many",
    "evaluate_with_bn",
    "unwrap_model",
    "update_bn",
]
