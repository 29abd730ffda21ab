"""``AveragedWeights``: one or several online averages of a model's weights, updated together.

The container is the imperative shell around the pure rules of ``rules.py``: it reads the live weights
once per update, applies every due rule, and swaps an average into the model for evaluation or saving.

Cost per update (see ``benchmarks/bench_averaging.py``): one EMA is one ``torch._foreach_lerp_`` over the
weights; K lerp rules (EMAs, SWA, PowerEMA) that share device and dtype with the model are stored as one
``[K, *shape]`` tensor per parameter and updated in one pass that reads the live weights once: on CPU the
small compiled loop of ``cpu_kernel.py`` (falling back to a blocked broadcast ``lerp_`` without a C
compiler), on GPU one multi-tensor foreach kernel.
Lerp weights are Python floats computed from step numbers, so there is no ``.item()`` and no host
synchronisation; the one exception is a different storage device (CPU offload), which has to wait for
the copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trajlab.averaging import cpu_kernel as fused_cpu
from trajlab.averaging.rules import LerpState, RingState, Rule

logger = logging.getLogger(__name__)

_FORMAT = "trajlab.averaging/1"
# Weights per block of the fused CPU update (1 MiB of fp32): measured best of 16K..1M on ResNet-50 sizes.
_CPU_BLOCK = 262_144


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that owns the parameters: strips DDP / DataParallel ``.module`` and compile's ``_orig_mod``.

    Without this, names get a ``module.`` or ``_orig_mod.`` prefix and averages silently miss parameters.
    """
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(
            getattr(model, "_orig_mod", None), nn.Module
        ):
            model = model._orig_mod
        else:
            return model


def _local(t: Tensor) -> Tensor:
    # FSDP2 / DTensor parameters: average the local shard only (elementwise, no communication).
    t = t.detach()
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t


def _rank() -> int:
    return (
        torch.distributed.get_rank()
        if torch.distributed.is_available() and torch.distributed.is_initialized()
        else 0
    )


@dataclass(frozen=True)
class StorageOptions:
    """Where and how the averages are stored (the container's knobs apart from the rules and their timing).

    Attributes:
        device: storage device (e.g. ``"cpu"`` to offload), default: the parameters' device.
        dtype: storage dtype for floating tensors, default: the parameters' dtype. 16-bit storage of lerp
            rules is compensated (``hi + lo``), so small EMA updates are not rounded away.
        buffers: ``"copy"``: the averaged model uses the live model's buffers (BN running statistics), so no
            storage for them; ``"average"``: floating buffers are averaged with the same rule.
        ranks: ``"all"``: every rank keeps the average (identical under DDP, since the weights are);
            ``"rank0"``: only rank 0 keeps it, other ranks hold nothing and ``update`` is a no-op there.
        cpu_kernel: update several lerp averages on CPU with the small compiled loop of ``cpu_kernel.py``
            when a C compiler is available (same numbers as the torch path, 1.3-1.4x faster for four
            EMAs; ``False``: torch ops only).
        kernel_build: where that loop is compiled to and with which compiler.
    """

    device: torch.device | str | None = None
    dtype: torch.dtype | None = None
    buffers: Literal["copy", "average"] = "copy"
    ranks: Literal["all", "rank0"] = "all"
    cpu_kernel: bool = True
    kernel_build: fused_cpu.KernelBuild = field(default_factory=fused_cpu.KernelBuild)

    def __post_init__(self) -> None:
        if self.buffers not in ("copy", "average"):
            raise ValueError(f"buffers must be 'copy' or 'average', got {self.buffers!r}")
        if self.ranks not in ("all", "rank0"):
            raise ValueError(f"ranks must be 'all' or 'rank0', got {self.ranks!r}")


_STORAGE_KEYWORDS = ("device", "dtype", "buffers", "ranks", "cpu_kernel")


