"""Probes of the loss landscape along training: fixed-batch line profiles, curvature, loss matrices.

Every probe works on any ``nn.Module`` through ``torch.func.functional_call`` and leaves the model exactly
as it was (parameters, buffers including BN running stats, ``.grad`` and train/eval flags). Every result
carries a :class:`CostLedger`. Typical use::

    profile = line_profile(model, F.cross_entropy, (x, y), eval_batches=[(x_test, y_test)])
    profile.lr_star, profile.one_step_fraction, profile.r2, profile.curvature_hvp

``loss_fn`` is a loss hook ``loss_fn(model, batch) -> scalar`` for batches of any shape (tensor,
tuple, dict), or a criterion such as ``F.cross_entropy`` for ``(x, y)`` batches (:mod:`trajlab.objective`).
The Hessian spectrum (top eigenvalues, trace, density) is in :mod:`trajlab.probes.spectrum`.
"""

from trajlab.probes._functional import CostLedger
from trajlab.probes.alignment import GradientAlignment, gradient_alignment
from trajlab.probes.callback import ProbeCallback
from trajlab.probes.curvature import (
    DEFAULT_HVP_METHOD,
    HVP_METHODS,
    Curvature,
    curvature_along,
    hessian_vector_product,
)
from trajlab.probes.interpolation import (
    Interpolation,
    distance_between_runs,
    distance_to_reference,
    interpolate,
    lerp_state,
    recalibrate_bn,
    state_distance,
)
from trajlab.probes.line import LineProfile, QuadraticFit, line_profile
from trajlab.probes.matrix import BatchMemory, LossMatrix, RecordedBatches, batch_memory, loss_matrix
from trajlab.probes.quadratic import fit_quadratic, parabola_from_slope, parabola_through, parabola_vertex
from trajlab.probes.spectrum import (
    HessianTrace,
    SpectralDensity,
    TopEigenvalues,
    hessian_trace,
    spectral_density,
    top_eigenvalues,
)

__all__ = [
    "DEFAULT_HVP_METHOD",
    "HVP_METHODS",
    "BatchMemory",
    "CostLedger",
    "Curvature",
    "GradientAlignment",
    "HessianTrace",
    "Interpolation",
    "LineProfile",
    "LossMatrix",
    "ProbeCallback",
    "QuadraticFit",
    "SpectralDensity",
    "TopEigenvalues",
    "RecordedBatches",
    "batch_memory",
    "curvature_along",
    "distance_between_runs",
    "distance_to_reference",
    "fit_quadratic",
    "gradient_alignment",
    "hessian_trace",
    "hessian_vector_product",
    "interpolate",
    "lerp_state",
    "line_profile",
    "loss_matrix",
    "parabola_from_slope",
    "parabola_through",
    "parabola_vertex",
    "recalibrate_bn",
    "spectral_density",
    "state_distance",
    "top_eigenvalues",
]
