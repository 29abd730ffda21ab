"""Averaging rules as pure ``init`` / ``update`` pairs over lists of tensors (optax style).

Step convention (trajlab-wide): ``theta_0`` is the initial model; step t (t >= 1) trains on batch
``B_t`` and produces ``theta_t``. Every rule is run the same way:

* ``state = rule.init(params)`` with ``params = theta_0`` (the average starts *at* theta_0);
* ``state = rule.update(state, params, step=t)`` folds ``theta_t``; with ``every_steps = k`` it is
  called only at t = k, 2k, ... (the "update grid"), and the average *held* at step t is the one after
  the last update at or before t.

Every rule also reports its **kernel**: ``weights(step, every_steps=1)`` is a float64 array of shape
``(step + 1,)`` whose entry j is the weight of ``theta_j`` in the average held at ``step``; it sums to 1
and is what the online update computes (to float tolerance) and what post-hoc averaging streams.
``point_weights(steps)`` is the same kernel for updates at an arbitrary increasing list of steps.

Two kinds of rule:

* ``"lerp"`` rules (EMA, SWA from a start step, PowerEMA) keep one running average and update it with
  ``average <- average + w_t * (theta_t - average)`` (``torch._foreach_lerp_``), where ``w_t`` is a
  Python float computed from step numbers only, so no host synchronisation is ever needed.
* ``"ring"`` rules (SWA over a window, TwoPoint, MultiPoint, Kernel) keep a ring of the last few
  snapshots on the update grid and form the weighted sum when the average is read.

Horizons are in steps, not in updates: ``EMA(decay=0.999)`` with ``every_steps=10`` applies
``0.999**10`` per update, so changing how often the update runs does not silently change the horizon.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

Params = list[Tensor]
# fn(steps, at_step) -> unnormalised weights of the iterates at `steps` (int64) in the average at at_step.
KernelFn = Callable[[np.ndarray, int], np.ndarray]


class LerpState(NamedTuple):
    """State of a ``"lerp"`` rule.

    Attributes:
        step: the last step folded in (``init`` sets the step of the initial weights, normally 0).
        count: number of iterates in a uniform average (SWA); unused by EMA / PowerEMA.
        decay_product: product of all per-step decays so far (EMA bias correction), 1.0 at init.
        average: the running average, one tensor per parameter.
        compensation: fp16 relative residual per tensor for 16-bit storage (the value is
            ``average * (1 + compensation)``), or ``None`` for 32/64-bit storage.
    """

    step: int
    count: int
    decay_product: float
    average: Params
    compensation: Params | None


class RingState(NamedTuple):
    """State of a ``"ring"`` rule.

    Attributes:
        step: the last step folded in.
        slot_steps: the step held by each slot, -1 for an empty slot.
        slots: ``slots[i]`` is the snapshot (one tensor per parameter) taken at ``slot_steps[i]``.
    """

    step: int
    slot_steps: list[int]
    slots: list[Params]


def _is_low_precision(dtype: torch.dtype) -> bool:
    return dtype in (torch.bfloat16, torch.float16)


def _alloc_copy(params: Params, device: torch.device | str | None, dtype: torch.dtype | None) -> Params:
    # Floating tensors take the storage dtype; integer tensors (never averaged by callers) keep theirs.
    return [
        p.detach().to(
            device=device or p.device,
            dtype=dtype if (dtype and p.is_floating_point()) else p.dtype,
            copy=True,
        )
        for p in params
    ]


def lerp_(average: Params, params: Params, weight: float, compensation: Params | None = None) -> None:
    """In place: ``average <- average + weight * (params - average)`` for every tensor.

    One ``torch._foreach_lerp_`` when devices and dtypes match (the fast path). 16-bit storage with a
    ``compensation`` list keeps the value as ``hi * (1 + r)``: ``hi`` the 16-bit average, ``r`` the fp16
    relative rounding residual (32 bits per weight in all). The update runs in fp32 and is split again, so
    an update far below one bf16 ulp still accumulates (resolution ~2**-19 relative instead of 2**-8). A
    residual relative to ``hi`` keeps fp16's 11-bit mantissa for weights of any magnitude, where a plain
    ``hi + lo`` pair of bf16 would resolve only ~2**-16.

    Args:
        average: tensors updated in place.
        params: the new iterate, same shapes (any device / dtype).
        weight: the lerp weight ``w`` in [0, 1], a Python float (no host sync).
        compensation: residual tensors for 16-bit ``average``, or ``None``.
    """
    if weight == 0.0:
        return
    if compensation is not None:
        for a, c, p in zip(average, compensation, params):
            hi = a.float()
            value = hi * (1.0 + c.float())
            value.lerp_(p.to(device=a.device, dtype=torch.float32), weight)
            a.copy_(value)
            hi = a.float()
            c.copy_(torch.where(hi != 0, (value - hi) / hi, 0.0))
        return
    same = all(a.device == p.device and a.dtype == p.dtype for a, p in zip(average, params))
    if same:
        torch._foreach_lerp_(average, params, weight)
    else:
        for a, p in zip(average, params):
            a.lerp_(p.to(device=a.device, dtype=a.dtype), weight)


def _lerp_kernel(lerp_weights: np.ndarray) -> np.ndarray:
    """Final weight of each point given the lerp weight a_i used when it was folded (a_0 = 1).

    w_i = a_i * prod_{j > i} (1 - a_j); shape (n,) -> (n,).
    """
    keep = np.append(np.cumprod((1.0 - lerp_weights[1:])[::-1])[::-1], 1.0)
    return lerp_weights * keep


def _check_grid(steps: Sequence[int]) -> np.ndarray:
    arr = np.asarray(steps, dtype=np.int64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("steps must be a non-empty 1-d sequence of step numbers")
    if np.any(np.diff(arr) <= 0) or arr[0] < 0:
        raise ValueError(f"steps must be non-negative and strictly increasing, got {arr[:8].tolist()}...")
    return arr


class Rule:
    """Base class: the kernel (``weights`` / ``point_weights``) and the ``init`` / ``update`` pair."""

    kind: Literal["lerp", "ring"] = "lerp"
    name: str = "rule"

    # ---- kernel -------------------------------------------------------------------------------------
    def point_weights(self, steps: Sequence[int]) -> np.ndarray:
        """Weights of the iterates at ``steps`` in the average after folding all of them in order.

        Args:
            steps: strictly increasing steps; ``steps[0]`` is the point ``init`` saw.

        Returns:
            float64 array, shape ``(len(steps),)``, summing to 1.
        """
        arr = _check_grid(steps)
        if self.kind == "ring":
            return self._ring_weights(arr)
        return _lerp_kernel(self._lerp_weights(arr))

    def _lerp_weights(self, steps: np.ndarray) -> np.ndarray:
        # Lerp weight used when each point was folded (1 for the init point); rules vectorise this.
        a = np.empty(steps.size)
        a[0] = 1.0
        scalars = self._init_scalars(int(steps[0]))
        for i in range(1, steps.size):
            a[i], scalars = self._advance(scalars, int(steps[i]))
        return a

    def weights(self, step: int, every_steps: int = 1) -> np.ndarray:
        """Kernel of the average held at ``step`` when updated every ``every_steps`` steps from theta_0.

        Args:
            step: the step at which the average is read (>= 0).
            every_steps: update interval in steps (updates at multiples of it).

        Returns:
            float64 array, shape ``(step + 1,)``: entry j is the weight of theta_j; sums to 1.
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self.check_every_steps(every_steps)
        grid = np.arange(0, step + 1, every_steps, dtype=np.int64)
        out = np.zeros(step + 1)
        out[grid] = self.point_weights(grid)
        return out

    def closed_form(self) -> dict[str, Any] | None:
        """The rule as plain numbers when its kernel (updated every step) is one of the standard shapes,
        so that the theory can use exact closed forms; ``None`` for any other kernel (the theory then uses
        :meth:`weights`). Shapes: ``{"kind": "ema", "decay": d}`` (weight (1-d) d^(T-j) on theta_j, d^T on
        theta_0); ``{"kind": "multi_point", "gap": k, "points": n}`` (1/n on theta_T, theta_(T-k), ...);
        ``{"kind": "swa", "start_step": s, "window": w or None}`` (uniform over the last w steps from s)."""
        return None

    def check_every_steps(self, every_steps: int) -> None:
        """Raise ``ValueError`` if the rule cannot run with updates every ``every_steps`` steps."""
        if not isinstance(every_steps, int | np.integer) or every_steps < 1:
            raise ValueError(f"every_steps must be an integer >= 1, got {every_steps!r}")

    # ---- lerp rules: scalar recursion -------------------------------------------------------------
    def _init_scalars(self, step: int) -> tuple[int, int, float]:
        return (step, 0, 1.0)

    def _advance(self, scalars: tuple[int, int, float], step: int) -> tuple[float, tuple[int, int, float]]:
        raise NotImplementedError

    def advance(self, state: LerpState, step: int) -> tuple[float, LerpState]:
        """Scalar part of ``update``: the lerp weight for theta_step and the state with counters moved on.

        The tensors in ``state`` are not touched; a container that fuses several rules into one kernel
        calls this and applies the weights itself.
        """
        if step <= state.step:
            raise ValueError(f"{self.name}: update step {step} must be after the last one ({state.step})")
        w, (s, n, prod) = self._advance((state.step, state.count, state.decay_product), step)
        return w, state._replace(step=s, count=n, decay_product=prod)

    # ---- init / update ------------------------------------------------------------------------------
    def ring_capacity(self, every_steps: int) -> int:
        """Number of snapshots a ring rule keeps when updated every ``every_steps`` steps."""
        raise NotImplementedError

    def init(
        self,
        params: Params,
        *,
        step: int = 0,
        every_steps: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LerpState | RingState:
        """Start the average at ``params`` (theta at ``step``, normally theta_0).

        Args:
            params: the current weights (not modified; copied).
            step: the step those weights belong to.
            every_steps: update interval (sizes the ring of ring rules).
            device: storage device (default: each tensor's own).
            dtype: storage dtype for floating tensors (default: each tensor's own). 16-bit storage of a
                lerp rule gets a compensation buffer.

        Returns:
            The rule's state.
        """
        self.check_every_steps(every_steps)
        if self.kind == "ring":
            capacity = self.ring_capacity(every_steps)
            slots = [_alloc_copy(params, device, dtype)]
            slots += [[torch.empty_like(t) for t in slots[0]] for _ in range(capacity - 1)]
            return RingState(step=step, slot_steps=[step] + [-1] * (capacity - 1), slots=slots)
        average = _alloc_copy(params, device, dtype)
        low = any(_is_low_precision(a.dtype) for a in average)
        comp = [torch.zeros_like(a, dtype=torch.float16) for a in average] if low else None
        s, n, prod = self._init_scalars(step)
        return LerpState(step=s, count=n, decay_product=prod, average=average, compensation=comp)

    def update(self, state: LerpState | RingState, params: Params, step: int) -> LerpState | RingState:
        """Fold ``params`` = theta_step into the average; tensors of ``state`` are updated in place.

        Args:
            state: from ``init`` or a previous ``update``.
            params: theta_step (any device / dtype; converted to the storage's).
            step: its step, after ``state.step``.

        Returns:
            The new state (always use the returned one).
        """
        if isinstance(state, RingState):
            if step <= state.step:
                raise ValueError(f"{self.name}: update step {step} must be after the last one ({state.step})")
            slot = int(np.argmin(state.slot_steps))  # empty slots (-1) first, then the oldest
            with torch.no_grad():
                for dst, src in zip(state.slots[slot], params):
                    dst.copy_(src.detach())
            slot_steps = list(state.slot_steps)
            slot_steps[slot] = step
            return state._replace(step=step, slot_steps=slot_steps)
        w, new = self.advance(state, step)
        with torch.no_grad():
            lerp_(new.average, params, w, new.compensation)
        return new

    def value(self, state: LerpState | RingState) -> Params:
        """The average held by ``state``: the storage (lerp rules) or a new tensor list (ring rules)."""
        if isinstance(state, LerpState):
            return state.average
        order = [i for i in np.argsort(state.slot_steps) if state.slot_steps[i] >= 0]
        steps = [state.slot_steps[i] for i in order]
        w = self.point_weights(steps)
        out = []
        with torch.no_grad():
            for k in range(len(state.slots[0])):
                ref = state.slots[order[-1]][k]
                if not ref.is_floating_point():
                    out.append(ref.clone())
                    continue
                acc = torch.zeros(
                    ref.shape,
                    device=ref.device,
                    dtype=torch.float32 if ref.dtype != torch.float64 else ref.dtype,
                )
                for i, wi in zip(order, w):
                    if wi != 0.0:
                        acc.add_(state.slots[i][k], alpha=float(wi))
                out.append(acc.to(ref.dtype))
        return out

    def _ring_weights(self, steps: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}<{self.name}>"


class EMA(Rule):
    """Exponential moving average with a per-*step* decay.

    ``ema_t = d_t * ema_{t-1} + (1 - d_t) * theta_t`` with ``ema_0 = theta_0``. Updated every k steps, the
    factor applied per update is the product of the k per-step decays (``decay**k``), and the skipped
    iterates are represented by the one folded (sample and hold), so the horizon stays ``1/(1-decay)``
    steps.

    * ``half_life_steps = h`` sets ``decay = 2**(-1/h)``: the weight of an iterate halves every h steps.
    * ``warmup=True`` uses ``d_s = min(decay, s / (s + 1))`` at step s: a plain uniform average of
      ``theta_0..theta_t`` until that would be longer than the EMA's horizon (ema-pytorch's warm-up with
      ``inv_gamma=1, power=1``; the power 1 makes the early phase exactly SWA).
    * ``bias_correction=True`` (optax ``debias``) removes theta_0 from the average: the result is
      ``(ema_t - P_t * theta_0) / (1 - P_t)`` with ``P_t = prod_s d_s``, kept directly in the storage by
      using the per-update weight ``1 - B * (1 - P_prev) / (1 - P_t)`` (``B`` = decay product over the
      update), so no extra buffer is needed.

    Args:
        decay: per-step decay in [0, 1).
        half_life_steps: alternative to ``decay``, > 0.
        warmup: use the warm-up above.
        bias_correction: drop the weight on theta_0 and renormalise.
    """

    def __init__(
        self,
        decay: float | None = None,
        half_life_steps: float | None = None,
        warmup: bool = False,
        bias_correction: bool = False,
    ) -> None:
        if (decay is None) == (half_life_steps is None):
            raise ValueError("EMA needs exactly one of decay=... or half_life_steps=...")
        if half_life_steps is not None:
            if not (half_life_steps > 0 and math.isfinite(half_life_steps)):
                raise ValueError(f"half_life_steps must be a positive number of steps, got {half_life_steps}")
            decay = 2.0 ** (-1.0 / half_life_steps)
            self.name = f"ema_hl{half_life_steps:g}"
        else:
            if not 0.0 <= decay < 1.0:
                raise ValueError(
                    f"EMA decay must be in [0, 1), got {decay} (use half_life_steps for long horizons)"
                )
            self.name = f"ema_{decay:g}"
        self.decay = float(decay)
        self.half_life_steps = half_life_steps
        self.warmup = bool(warmup)
        self.bias_correction = bool(bias_correction)
        self.name += "_warmup" * self.warmup + "_debiased" * self.bias_correction

    def closed_form(self) -> dict[str, Any] | None:
        if self.warmup or self.bias_correction:
            return None
        return {"kind": "ema", "decay": self.decay}

    def decay_product(self, start: int, stop: int) -> float:
        """Product of the per-step decays d_s for s in (start, stop]."""
        if not self.warmup:
            return self.decay ** (stop - start)
        # s/(s+1) < decay exactly for s < decay/(1-decay): telescoping part, then plain powers.
        switch = math.ceil(self.decay / (1.0 - self.decay)) if self.decay > 0 else 0
        mid = min(stop, switch - 1)
        ramp = (start + 1) / (mid + 1) if mid > start else 1.0
        return ramp * self.decay ** (stop - max(start, mid))

    def _decay_products(self, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        # Vectorised decay_product over arrays of (start, stop] intervals.
        if not self.warmup:
            return self.decay ** (stop - start).astype(np.float64)
        switch = math.ceil(self.decay / (1.0 - self.decay)) if self.decay > 0 else 0
        mid = np.minimum(stop, switch - 1)
        ramp = np.where(mid > start, (start + 1) / (mid + 1.0), 1.0)
        return ramp * self.decay ** (stop - np.maximum(start, mid)).astype(np.float64)

    def _lerp_weights(self, steps):
        b = self._decay_products(steps[:-1], steps[1:])
        if not self.bias_correction:
            return np.concatenate([[1.0], 1.0 - b])
        prod = np.cumprod(np.concatenate([[1.0], b]))
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(prod[1:] < 1.0, 1.0 - b * (1.0 - prod[:-1]) / (1.0 - prod[1:]), 1.0)
        return np.concatenate([[1.0], w])

    def _advance(self, scalars, step):
        prev, n, prod = scalars
        b = self.decay_product(prev, step)
        new_prod = prod * b
        if self.bias_correction:
            w = 1.0 - b * (1.0 - prod) / (1.0 - new_prod) if new_prod < 1.0 else 1.0
        else:
            w = 1.0 - b
        return w, (step, n + 1, new_prod)


class SWA(Rule):
    """Uniform (stochastic weight) average.

    * ``SWA(start_step=s)``: the mean of the iterates on the update grid from step s on,
      ``swa_t = swa_{t-1} + (theta_t - swa_{t-1}) / n_t``; before s the average follows the model
      (weight 1 on the latest iterate). ``start_step=0`` includes theta_0.
    * ``SWA(window_steps=W)``: the mean over the last W steps, i.e. of the grid points ``j > t - W``
      (LAWA); a ring of ``ceil(W / every_steps)`` snapshots. Before the window is full it is the mean of
      all points so far (from ``start_step``).

    Args:
        start_step: first step averaged (>= 0).
        window_steps: window length in steps (>= 1), or ``None`` for all steps since ``start_step``.
    """

    def __init__(self, start_step: int = 0, window_steps: int | None = None) -> None:
        if not isinstance(start_step, int | np.integer) or start_step < 0:
            raise ValueError(f"SWA start_step must be an integer >= 0, got {start_step!r}")
        if window_steps is not None and (not isinstance(window_steps, int | np.integer) or window_steps < 1):
            raise ValueError(f"SWA window_steps must be an integer >= 1 or None, got {window_steps!r}")
        self.start_step = int(start_step)
        self.window_steps = None if window_steps is None else int(window_steps)
        if self.window_steps is None:
            self.kind = "lerp"
            self.name = f"swa_start{self.start_step}"
        else:
            self.kind = "ring"
            self.name = f"swa_window{self.window_steps}" + (
                f"_start{self.start_step}" if self.start_step else ""
            )

    def _init_scalars(self, step):
        return (step, int(step >= self.start_step), 1.0)

    def _advance(self, scalars, step):
        _, n, prod = scalars
        if step < self.start_step:
            return 1.0, (step, 0, prod)
        return 1.0 / (n + 1), (step, n + 1, prod)

    def _lerp_weights(self, steps):
        inside = steps >= self.start_step
        count = np.cumsum(inside)  # points folded since the start, the init point included
        return np.where(inside, 1.0 / np.maximum(count, 1), 1.0)

    def closed_form(self) -> dict[str, Any] | None:
        return {"kind": "swa", "start_step": self.start_step, "window": self.window_steps}

    def ring_capacity(self, every_steps: int) -> int:
        return -(-self.window_steps // every_steps)

    def _ring_weights(self, steps):
        t = steps[-1]
        mask = (steps > t - self.window_steps) & (steps >= self.start_step)
        if t < self.start_step:
            mask = steps == t
        return mask / mask.sum()


class MultiPoint(Rule):
    """Mean of ``points`` iterates ``gap_steps`` apart: ``(1/n) sum_{i<n} theta_{t - i k}``.

    Points before theta_0 do not exist: early on the mean is over the available ones (at t < k it is
    theta_t). Online, a ring of ``(n - 1) k / every_steps + 1`` snapshots; with ``every_steps = gap_steps``
    that is just n snapshots and the average is exact at every multiple of the gap (held in between).

    Args:
        gap_steps: k >= 1, the spacing in steps; must be a multiple of ``every_steps``.
        points: n >= 2.
    """

    def __init__(self, gap_steps: int, points: int) -> None:
        if not isinstance(gap_steps, int | np.integer) or gap_steps < 1:
            raise ValueError(f"gap_steps must be an integer >= 1, got {gap_steps!r}")
        if not isinstance(points, int | np.integer) or points < 2:
            raise ValueError(f"points must be an integer >= 2, got {points!r}")
        self.kind = "ring"
        self.gap_steps = int(gap_steps)
        self.points = int(points)
        self.name = f"multi_point_k{self.gap_steps}_n{self.points}"

    def check_every_steps(self, every_steps: int) -> None:
        super().check_every_steps(every_steps)
        if self.gap_steps % every_steps:
            raise ValueError(
                f"{self.name}: gap_steps={self.gap_steps} is not a multiple of every_steps={every_steps}; "
                f"theta_(t-{self.gap_steps}) is never on the update grid. Use every_steps dividing the gap"
                f" (every_steps={self.gap_steps} keeps only {self.points} snapshots)."
            )

    def closed_form(self) -> dict[str, Any] | None:
        return {"kind": "multi_point", "gap": self.gap_steps, "points": self.points}

    def ring_capacity(self, every_steps: int) -> int:
        return (self.points - 1) * self.gap_steps // every_steps + 1

    def _ring_weights(self, steps):
        t = steps[-1]
        lag = t - steps
        mask = (lag % self.gap_steps == 0) & (lag <= (self.points - 1) * self.gap_steps)
        return mask / mask.sum()


class TwoPoint(MultiPoint):
    """Two-point average ``(theta_t + theta_{t-k}) / 2`` (paper: averaging two points many steps apart).

    Before step k the average is theta_t. See ``MultiPoint`` for the ring.

    Args:
        gap_steps: k >= 1.
    """

    def __init__(self, gap_steps: int) -> None:
        super().__init__(gap_steps, 2)
        self.name = f"two_point_k{self.gap_steps}"


class Kernel(Rule):
    """Any weights: ``fn(steps, at_step)`` gives unnormalised weights of the iterates at ``steps``.

    The result is normalised to sum to 1 over the points it is given (the update grid, or the stored
    snapshots post hoc); weights may be negative (extrapolation) but must not sum to 0.

    Online use needs ``window_steps``: ``fn`` must give weight 0 to iterates older than
    ``at_step - window_steps`` (checked), and the rule keeps a ring of ``window_steps // every_steps + 1``
    snapshots. Without it the rule is post-hoc only.

    Args:
        fn: ``fn(steps: int64 array, at_step: int) -> array`` of the same shape.
        window_steps: largest lag with non-zero weight, for online use.
        name: label (default ``kernel_<fn.__name__>``).
    """

    def __init__(self, fn: KernelFn, window_steps: int | None = None, name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"Kernel needs a callable fn(steps, at_step), got {type(fn).__name__}")
        if window_steps is not None and (not isinstance(window_steps, int | np.integer) or window_steps < 0):
            raise ValueError(f"window_steps must be an integer >= 0 or None, got {window_steps!r}")
        self.kind = "ring"
        self.fn = fn
        self.window_steps = window_steps
        self.name = name or f"kernel_{getattr(fn, '__name__', 'fn').strip('<>')}"

    def ring_capacity(self, every_steps: int) -> int:
        if self.window_steps is None:
            raise ValueError(
                f"{self.name}: a Kernel without window_steps needs every past iterate; use it post hoc "
                "(trajlab.averaging.post_hoc) or pass Kernel(fn, window_steps=...) for online averaging."
            )
        return self.window_steps // every_steps + 1

    def _ring_weights(self, steps):
        t = int(steps[-1])
        w = np.asarray(self.fn(steps.copy(), t), dtype=np.float64)
        if w.shape != steps.shape or not np.all(np.isfinite(w)):
            raise ValueError(
                f"{self.name}: fn must return finite weights of shape {steps.shape}, got {w.shape}"
            )
        if self.window_steps is not None and np.any(w[steps < t - self.window_steps] != 0):
            raise ValueError(
                f"{self.name}: fn gives weight to iterates older than window_steps={self.window_steps}"
            )
        total = w.sum()
        if abs(total) < 1e-12:
            raise ValueError(f"{self.name}: the weights at step {t} sum to 0 and cannot be normalised")
        return w / total


class PowerEMA(Rule):
    """EDM2's power-function EMA: the weight of theta_j at step t is proportional to j**gamma.

    Per update from step s to step t: ``ema_t = (s/t)**(gamma+1) * ema_s + (1 - (s/t)**(gamma+1)) * theta_t``,
    i.e. the per-step factor ``(1 - 1/t)**(gamma+1)`` compounded over the steps of the update, so the
    profile is in steps, whatever ``every_steps`` is (ema-pytorch's ``KarrasEMA`` counts updates instead).
    The kernel on the grid is ``w_j = (j**(g+1) - (j-k)**(g+1)) / t**(g+1)``; theta_0 gets weight 0 after
    the first update.

    Args:
        gamma: exponent > -1 (EDM2 uses ~6.94 for sigma_rel = 0.1).

    References:
        Karras et al., "Analyzing and Improving the Training Dynamics of Diffusion Models" (2024), Eq. 3.
    """

    def __init__(self, gamma: float) -> None:
        if not (math.isfinite(gamma) and gamma > -1.0):
            raise ValueError(f"PowerEMA gamma must be a finite number > -1, got {gamma}")
        self.gamma = float(gamma)
        self.name = f"power_ema_g{self.gamma:g}"

    @classmethod
    def from_sigma_rel(cls, sigma_rel: float) -> PowerEMA:
        """The PowerEMA with relative standard deviation ``sigma_rel`` of its profile (EDM2 Eq. 4)."""
        if not 0.0 < sigma_rel < 1.0 / math.sqrt(3.0):
            raise ValueError(f"sigma_rel must be in (0, 1/sqrt(3)), got {sigma_rel}")
        t = sigma_rel**-2
        return cls(float(np.roots([1.0, 7.0, 16.0 - t, 12.0 - t]).real.max()))

    def _advance(self, scalars, step):
        prev, n, prod = scalars
        return 1.0 - (prev / step) ** (self.gamma + 1.0), (step, n + 1, prod)

    def _lerp_weights(self, steps):
        ratio = steps[:-1] / steps[1:].astype(np.float64)
        return np.concatenate([[1.0], 1.0 - ratio ** (self.gamma + 1.0)])
