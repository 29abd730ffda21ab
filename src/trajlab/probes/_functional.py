"""The functional core every probe shares: losses at arbitrary parameters, gradients, BN modes, costs.

A probe never mutates the model. It reads detached views of the parameters and buffers once, evaluates
the loss hook ``loss_fn(model, batch)`` (:mod:`trajlab.objective`) at ``theta + delta`` through
:func:`torch.func.functional_call` on a two-line wrapper module, and hands buffer *copies* to
every forward so that train-mode BatchNorm updates (``running_mean``, ``running_var``,
``num_batches_tracked``) land on throw-away tensors. Gradients come from :func:`torch.autograd.grad`
on fresh leaves, so ``p.grad`` is never written. The only thing touched is each module's ``training``
flag, which :func:`probe_mode` sets for the duration of a probe and restores exactly afterwards.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from trajlab import objective
from trajlab.objective import (
    Batch,
    Criterion,
    LossHook,
    SupervisedLoss,
    as_loss_hook,
    batch_to,
    check_loss,
    hook_hint,
)

# Concept aliases (optax-style): a parameter set and a direction in parameter space share the layout of
# ``dict(model.named_parameters())``; a batch is anything the loss hook consumes (trajlab.objective).
Params = dict[str, Tensor]
Direction = dict[str, Tensor]
LossFn = LossHook | Criterion
BNMode = Literal["batch", "running"]
BN_MODES = ("batch", "running")


@dataclass(frozen=True)
class CostLedger:
    """What a probe cost, so a user can judge it before scheduling it every step.

    Attributes:
        forwards: forward-only passes (no graph kept), one per (parameter set, batch).
        backwards: forward+backward passes that produced a gradient.
        hvps: Hessian-vector products (or quadratic forms v^T H v), whatever the method.
        wall_time_s: wall-clock seconds spent inside the probe.
    """

    forwards: int = 0
    backwards: int = 0
    hvps: int = 0
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __add__(self, other: CostLedger) -> CostLedger:
        return CostLedger(
            self.forwards + other.forwards,
            self.backwards + other.backwards,
            self.hvps + other.hvps,
            self.wall_time_s + other.wall_time_s,
        )


class CostMeter:
    """Mutable counter used while a probe runs; :meth:`ledger` freezes it into a :class:`CostLedger`."""

    def __init__(self) -> None:
        self.forwards = 0
        self.backwards = 0
        self.hvps = 0
        self._start = time.perf_counter()

    def ledger(self) -> CostLedger:
        return CostLedger(self.forwards, self.backwards, self.hvps, time.perf_counter() - self._start)


def check_bn_mode(bn: str) -> None:
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES} (batch statistics or running statistics), got {bn!r}")


def is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


@contextlib.contextmanager
def probe_mode(model: nn.Module, bn: BNMode) -> Iterator[None]:
    """Set train/eval flags for a probe and restore every module's flag afterwards (even on error).

    BatchNorm layers use batch statistics (train mode) for ``bn="batch"`` and running statistics (eval
    mode) for ``bn="running"``. Every other module is put in eval mode: a line search must be
    deterministic, so dropout and similar train-time noise are off.
    """
    check_bn_mode(bn)
    saved = [(m, m.training) for m in model.modules()]
    try:
        for m in model.modules():
            m.training = is_batch_norm(m) and bn == "batch"
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def detached_params(model: nn.Module) -> Params:
    """``{name: p.detach()}``: views sharing storage with the model, never written to."""
    return {n: p.detach() for n, p in model.named_parameters()}


def detached_buffers(model: nn.Module) -> dict[str, Tensor]:
    return {n: b.detach() for n, b in model.named_buffers()}


class _Objective(nn.Module):
    """``forward(batch) = loss_fn(self.model, batch)``: lets ``functional_call`` substitute the model's
    parameters and buffers (named ``"model.<name>"``) around any loss hook, without touching the model."""

    def __init__(self, model: nn.Module, loss_fn: LossHook) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "loss_fn", loss_fn)  # a plain attribute, never a registered submodule

    def forward(self, batch: Batch) -> Tensor:
        return self.loss_fn(self.model, batch)


class FunctionalLoss:
    """``loss(params, batch)`` for one model, BN mode and loss hook, counted in a :class:`CostMeter`.

    Buffers are cloned for every call (a ResNet-20 has ~1.4k buffer elements: the copy is negligible
    next to a convolution), so train-mode BN's in-place running-stat updates never reach the model.
    Call it inside :func:`probe_mode`.
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossHook | Criterion, meter: CostMeter, buffers: Mapping[str, Tensor]
    ):
        self.model = model
        self.loss_fn = as_loss_hook(loss_fn)
        self.objective = _Objective(model, self.loss_fn)
        self.meter = meter
        self.buffers = dict(buffers)

    def buffer_copies(self) -> dict[str, Tensor]:
        return {n: b.clone() for n, b in self.buffers.items()}

    def __call__(self, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """Scalar loss at ``params`` (graph kept iff params require grad). Not counted: callers count."""
        return self.evaluate(params, self.buffer_copies(), batch)

    def evaluate(self, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], batch: Batch) -> Tensor:
        """``loss_fn(model, batch)`` with the model's parameters and buffers replaced (model names)."""
        named = {f"model.{n}": p for n, p in params.items()}
        named_buffers = {f"model.{n}": b for n, b in buffers.items()}
        try:
            out = functional_call(self.objective, (named, named_buffers), (batch,), strict=False)
        except (TypeError, AttributeError) as err:
            if not isinstance(self.loss_fn, SupervisedLoss) and hasattr(err, "add_note"):
                err.add_note(hook_hint())
            raise
        return check_loss(out)

    @torch.no_grad()
    def forward(self, params: Mapping[str, Tensor], batch: Batch) -> float:
        self.meter.forwards += 1
        return float(self(params, batch))

    def value_and_grad(self, params: Mapping[str, Tensor], batch: Batch) -> tuple[float, Params]:
        """Loss and gradient at ``params`` via fresh leaves, so no ``.grad`` attribute is ever written."""
        self.meter.backwards += 1
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        with torch.enable_grad():
            loss = self(leaves, batch)
            grads = torch.autograd.grad(
                loss, list(leaves.values()), allow_unused=True, materialize_grads=True
            )
        return float(loss.detach()), dict(zip(leaves.keys(), grads))


