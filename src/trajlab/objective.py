"""The objective a probe measures: one loss hook ``loss_fn(model, batch) -> scalar``, any batch shape.

A *loss hook* gets the model and one batch and returns the scalar loss to probe, so one interface covers
supervised pairs, Hugging Face style dicts and anything else a model consumes::

    def loss_fn(model, batch):                       # batch = {"input_ids": ..., "labels": ...}
        return model(**batch).loss

    def loss_fn(model, batch):                       # batch = (x, y)
        return F.cross_entropy(model(batch[0]), batch[1])

A batch is a tensor, a tuple or list, or a mapping (nested freely; non-tensor leaves are passed through).
Its size, used to weight batches when losses are accumulated over a data set, is the leading dimension of
its first tensor leaf (:func:`batch_size`). The hook must return the *mean* loss over the batch.

Criteria are accepted as a shorthand. :func:`as_loss_hook` wraps ``criterion(outputs, targets)`` into
:func:`supervised` when it is unambiguous: an ``nn.modules.loss._Loss`` instance (``nn.CrossEntropyLoss()``)
or a function of ``torch.nn.functional`` (``F.cross_entropy``), optionally under ``functools.partial``.
That shorthand is supported, not deprecated, so no warning is raised. Any other callable is taken to be a
hook: wrap your own two-argument criterion explicitly with ``supervised(my_criterion)``.

This module depends on torch and the standard library only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

Batch = Tensor | Sequence[Any] | Mapping[str, Any]
LossHook = Callable[[nn.Module, Any], Tensor]
Criterion = Callable[[Any, Any], Tensor]

_HOOK_HINT = (
    "loss_fn is called as loss_fn(model, batch) -> scalar tensor; wrap a criterion(outputs, targets) "
    "with trajlab.objective.supervised(criterion)"
)


class SupervisedLoss:
    """The loss hook ``hook(model, (x, y)) = criterion(model(x), y)``; build it with :func:`supervised`."""

    def __init__(self, criterion: Criterion) -> None:
        self.criterion = criterion

    def check_batch(self, batch: object, what: str = "batch") -> None:
        """Raise a one-line TypeError unless ``batch`` is an ``(inputs, targets)`` pair."""
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return
        got = f"a dict with keys {list(batch)[:5]}" if isinstance(batch, Mapping) else _describe(batch)
        raise TypeError(
            f"{what} must be an (inputs, targets) pair for the criterion {_name(self.criterion)}, got {got}; "
            "for other batches pass a hook loss_fn(model, batch), e.g. lambda model, b: model(**b).loss"
        )

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        self.check_batch(batch)
        inputs, targets = batch
        return self.criterion(model(inputs), targets)

    def __repr__(self) -> str:
        return f"supervised({_name(self.criterion)})"


def supervised(criterion: Criterion) -> SupervisedLoss:
    """Turn ``criterion(outputs, targets)`` into a loss hook for ``(inputs, targets)`` batches.

    ``hook(model, (x, y)) = criterion(model(x), y)``; any other batch shape gets a one-line TypeError.

    Args:
        criterion: e.g. ``F.cross_entropy`` or ``nn.MSELoss()``; must return the mean loss of the batch.

    Returns:
        A :class:`SupervisedLoss` hook.

    Raises:
        TypeError: when ``criterion`` is not callable.
    """
    if not callable(criterion):
        raise TypeError(
            f"supervised() needs a callable criterion(outputs, targets), got {_describe(criterion)}"
        )
    return SupervisedLoss(criterion)


def is_criterion(loss_fn: object) -> bool:
    """True for unambiguous criteria: ``nn`` loss modules and ``torch.nn.functional`` functions."""
    while isinstance(loss_fn, functools.partial):
        loss_fn = loss_fn.func
    if isinstance(loss_fn, nn.modules.loss._Loss):
        return True
    return callable(loss_fn) and getattr(loss_fn, "__module__", None) == "torch.nn.functional"


def as_loss_hook(loss_fn: LossHook | Criterion) -> LossHook:
    """Normalise what a user passes as ``loss_fn`` into a loss hook (see the module docstring).

    Args:
        loss_fn: a hook ``loss_fn(model, batch)``, or a criterion as described in the module docstring.

    Returns:
        The hook (``supervised(loss_fn)`` for a criterion; ``loss_fn`` itself otherwise).

    Raises:
        TypeError: when ``loss_fn`` is not callable.
    """
    if isinstance(loss_fn, SupervisedLoss):
        return loss_fn
    if is_criterion(loss_fn):
        return supervised(loss_fn)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got {_describe(loss_fn)}")
    return loss_fn


def check_loss(value: object) -> Tensor:
    """The hook's result as a 0-d floating tensor; a one-line TypeError saying what was expected otherwise."""
    if not isinstance(value, Tensor):
        extra = " (for a Hugging Face model return model(**batch).loss)" if hasattr(value, "loss") else ""
        raise TypeError(f"loss_fn(model, batch) must return a scalar tensor, got {_describe(value)}{extra}")
    if value.numel() != 1 or not value.is_floating_point():
        raise TypeError(
            "loss_fn(model, batch) must return a scalar floating-point tensor (the mean loss), got "
            f"{value.dtype} of shape {tuple(value.shape)}; reduce it, e.g. with .mean()"
        )
    return value.reshape(())


