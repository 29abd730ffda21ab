"""Loss along straight lines between checkpoints, and distances along trajectories.

theta(t) = (1 - t) theta_a + t theta_b for t in ``ts`` (endpoints included when ``ts`` contains 0 and 1,
as the default does; t outside [0, 1] extrapolates). BatchNorm buffers are an explicit choice:

* ``buffers="interpolate"``: float buffers (running mean/var) follow the same line; integer buffers
  (``num_batches_tracked``) are taken from the nearer endpoint.
* ``buffers="recalibrate"``: running statistics are recomputed at every t from ``recalibration_data``
  (cumulative average, BN momentum None, on a private copy of the model), as after weight averaging.

and ``bn="running"`` evaluates with those buffers (eval-mode BN) while ``bn="batch"`` uses each data
batch's own statistics (buffers then do not matter).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trajlab.objective import as_loss_hook, batch_size, batch_to
from trajlab.probes._functional import (
    Batch,
    CostLedger,
    CostMeter,
    FunctionalLoss,
    LossFn,
    check_bn_mode,
    is_batch_norm,
    prepare_batch,
    probe_mode,
)

BUFFER_MODES = ("interpolate", "recalibrate")


@dataclass(frozen=True)
class Interpolation:
    """Loss (size-weighted mean over ``data``) at each t of the line theta_a -> theta_b."""

    ts: tuple[float, ...]
    losses: tuple[float, ...]
    buffers: str
    bn: str
    cost: CostLedger

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["ts"], d["losses"] = list(self.ts), list(self.losses)
        return d


def interpolate(
    model: nn.Module,
    state_a: Mapping[str, Tensor],
    state_b: Mapping[str, Tensor],
    ts: Sequence[float] | None,
    data: Batch | Iterable[Batch],
    *,
    loss_fn: LossFn = torch.nn.functional.cross_entropy,
    buffers: str = "interpolate",
    bn: str = "running",
    recalibration_data: Iterable[Tensor | Batch] | None = None,
) -> Interpolation:
    """Loss along the straight line between two state dicts (the model itself is never mutated).

    Args:
        model: the architecture (its own weights are ignored).
        state_a: state dict at t = 0.
        state_b: state dict at t = 1.
        ts: positions on the line (default ``linspace(0, 1, 11)``).
        data: one batch (a tensor, tuple or dict) or a list/iterable of batches (materialised once; the
            loss is their size-weighted mean).
        loss_fn: the loss hook ``loss_fn(model, batch) -> scalar``, or a criterion for ``(x, y)`` batches
            (see :mod:`trajlab.objective`).
        buffers: ``"interpolate"`` or ``"recalibrate"`` (see the module docstring).
        bn: ``"running"`` (eval-mode BN with the buffers) or ``"batch"`` (batch statistics).
        recalibration_data: batches for ``buffers="recalibrate"`` (see :func:`recalibrate_bn`).

    Returns:
        An :class:`Interpolation`.
    """
    check_bn_mode(bn)
    if buffers not in BUFFER_MODES:
        raise ValueError(f"buffers must be one of {BUFFER_MODES}, got {buffers!r}")
    if buffers == "recalibrate" and recalibration_data is None:
        raise ValueError(
            'buffers="recalibrate" needs recalibration_data (training inputs to recompute BN stats)'
        )
    ts = [float(t) for t in (np.linspace(0, 1, 11) if ts is None else ts)]
    single = isinstance(data, (Tensor, tuple, Mapping))
    items = [data] if single else list(data)
    data = [prepare_batch(b, model, loss_fn, "data" if single else f"data[{i}]") for i, b in enumerate(items)]
    if not data:
        raise ValueError("data holds no batches")
    recal = None if recalibration_data is None else list(recalibration_data)
    param_names = [n for n, _ in model.named_parameters()]
    buffer_names = [n for n, _ in model.named_buffers()]
    for name, st in (("state_a", state_a), ("state_b", state_b)):
        missing = [n for n in param_names + buffer_names if n not in st]
        if missing:
            raise ValueError(f"{name} lacks entries {missing[:5]} of the model's state dict")
    meter = CostMeter()
    losses = []
    for t in ts:
        state = lerp_state(state_a, state_b, t)
        if buffers == "recalibrate":
            state.update(recalibrate_bn(model, state, recal, loss_fn=loss_fn))
            meter.forwards += len(recal)
        with probe_mode(model, bn):
            floss = FunctionalLoss(model, loss_fn, meter, {n: state[n] for n in buffer_names})
            params = {n: state[n] for n in param_names}
            total = sum(floss.forward(params, b) * batch_size(b) for b in data)
        losses.append(total / sum(batch_size(b) for b in data))
    return Interpolation(tuple(ts), tuple(losses), buffers, bn, meter.ledger())


def lerp_state(state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], t: float) -> dict[str, Tensor]:
    """(1 - t) a + t b for floating entries; non-floating entries from the nearer endpoint (a if t < 0.5)."""
    out = {}
    for n, a in state_a.items():
        b = state_b[n]
        if a.is_floating_point():
            out[n] = torch.lerp(a.detach(), b.detach().to(a), t)
        else:
            out[n] = (a if t < 0.5 else b).detach().clone()
    return out


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    state: Mapping[str, Tensor],
    data: Iterable[Tensor | Batch],
    *,
    loss_fn: LossFn | None = None,
) -> dict[str, Tensor]:
    """BatchNorm running statistics of ``state`` recomputed on ``data`` (cumulative average).

    Runs on a deep copy of ``model`` (BN momentum set to None there, train mode), so the caller's model
    is untouched. Each item of ``data`` is fed as: a tensor -> ``model(x)``; with ``loss_fn`` ->
    ``loss_fn(model, batch)`` (any batch shape, the loss is discarded); without it, a tuple or list ->
    ``model(batch[0])``.

    Returns:
        Only the BN buffers, ``{name: tensor}``.
    """
    from trajlab.averaging.bn import update_bn  # the one BN recalibration (averaging sits on this floor)

    work = copy.deepcopy(model)
    work.load_state_dict(dict(state))
    bns = [m for m in work.modules() if is_batch_norm(m)]
    hook = None if loss_fn is None else as_loss_hook(loss_fn)
    device = next((t.device for t in work.parameters()), None)

    def forward(m: nn.Module, item: Any) -> Any:  # bare inputs go straight in; batches through the hook
        return m(item) if isinstance(item, Tensor) or hook is None else hook(m, item)

    if bns:
        update_bn((batch_to(item, device) for item in data), work, forward=forward)
    names = {id(m): n for n, m in work.named_modules()}
    out = {}
    for m in bns:
        prefix = names[id(m)]
        for b_name, b in m.named_buffers(recurse=False):
            out[f"{prefix}.{b_name}" if prefix else b_name] = b.detach().clone()
    return out


# --- trajectory geometry -------------------------------------------------------------------------------


def state_distance(
    state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], keys: Iterable[str] | None = None
) -> float:
    """Euclidean distance |a - b| over ``keys`` (default: every floating-point entry), in float64."""
    keys = [n for n, v in state_a.items() if v.is_floating_point()] if keys is None else list(keys)
    return (
        float(
            sum(((state_a[n].double() - state_b[n].double().to(state_a[n].device)) ** 2).sum() for n in keys)
        )
        ** 0.5
    )


def _as_sequence(trajectory, steps: Iterable[int] | None) -> tuple[list[int], object]:
    if isinstance(trajectory, Mapping):
        steps = sorted(trajectory) if steps is None else list(steps)
        return steps, trajectory.__getitem__
    if hasattr(trajectory, "steps") and hasattr(trajectory, "load"):
        steps = list(trajectory.steps()) if steps is None else list(steps)
        return steps, trajectory.load
    raise TypeError("trajectory must be a {step: state_dict} mapping or a store with steps() and load(step)")


def distance_to_reference(
    trajectory: Mapping[int, Mapping[str, Tensor]] | object,
    reference: Mapping[str, Tensor],
    *,
    steps: Iterable[int] | None = None,
    keys: Iterable[str] | None = None,
) -> tuple[list[int], list[float]]:
    """|theta_s - theta_ref| for each step s of a trajectory (a ``{step: state}`` mapping or a store).

    Pass ``keys=[n for n, _ in model.named_parameters()]`` to measure parameters only.
    """
    steps, load = _as_sequence(trajectory, steps)
    keys = None if keys is None else list(keys)
    return steps, [state_distance(load(s), reference, keys) for s in steps]


def distance_between_runs(
    run_a: Mapping[int, Mapping[str, Tensor]] | object,
    run_b: Mapping[int, Mapping[str, Tensor]] | object,
    *,
    steps: Iterable[int] | None = None,
    keys: Iterable[str] | None = None,
) -> tuple[list[int], list[float]]:
    """|theta^a_s - theta^b_s| at the steps both runs hold (e.g. same batches from different starts).

    Returns:
        ``(steps, distances)`` over the common steps (or ``steps`` when given).
    """
    steps_a, load_a = _as_sequence(run_a, None)
    steps_b, load_b = _as_sequence(run_b, None)
    common = sorted(set(steps_a) & set(steps_b)) if steps is None else list(steps)
    keys = None if keys is None else list(keys)
    return common, [state_distance(load_a(s), load_b(s), keys) for s in common]