def check_batch(batch: object, what: str = "batch", loss_fn: object = None) -> Batch:
    """A one-line TypeError unless ``batch`` is a batch ``loss_fn`` can take (see trajlab.objective)."""
    return objective.check_batch(batch, what, None if loss_fn is None else as_loss_hook(loss_fn))


def model_device(model: nn.Module) -> torch.device | None:
    """Where the model's parameters (else buffers) live; None for a module without tensors."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return None


def prepare_batch(batch: object, model: nn.Module, loss_fn: object, what: str = "batch") -> Batch:
    """Check ``batch`` for ``loss_fn`` and move it to the model's device."""
    return batch_to(check_batch(batch, what, loss_fn), model_device(model))


# --- small pytree-free helpers on name -> tensor dicts -----------------------------------------------


def tree_dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """sum_n <a_n, b_n> accumulated in float64 (a ResNet has ~1e5-1e7 terms: float32 sums drift)."""
    return float(sum((a[n].double() * b[n].double()).sum() for n in a))


def tree_norm(a: Mapping[str, Tensor]) -> float:
    return tree_dot(a, a) ** 0.5


def tree_axpy(alpha: float, x: Mapping[str, Tensor], y: Mapping[str, Tensor]) -> Params:
    """``y + alpha * x`` name by name (new tensors; inputs untouched)."""
    return {n: torch.add(y[n], x[n], alpha=alpha) for n in y}


def tree_sub(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Params:
    return {n: a[n] - b[n] for n in a}


def tree_scale(alpha: float, a: Mapping[str, Tensor]) -> Params:
    return {n: a[n] * alpha for n in a}


def check_direction(direction: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> Direction:
    missing = sorted(set(params) - set(direction))
    extra = sorted(set(direction) - set(params))
    if missing or extra:
        raise ValueError(
            "direction must have exactly the model's parameter names "
            f"(missing: {missing[:5]}, unexpected: {extra[:5]})"
        )
    for n, p in params.items():
        if direction[n].shape != p.shape:
            raise ValueError(
                f"direction[{n!r}] has shape {tuple(direction[n].shape)}, expected {tuple(p.shape)}"
            )
    return {n: direction[n].detach().to(device=p.device, dtype=p.dtype) for n, p in params.items()}
