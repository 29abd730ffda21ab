"""``recipe.json``: how to rebuild a run recorded from a user's own training loop.

A trajlab-engine run is described by its ``config.json`` (a :class:`~trajlab.config.RunConfig`); a run
recorded by :func:`trajlab.record` from any loop (plain PyTorch, Lightning, Hugging Face) is described by
its ``recipe.json``::

    {"format": "trajlab.recipe/1",
     "model_factory": "pkg.models:make_model" | "/abs/train.py:make_model" | null,
     "data_factory": ..., "loss_fn": ..., "collate_fn": ... | null,
     "loader": {"batch_size": 64, "drop_last": false, "sampler": "RandomSampler", "num_workers": 0},
     "seeded_augmentation": false, "seed": 0, "world_size": 1,
     "optimizer": {"class": "torch.optim.sgd.SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0005},
     "snapshots": {...}, "averages": [{"name": "ema_0.99", "every_steps": 1, "closed_form": {...}}],
     "checkpoint_every_steps": 100, "framework": "plain"}

``data_factory()`` returns the training dataset, or ``(train, eval)``, or ``{"train": ..., "eval": ...}``;
``model_factory()`` returns a fresh model; ``loss_fn(model, batch)`` is the loss hook.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import optim

from trajlab.files import ChecksumError, read_verified
from trajlab.trajectory.errors import DamageError

RECIPE_FILE = "recipe.json"
FORMAT = "trajlab.recipe/1"
# Optimizer hyper-parameters worth recording (what probes and theory read: lr, momentum, weight decay).
_OPTIMIZER_KEYS = ("lr", "momentum", "dampening", "nesterov", "weight_decay", "betas", "eps")


@dataclass(frozen=True)
class Recipe:
    """The parsed ``recipe.json`` (see the module docstring)."""

    model_factory: str | None = None
    data_factory: str | None = None
    loss_fn: str | None = None
    collate_fn: str | None = None
    loader: dict[str, Any] = field(default_factory=dict)
    seeded_augmentation: bool = False
    seed: int = 0
    world_size: int = 1
    optimizer: dict[str, Any] = field(default_factory=dict)
    snapshots: dict[str, Any] = field(default_factory=dict)
    averages: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_every_steps: int = 0
    framework: str = "plain"

    @property
    def batch_size(self) -> int | None:
        """The global batch size (per-process batch size x world size), when the loader had one."""
        b = self.loader.get("batch_size")
        return None if b is None else int(b) * max(int(self.world_size), 1)

    @property
    def momentum(self) -> float:
        """Heavy-ball momentum of an SGD optimizer (0 otherwise)."""
        return float(self.optimizer.get("momentum") or 0.0) if self.is_sgd else 0.0

    @property
    def is_sgd(self) -> bool:
        return str(self.optimizer.get("class", "")).rsplit(".", 1)[-1] == "SGD"

    @property
    def update_weight_decay(self) -> float:
        """Coupled weight decay inside SGD's update direction (0 for other optimizers)."""
        return float(self.optimizer.get("weight_decay") or 0.0) if self.is_sgd else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    def compatible_with(self, other: Recipe) -> list[str]:
        """The fields that differ in ways a resume cannot accept (empty list: compatible)."""
        keys = ("loader", "seeded_augmentation", "seed", "world_size", "snapshots", "framework")
        return [k for k in keys if getattr(self, k) != getattr(other, k)]


def optimizer_facts(optimizer: optim.Optimizer) -> dict[str, Any]:
    """Class and the first param group's hyper-parameters (JSON-safe), for the recipe."""
    cls = type(optimizer)
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    out: dict[str, Any] = {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "param_groups": len(optimizer.param_groups),
    }
    for key in _OPTIMIZER_KEYS:
        if key in group:
            value = group[key]
            value = list(value) if isinstance(value, tuple) else value
            if hasattr(value, "item"):
                value = value.item()
            out[key] = value
    return out


def read_recipe(run_dir: str | Path, *, verify: bool = True) -> Recipe:
    """The run's recipe (checked against ``checksums.json`` unless ``verify=False``); ``ValueError`` naming
    the file when it is damaged or not a recipe of this format."""
    path = Path(run_dir) / RECIPE_FILE
    try:
        raw = json.loads(read_verified(run_dir, RECIPE_FILE, verify=verify).decode("utf-8"))
    except ChecksumError as e:
        raise DamageError(str(e)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamageError(
            f"{path}: unreadable recipe ({type(e).__name__}: {e}); run `trajlab runs verify`"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a trajlab recipe (format {raw.get('format') if isinstance(raw, dict) else '?'})"
        )
    known = set(Recipe.__dataclass_fields__)
    return Recipe(**{k: v for k, v in raw.items() if k in known})


def json_number(value: Any) -> Any:
    """``value`` with non-finite floats as strings (strict JSON has no NaN)."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value