def _storage_from(storage: Any, legacy: dict[str, Any]) -> StorageOptions:
    """``storage`` as a StorageOptions; the pre-0.2 keywords (and a device passed positionally) still work,
    with a DeprecationWarning, for one release."""
    unknown = sorted(set(legacy) - set(_STORAGE_KEYWORDS))
    if unknown:
        raise TypeError(f"AveragedWeights() got unexpected keyword argument(s) {unknown}")
    if storage is not None and not isinstance(storage, StorageOptions):
        legacy = {"device": storage, **legacy}  # the old fourth positional argument
        storage = None
    if legacy:
        warnings.warn(
            f"AveragedWeights({', '.join(f'{k}=...' for k in legacy)}) is deprecated; pass "
            f"storage=StorageOptions({', '.join(f'{k}=...' for k in legacy)})",
            DeprecationWarning,
            stacklevel=3,
        )
        return dataclasses.replace(storage or StorageOptions(), **legacy)
    return storage or StorageOptions()


class AveragedWeights:
    """Online averages of a model's weights under one or several rules.

    The averages start at the model's weights at construction (``theta_0``, or the weights at ``step``)
    and ``update(step)`` folds the live weights in, for each rule whose ``every_steps`` divides ``step``.

    Args:
        model: the model (DDP / ``torch.compile`` wrappers are unwrapped; FSDP2 shards stay local).
        rule_or_rules: one ``Rule`` or a sequence of rules with distinct names.
        every_steps: update interval in steps, one for all rules or one per rule.
        storage: device, dtype, buffers, ranks and the CPU kernel (:class:`StorageOptions`; the keywords
            ``device=``, ``dtype=``, ``buffers=``, ``ranks=``, ``cpu_kernel=`` still work for one release,
            with a DeprecationWarning).
        step: the step of the model's weights at construction.

    Example:
        >>> avg = AveragedWeights(model, [EMA(0.999), TwoPoint(2000)], every_steps=[1, 2000])
        >>> avg.update(step)                      # after each optimizer step
        >>> with avg.swap_into(model, "ema_0.999"):
        ...     evaluate(model)
    """

    def __init__(
        self,
        model: nn.Module,
        rule_or_rules: Rule | Sequence[Rule],
        every_steps: int | Sequence[int] = 1,
        storage: StorageOptions | None = None,
        *,
        step: int = 0,
        **legacy: Any,
    ) -> None:
        storage = _storage_from(storage, legacy)
        rules = [rule_or_rules] if isinstance(rule_or_rules, Rule) else list(rule_or_rules)
        if not rules or not all(isinstance(r, Rule) for r in rules):
            raise TypeError("rule_or_rules must be a Rule or a non-empty sequence of Rules")
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rules must have distinct names, got {names}")
        every = [every_steps] * len(rules) if isinstance(every_steps, int) else list(every_steps)
        if len(every) != len(rules):
            raise ValueError(f"every_steps has {len(every)} entries for {len(rules)} rules")
        for r, e in zip(rules, every):
            r.check_every_steps(e)
        self.storage = storage
        buffers, device, dtype = storage.buffers, storage.device, storage.dtype
        self.rules = {r.name: r for r in rules}
        self.every_steps = dict(zip(names, every))
        self.buffers = buffers
        self.cpu_kernel = bool(storage.cpu_kernel)
        self.model = unwrap_model(model)
        self.active = storage.ranks == "all" or _rank() == 0
        self.device = None if device is None else torch.device(device)
        self.dtype = dtype
        self.step = int(step)
        self._tensor_names = self._select_names(self.model)
        self._live_cache: tuple[nn.Module, list[Tensor]] | None = None
        self._states: dict[str, LerpState | RingState] = {}
        self._stack: list[Tensor] | None = None
        self._fused: list[str] = []
        if self.active:
            self._init_states(self._live(self.model))

    # ---- construction -----------------------------------------------------------------------------
    def _select_names(self, model: nn.Module) -> list[str]:
        names = [n for n, _ in model.named_parameters()]
        if self.buffers == "average":
            names += [n for n, b in model.named_buffers() if b.is_floating_point()]
        return names

    def _live(self, model: nn.Module) -> list[Tensor]:
        # Parameter objects themselves (not detached copies): they follow `.data` swaps such as
        # `model.to()`, and updates run under no_grad. Cached per model; DTensors re-read their shard.
        if self._live_cache is not None and self._live_cache[0] is model:
            tensors = self._live_cache[1]
        else:
            tensors = self._gather(model)
            self._live_cache = (model, tensors)
        return [_local(t) if hasattr(t, "placements") else t for t in tensors]

    def _gather(self, model: nn.Module) -> list[Tensor]:
        tensors = dict(model.named_parameters())
        if self.buffers == "average":
            tensors.update(model.named_buffers())
        try:
            return [tensors[n] for n in self._tensor_names]
        except KeyError as err:
            raise ValueError(
                f"model has no tensor {err}: not the architecture these averages were built for"
            ) from None

    def _storage_matches(self, live: list[Tensor]) -> bool:
        return all(
            (self.device is None or t.device == self.device)
            and (self.dtype is None or t.dtype == self.dtype)
            and t.dtype in (torch.float32, torch.float64)
            for t in live
        )

    @torch.no_grad()
    def _init_states(self, live: list[Tensor]) -> None:
        lerp_names = [n for n, r in self.rules.items() if r.kind == "lerp"]
        if len(lerp_names) >= 2 and self._storage_matches(live):
            # [K, *shape] per tensor: one broadcast lerp reads the live tensor once for all K rules.
            k = len(lerp_names)
            self._stack = [fused_cpu.stack_like(t, k) for t in live]
            self._fused = lerp_names
            for i, n in enumerate(lerp_names):
                s, c, p = self.rules[n]._init_scalars(self.step)
                self._states[n] = LerpState(s, c, p, [st[i] for st in self._stack], None)
        for n, r in self.rules.items():
            if n not in self._states:
                e = self.every_steps[n]
                self._states[n] = r.init(
                    live, step=self.step, every_steps=e, device=self.device, dtype=self.dtype
                )
                if r.kind == "ring" and len(self._states[n].slots) > 2:
                    logger.info(
                        "%s keeps %d snapshots (every_steps=%d); every_steps = the gap keeps the fewest",
                        n,
                        len(self._states[n].slots),
                        e,
                    )

    def reset(self, model: nn.Module | None = None, step: int = 0) -> None:
        """Restart every average at the model's current weights, labelled ``step``."""
        self.step = int(step)
        self._states, self._stack, self._fused = {}, None, []
        if self.active:
            self._init_states(self._live(unwrap_model(model) if model is not None else self.model))

    @property
    def names(self) -> list[str]:
        """Names of the averages (the rules' names), in order."""
        return list(self.rules)

    # ---- update -------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, step: int | None = None, model: nn.Module | None = None) -> None:
        """Fold the live weights theta_step into every average whose ``every_steps`` divides ``step``.

        Args:
            step: the step of the live weights (default: the last step + 1).
            model: read the weights from this model instead of the one given at construction.
        """
        step = self.step + 1 if step is None else int(step)
        if step <= self.step:
            raise ValueError(f"update step {step} must be after the last one ({self.step})")
        self.step = step
        due = [n for n in self.rules if step % self.every_steps[n] == 0]
        if not self.active or not due:
            return
        live = self._live(unwrap_model(model) if model is not None else self.model)
        fused_w = []
        for n in self._fused:
            w = 0.0
            if n in due:
                w, self._states[n] = self.rules[n].advance(self._states[n], step)
            fused_w.append(w)
        if self._stack is not None and any(fused_w):
            self._fused_lerp(live, fused_w)
        for n in due:
            if n not in self._fused:
                self._states[n] = self.rules[n].update(self._states[n], live, step)

    def _fused_lerp(self, live: list[Tensor], weights: list[float]) -> None:
        if live[0].device.type == "cpu":
            lib = fused_cpu.load(self.storage.kernel_build) if self.cpu_kernel else None
            if lib is not None and fused_cpu.supported(self._stack, live):
                # One pass in C: 1 + 2K tensor passes of memory traffic, no weight broadcast.
                fused_cpu.lerp_rows_(lib, self._stack, live, weights)
                return
            # Blocks of _CPU_BLOCK weights: the live block stays in cache while all K rows read it, so
            # memory traffic is 1 + 2K tensor passes instead of 3K (K separate EMAs).
            k = len(weights)
            w = {dt: torch.tensor(weights, dtype=dt).view(k, 1) for dt in {st.dtype for st in self._stack}}
            for st, t in zip(self._stack, live):
                # Walk both in the live tensor's memory order (channels-last rows are laid out like it).
                order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
                try:
                    rows = st.permute(0, *[d + 1 for d in order]).view(k, -1)
                    src = t.permute(*order).reshape(1, -1)
                except RuntimeError:  # not dense in that order: row by row
                    for row, wj in zip(st, weights):
                        row.lerp_(t, wj)
                    continue
                for j in range(0, src.shape[1], _CPU_BLOCK):
                    rows[:, j : j + _CPU_BLOCK].lerp_(src[:, j : j + _CPU_BLOCK], w[st.dtype])
        else:
            # One multi-tensor kernel; Python-float weights keep it free of host syncs.
            k = len(weights)
            rows = [st[i] for i in range(k) for st in self._stack]
            torch._foreach_lerp_(rows, live * k, [w for w in weights for _ in live])

    # ---- reading ------------------------------------------------------------------------------------
    def _resolve(self, name: str | None) -> str:
        if not self.active:
            raise RuntimeError("this rank holds no averages (ranks='rank0'); read them on rank 0")
        if name is None:
            if len(self.rules) > 1:
                raise ValueError(f"several averages are held, pass name= one of {self.names}")
            return self.names[0]
        if name not in self.rules:
            raise KeyError(f"no average named {name!r}; held: {self.names}")
        return name

    def average(self, name: str | None = None) -> dict[str, Tensor]:
        """The average ``name`` as ``{tensor_name: tensor}`` (local shards under FSDP; do not modify)."""
        n = self._resolve(name)
        return dict(zip(self._tensor_names, self.rules[n].value(self._states[n])))

    def averaged_state_dict(self, name: str | None = None, full: bool = True) -> dict[str, Tensor]:
        """A complete model state_dict with the averaged tensors (buffers from the live model if "copy").

        Args:
            name: which average.
            full: gather DTensor (FSDP2) shards into full tensors; ``False`` keeps local shards.
        """
        avg = self.average(name)
        out = {}
        for key, t in self.model.state_dict().items():
            a = avg.get(key)
            if a is not None and hasattr(t, "placements"):
                a = type(t).from_local(
                    a.to(t.device), t.device_mesh, t.placements, shape=t.shape, stride=t.stride()
                )
            value = a if a is not None else t.detach()
            if full and hasattr(value, "full_tensor"):
                value = value.full_tensor()
            out[key] = value.clone()
        return out

    @contextlib.contextmanager
    def swap_into(self, model: nn.Module | None = None, name: str | None = None) -> Iterator[nn.Module]:
        """Context manager: the model holds the average inside, its own weights again afterwards.

        Parameters (and averaged buffers) are overwritten in place, so wrappers and compiled graphs
        that hold the same tensors see the average; all buffers are restored on exit too, so BN
        recalibration inside (``update_bn``) leaves no trace. Restores even when the body raises.

        Args:
            model: the model to swap into (default: the one averaged), any wrapper.
            name: which average (required when several are held).

        Yields:
            The unwrapped model.
        """
        n = self._resolve(name)
        m = unwrap_model(model) if model is not None else self.model
        live = self._live(m)
        values = self.rules[n].value(self._states[n])
        bufs = [_local(b) for b in m.buffers()]
        with torch.no_grad():
            backup = [t.clone() for t in live]
            buf_backup = [b.clone() for b in bufs]
            try:
                for t, v in zip(live, values):
                    t.copy_(v)
                yield m
            finally:
                for t, b in zip(live, backup):
                    t.copy_(b)
                for t, b in zip(bufs, buf_backup):
                    t.copy_(b)

    # ---- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed for an exact resume: tensors, numbers, strings, lists and dicts only."""
        out: dict[str, Any] = {"format": _FORMAT, "step": self.step, "active": self.active, "averages": {}}
        if not self.active:
            return out
        names = self._tensor_names
        for n, st in self._states.items():
            entry: dict[str, Any] = {"rule": n, "every_steps": self.every_steps[n], "step": st.step}
            if isinstance(st, LerpState):
                # Rows of the fused stack share storage; clone so savers (safetensors) accept them.
                clone = n in self._fused
                entry.update(count=st.count, decay_product=st.decay_product)
                entry["average"] = {k: (t.clone() if clone else t) for k, t in zip(names, st.average)}
                if st.compensation is not None:
                    entry["compensation"] = dict(zip(names, st.compensation))
            else:
                entry["slot_steps"] = list(st.slot_steps)
                entry["slots"] = [dict(zip(names, slot)) for slot in st.slots]
            out["averages"][n] = entry
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()``; the rules, intervals and model architecture must match."""
        if state.get("format") != _FORMAT:
            raise ValueError(
                f"not an AveragedWeights state (format {state.get('format')!r}, expected {_FORMAT!r})"
            )
        self.step = int(state["step"])
        if not self.active:
            return
        saved = state["averages"]
        if set(saved) != set(self.rules):
            raise ValueError(
                f"saved averages {sorted(saved)} differ from this container's {sorted(self.rules)}"
            )
        for n, entry in saved.items():
            if int(entry["every_steps"]) != self.every_steps[n]:
                raise ValueError(
                    f"{n}: saved with every_steps={entry['every_steps']}, now {self.every_steps[n]}"
                )
            st = self._states[n]
            if isinstance(st, LerpState):
                _copy_named(st.average, entry["average"], self._tensor_names, n)
                if st.compensation is not None:
                    _copy_named(st.compensation, entry["compensation"], self._tensor_names, n)
                self._states[n] = st._replace(
                    step=int(entry["step"]),
                    count=int(entry["count"]),
                    decay_product=float(entry["decay_product"]),
                )
            else:
                if len(entry["slots"]) != len(st.slots):
                    raise ValueError(
                        f"{n}: saved ring has {len(entry['slots'])} slots, this one {len(st.slots)}"
                    )
                for dst, src in zip(st.slots, entry["slots"]):
                    _copy_named(dst, src, self._tensor_names, n)
                self._states[n] = st._replace(
                    step=int(entry["step"]), slot_steps=[int(s) for s in entry["slot_steps"]]
                )

    @torch.no_grad()
    def broadcast_(self, src: int = 0) -> None:
        """Make every rank hold rank ``src``'s averages (e.g. after loading a checkpoint on one rank)."""
        if not self.active:
            return
        for st in self._states.values():
            tensors = st.average + (st.compensation or []) if isinstance(st, LerpState) else sum(st.slots, [])
            for t in tensors:
                torch.distributed.broadcast(t, src)


def _copy_named(dst: list[Tensor], src: dict[str, Tensor], names: list[str], rule: str) -> None:
    missing = [k for k in names if k not in src]
    if missing:
        raise ValueError(f"{rule}: saved state lacks {missing[:3]} (different model?)")
    for t, k in zip(dst, names):
        if src[k].shape != t.shape:
            raise ValueError(
                f"{rule}: {k} has shape {tuple(src[k].shape)} in the state, {tuple(t.shape)} here"
            )
        t.copy_(src[k])