def check_batch(batch: object, what: str = "batch", loss_fn: object = None) -> Batch:
    """Check that ``batch`` is a tensor, sequence or mapping holding at least one tensor.

    Args:
        batch: the batch to check.
        what: its name in error messages (e.g. ``"eval_batches['heldout']"``).
        loss_fn: when it is a :func:`supervised` hook, the batch must also be an ``(inputs, targets)`` pair.

    Returns:
        ``batch`` unchanged.

    Raises:
        TypeError: with a one-line message saying what was expected.
    """
    if not isinstance(batch, (Tensor, tuple, list, Mapping)):
        raise TypeError(f"{what} must be a tensor, a tuple/list or a dict of tensors, got {_describe(batch)}")
    if next(tensor_leaves(batch), None) is None:
        raise TypeError(f"{what} holds no tensor (got {_describe(batch)}); a batch needs at least one")
    if isinstance(loss_fn, SupervisedLoss):
        loss_fn.check_batch(batch, what)
    return batch


def tensor_leaves(batch: object) -> Iterator[Tensor]:
    """The tensors of a (nested) batch in order: sequence order, then mapping insertion order."""
    if isinstance(batch, Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for v in batch.values():
            yield from tensor_leaves(v)
    elif isinstance(batch, (tuple, list)):
        for v in batch:
            yield from tensor_leaves(v)


def batch_size(batch: Batch) -> int:
    """Leading dimension of the first tensor leaf (the number of examples, to weight batch losses).

    Raises:
        TypeError: when the batch has no tensor, or its first tensor is 0-d.
    """
    first = next(tensor_leaves(batch), None)
    if first is None:
        raise TypeError(f"cannot size a batch without tensors (got {_describe(batch)})")
    if first.dim() == 0:
        raise TypeError("the first tensor of a batch must have a leading batch dimension, got a 0-d tensor")
    return int(first.shape[0])


def batch_to(batch: Any, device: torch.device | str | None, non_blocking: bool = False) -> Any:
    """Move every tensor of a (nested) batch to ``device``; containers are rebuilt, other leaves kept.

    Tuples (named tuples included) and lists keep their type; mappings become plain dicts (which is what
    ``model(**batch)`` needs). ``device=None`` returns the batch unchanged.
    """
    if device is None:
        return batch
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: batch_to(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple):
        items = [batch_to(v, device, non_blocking) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else tuple(items)
    if isinstance(batch, list):
        return [batch_to(v, device, non_blocking) for v in batch]
    return batch


def hook_hint() -> str:
    """The sentence added to errors raised inside a hook that may really be a criterion."""
    return _HOOK_HINT


def _name(fn: object) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _describe(obj: object) -> str:
    if isinstance(obj, Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return type(obj).__name__
