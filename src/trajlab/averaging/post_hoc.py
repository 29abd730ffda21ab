"""Post-hoc averaging: any rule's average, built after training from stored snapshots.

Semantics: ``post_hoc(store, rule, at_step, every_steps=k)`` is exactly the average that
``AveragedWeights(model, rule, every_steps=k)`` would hold at ``at_step`` (the kernel
``rule.weights(at_step, k)``), computed as ``sum_j w_j * theta_j`` over the snapshots with non-zero
weight. If any of those snapshots is missing, a ``NotRepresentableError`` says which, and which exact
alternatives the store does support, instead of silently approximating. For example an EMA updated every
step needs every step; with snapshots every 10 steps, ``every_steps=10`` gives the exact EMA updated every
10 steps with the same horizon in steps (per-step decay unchanged, ``decay**10`` per stored point).

Snapshots are streamed: each one is loaded once, added into the accumulators of every (rule, step)
requested in the same pass, and dropped. The next snapshot is read (and its sha256 checked, by a verifying
store) in a helper thread while this one is added, so the check costs no wall time where a second core is
free: memory is two snapshots plus one fp32 copy per output.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from trajlab.averaging.rules import Rule


class SnapshotReader(Protocol):
    """What post-hoc averaging needs from a snapshot store (``trajlab.trajectory.TrajectoryStore``, or a
    ``trajlab.runs.RecordedRun``)."""

    def steps(self) -> list[int]:
        """Sorted steps that have a snapshot."""
        ...

    def load(
        self, step: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> dict[str, Tensor]:
        """The model state_dict stored at ``step``."""
        ...


class NotRepresentableError(ValueError):
    """The stored snapshots cannot represent the requested average exactly."""


def _spacing(stored: np.ndarray) -> int | None:
    # A regular grid 0, s, 2s, ... (the usual store layout), else None.
    if stored.size < 2 or stored[0] != 0:
        return None
    d = np.diff(stored)
    return int(d[0]) if np.all(d == d[0]) else None


def plan(
    stored_steps: Sequence[int], rule: Rule, at_step: int, every_steps: int = 1, tolerance: float = 0.0
) -> dict[int, float]:
    """Which snapshots, with which weights, make ``rule``'s average at ``at_step``.

    Args:
        stored_steps: steps that have snapshots.
        rule: the averaging rule.
        at_step: the step whose average is wanted.
        every_steps: the update interval of the online average being reproduced.
        tolerance: total weight that may fall on missing snapshots (dropped, the rest renormalised);
            0 means exact only.

    Returns:
        ``{step: weight}`` over stored steps, weights summing to 1.

    Raises:
        NotRepresentableError: if snapshots with more than ``tolerance`` total weight are missing.
    """
    stored = np.unique(np.asarray(list(stored_steps), dtype=np.int64))
    if at_step < 0:
        raise ValueError(f"at_step must be >= 0, got {at_step}")
    w = rule.weights(int(at_step), every_steps)
    support = np.flatnonzero(w)
    have = np.isin(support, stored)
    lost = float(np.abs(w[support[~have]]).sum())
    if lost > tolerance or not have.any():
        raise NotRepresentableError(_explain(stored, rule, int(at_step), every_steps, support[~have], lost))
    keep = support[have]
    kept = w[keep] / w[keep].sum()
    return {int(s): float(x) for s, x in zip(keep, kept)}


def _explain(
    stored: np.ndarray, rule: Rule, at_step: int, every: int, missing: np.ndarray, lost: float
) -> str:
    msg = (
        f"{rule.name} updated every {every} step(s), read at step {at_step}, needs {missing.size} snapshot(s)"
        f" the store lacks (weight {lost:.3g}), e.g. steps {missing[:5].tolist()}. "
    )
    if stored.size == 0:
        return msg + "The store holds no snapshots."
    spacing = _spacing(stored)
    layout = f"every {spacing} steps" if spacing else "at irregular steps"
    msg += f"The store has {stored.size} snapshots {layout}, steps {stored[0]}..{stored[-1]}. "
    if at_step > stored[-1]:
        msg += f"It ends at step {stored[-1]}; ask for at_step <= {stored[-1]}. "
    if spacing and spacing != every:
        try:
            plan(stored, rule, at_step, spacing)
            msg += (
                f"Exact alternative: every_steps={spacing} (the same rule updated every {spacing} steps; "
                "horizons stay in steps). "
            )
        except (NotRepresentableError, ValueError):
            pass
    need = math.gcd(*[int(x) for x in missing]) if missing.size else every
    msg += f"Or record snapshots every {math.gcd(need, every) or every} step(s) (or at the steps listed)."
    msg += " Pass tolerance=... to drop negligible weights explicitly."
    return msg


@torch.no_grad()
def post_hoc_many(
    store: SnapshotReader,
    rules: Sequence[Rule],
    at_steps: Sequence[int],
    every_steps: int | Sequence[int] = 1,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    buffer_names: Collection[str] = (),
    tolerance: float = 0.0,
) -> dict[tuple[str, int], dict[str, Tensor]]:
    """Several rules at several steps in one streaming pass over the store.

    Floating tensors are averaged in ``dtype``; integer tensors and the names in ``buffer_names`` (e.g.
    BN running statistics, to match an online average with ``buffers="copy"``) are copied from the newest
    snapshot the average uses.

    Args:
        store: the snapshot store.
        rules: averaging rules (distinct names).
        at_steps: steps to build each rule's average at.
        every_steps: update interval of the averages reproduced, one for all or one per rule.
        device: where to accumulate (default CPU).
        dtype: accumulation / output dtype for floating tensors.
        buffer_names: state_dict keys copied instead of averaged.
        tolerance: see ``plan``.

    Returns:
        ``{(rule.name, at_step): state_dict}``.

    Raises:
        NotRepresentableError: before anything is loaded, if some average is not representable.
    """
    every = [every_steps] * len(rules) if isinstance(every_steps, int) else list(every_steps)
    if len(every) != len(rules):
        raise ValueError(f"every_steps has {len(every)} entries for {len(rules)} rules")
    stored = store.steps()
    plans = {
        (r.name, int(t)): plan(stored, r, int(t), e, tolerance)
        for r, e in zip(rules, every)
        for t in at_steps
    }
    newest = {key: max(p) for key, p in plans.items()}
    needed = sorted({s for p in plans.values() for s in p})
    device = torch.device(device) if device is not None else torch.device("cpu")
    out: dict[tuple[str, int], dict[str, Tensor]] = {key: {} for key in plans}
    for step, snap in _prefetched(store, needed, device):
        for key, p in plans.items():
            acc = out[key]
            w = p.get(step, 0.0)
            for name, t in snap.items():
                averaged = t.is_floating_point() and name not in buffer_names
                if averaged and w != 0.0:
                    if name not in acc:
                        acc[name] = torch.zeros(t.shape, device=device, dtype=dtype)
                    acc[name].add_(t.to(dtype), alpha=w)
                elif not averaged and step == newest[key]:
                    acc[name] = t.clone()
        del snap
    return out


def _prefetched(
    store: SnapshotReader, steps: Sequence[int], device: torch.device
) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """``(step, snapshot)`` in order, the next one loading in a helper thread while the caller uses this
    one (reading a file and hashing it release the GIL). Errors surface at the step they belong to."""
    if len(steps) < 2:
        for step in steps:
            yield step, store.load(step, device=device)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="trajlab-prefetch") as pool:
        pending = pool.submit(store.load, steps[0], device=device)
        for i, step in enumerate(steps):
            snap = pending.result()
            if i + 1 < len(steps):
                pending = pool.submit(store.load, steps[i + 1], device=device)
            yield step, snap
            del snap


def post_hoc(
    store: SnapshotReader,
    rule: Rule,
    at_step: int,
    every_steps: int = 1,
    **kwargs,
) -> dict[str, Tensor]:
    """The average ``rule`` holds at ``at_step`` (updated every ``every_steps``), from stored snapshots.

    ``avg = sum_j w_j * theta_j`` with ``w = rule.weights(at_step, every_steps)``; streamed, one snapshot
    in memory at a time. Keyword arguments as in ``post_hoc_many``.

    Returns:
        A state_dict (the store's names).

    Raises:
        NotRepresentableError: when snapshots with non-zero weight are missing (with exact alternatives).
    """
    return post_hoc_many(store, [rule], [at_step], every_steps, **kwargs)[(rule.name, int(at_step))]
