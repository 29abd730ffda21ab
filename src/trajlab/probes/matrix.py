"""Post-hoc probes on a recorded trajectory: fixed batches x checkpoints, and the memory of a used batch.

Works against the protocol of a recorded run (:class:`RecordedBatches`, implemented by
:class:`trajlab.runs.RecordedRun`): ``steps()``, ``load(step)`` (a state dict), ``batch(step)`` (the exact
training batch B_step) and ``batch_indices(step)``. Step
convention: B_t is used by step t, which produces theta_t, so a batch used at step u has been "seen" by
every checkpoint s >= u.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from trajlab.probes._functional import (
    Batch,
    CostLedger,
    CostMeter,
    FunctionalLoss,
    LossFn,
    check_bn_mode,
    prepare_batch,
    probe_mode,
)


@runtime_checkable
class RecordedBatches(Protocol):
    """What the probes need from a recorded run (implemented by ``trajlab.trajectory``)."""

    def steps(self) -> list[int]: ...

    def load(
        self, step: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> dict[str, Tensor]: ...

    def batch(self, step: int, device: torch.device | None = None) -> Batch: ...

    def batch_indices(self, step: int) -> Tensor: ...


@dataclass(frozen=True)
class LossMatrix:
    """Loss of K fixed batches at S checkpoints.

    Attributes:
        steps: the S checkpoint steps (columns).
        names: the K batch names (rows): ``"step_<u>"`` for training batch B_u, else the given name.
        used_at: the step that trained on each batch (None for held-out batches).
        losses: K x S nested tuples, losses[k][s] = L_{batch k}(theta_{steps[s]}).
        bn: BatchNorm mode.
        cost: cost ledger.
    """

    steps: tuple[int, ...]
    names: tuple[str, ...]
    used_at: tuple[int | None, ...]
    losses: tuple[tuple[float, ...], ...]
    bn: str
    cost: CostLedger

    def array(self) -> np.ndarray:
        """The losses as a float64 array [K, S]."""
        return np.asarray(self.losses, dtype=np.float64)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["losses"] = [list(r) for r in self.losses]
        return d


def loss_matrix(
    store: RecordedBatches,
    batches: Sequence[int | Batch] | Mapping[str, int | Batch],
    steps: Iterable[int] | None,
    model_factory: Callable[[], nn.Module],
    *,
    loss_fn: LossFn = torch.nn.functional.cross_entropy,
    bn: str = "batch",
    device: torch.device | str | None = None,
) -> LossMatrix:
    """L_b(theta_s) for every batch b and stored checkpoint s, evaluated with ``functional_call``.

    Args:
        store: a :class:`RecordedBatches` (e.g. a :class:`trajlab.runs.RecordedRun`).
        batches: an int u means the training batch B_u (``store.batch(u)``, used at step u); anything
            else is a held-out batch (a tensor, tuple/list or dict the hook takes). A mapping names them; a
            sequence names held-out ones ``"heldout_<i>"``.
        steps: checkpoints to evaluate (default: all of ``store.steps()``).
        model_factory: builds the architecture (weights are ignored: the state dict is passed in).
        loss_fn: the loss hook ``loss_fn(model, batch) -> scalar``, or a criterion for ``(x, y)`` batches
            (see :mod:`trajlab.objective`).
        bn: ``"batch"`` or ``"running"`` BatchNorm statistics.
        device: where to evaluate (default: CPU).

    Returns:
        A :class:`LossMatrix`.
    """
    check_bn_mode(bn)
    available = list(store.steps())
    steps = available if steps is None else [int(s) for s in steps]
    missing = sorted(set(steps) - set(available))
    if missing:
        raise ValueError(
            f"steps {missing[:5]} are not in the store (it holds {available[:3]}...{available[-3:]})"
        )
    model = model_factory()
    if device is not None:
        model = model.to(device)
    items = batches.items() if isinstance(batches, Mapping) else enumerate(batches)
    names, used_at, data = [], [], []
    for key, b in items:
        if isinstance(b, int):
            names.append(str(key) if isinstance(batches, Mapping) else f"step_{b}")
            used_at.append(b)
            data.append(prepare_batch(store.batch(b, device=device), model, loss_fn, f"store.batch({b})"))
        else:
            names.append(str(key) if isinstance(batches, Mapping) else f"heldout_{key}")
            used_at.append(None)
            data.append(prepare_batch(b, model, loss_fn, f"batches[{key!r}]"))
    meter = CostMeter()
    cols = []
    with probe_mode(model, bn):
        for s in steps:
            state = store.load(s, device=device)
            floss = FunctionalLoss(model, loss_fn, meter, _buffers_of(model, state))
            params = {n: state[n] for n, _ in model.named_parameters()}
            cols.append([floss.forward(params, b) for b in data])
    losses = tuple(tuple(cols[j][k] for j in range(len(steps))) for k in range(len(data)))
    return LossMatrix(tuple(steps), tuple(names), tuple(used_at), losses, bn, meter.ledger())


def _buffers_of(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    missing = [n for n, _ in model.named_parameters() if n not in state]
    if missing:
        raise ValueError(
            f"checkpoint lacks parameters {missing[:5]}: does model_factory build the recorded model?"
        )
    return {n: state.get(n, b) for n, b in model.named_buffers()}


@dataclass(frozen=True)
class BatchMemory:
    """How much lower a used batch's loss is than held-out batches', by steps since its use.

    advantage(k) = mean over (used batch b, checkpoint s with s - u_b = k) of
    [mean_heldout L(theta_s) - L_b(theta_s)]; ratio(k) is the mean of L_b(theta_s) / mean_heldout L(theta_s).
    Negative k (checkpoints before the batch was used) is the unseen baseline, ~0 in expectation.

    Attributes:
        steps_since: the k values (sorted).
        advantage: mean advantage at each k.
        advantage_std: standard deviation over the (b, s) pairs at each k (0 for a single pair).
        ratio: mean loss ratio at each k.
        count: number of (b, s) pairs at each k.
    """

    steps_since: tuple[int, ...]
    advantage: tuple[float, ...]
    advantage_std: tuple[float, ...]
    ratio: tuple[float, ...]
    count: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        return {k: list(v) for k, v in asdict(self).items()}


def batch_memory(matrix: LossMatrix) -> BatchMemory:
    """Memory curve of used batches against the held-out mean (see :class:`BatchMemory`).

    Args:
        matrix: a :class:`LossMatrix` with at least one used and one held-out batch.

    Returns:
        A :class:`BatchMemory`.
    """
    losses = matrix.array()  # [K, S]
    heldout = [k for k, u in enumerate(matrix.used_at) if u is None]
    used = [k for k, u in enumerate(matrix.used_at) if u is not None]
    if not heldout or not used:
        raise ValueError(
            "batch_memory needs at least one training batch (int) and one held-out batch in the matrix"
        )
    ref = losses[heldout].mean(axis=0)  # [S]
    by_k: dict[int, list[tuple[float, float]]] = {}
    for k in used:
        for j, s in enumerate(matrix.steps):
            by_k.setdefault(s - matrix.used_at[k], []).append((ref[j] - losses[k, j], losses[k, j] / ref[j]))
    ks = sorted(by_k)
    adv = [np.array([a for a, _ in by_k[k]]) for k in ks]
    return BatchMemory(
        steps_since=tuple(ks),
        advantage=tuple(float(a.mean()) for a in adv),
        advantage_std=tuple(float(a.std()) if a.size > 1 else 0.0 for a in adv),
        ratio=tuple(float(np.mean([r for _, r in by_k[k]])) if ref.all() else math.nan for k in ks),
        count=tuple(len(by_k[k]) for k in ks),
    )
