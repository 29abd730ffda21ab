"""Where a recorded run's model, data and loss come from: its ``config.json`` (a trajlab-engine run) or its
``recipe.json`` (a run recorded from any loop by :func:`trajlab.record`).

:class:`~trajlab.runs.recorded.RecordedRun` asks its source for everything that depends on the run's kind
(the data, a fresh model, the batch of logged indices, the held-out and recalibration batches, the loss
hook, the test-set evaluation, the optimizer's lr and momentum); everything else (files, weights,
snapshots, "recalibrate BN, then evaluate") is the same for both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trajlab.config import HostSettings
from trajlab.objective import as_loss_hook, batch_size, batch_to, supervised
from trajlab.runs import build, references
from trajlab.runs.recipe import Recipe
from trajlab.runs.runner import RunDirError
from trajlab.train.evaluate import evaluate_model

# Seeds of the user-run samplers (held-out, recalibration), as for engine runs: fixed, independent of the
# training order.
_HELDOUT_SEED, _RECALIBRATION_SEED = 104_729, 7_919


class EngineSource:
    """A run trained by trajlab's engine: everything is rebuilt from its :class:`RunConfig`."""

    kind = "engine"

    def __init__(self, config: Any, host: HostSettings, device: torch.device) -> None:
        self.config, self.host, self.device = config, host, device
        self.loss_fn = supervised(torch.nn.functional.cross_entropy)
        self._train: Any = None
        self._test: Any = None
        self._batches: build.DatasetBatches | None = None

    def description(self) -> dict[str, Any]:
        return self.config.to_dict()

    @property
    def seed(self) -> int:
        return int(self.config.train.seed)

    @property
    def num_threads(self) -> int:
        return int(self.config.train.num_threads)

    @property
    def momentum(self) -> float:
        return float(self.config.optim.momentum) if self.config.optim.name == "sgd" else 0.0

    @property
    def update_weight_decay(self) -> float:
        return float(self.config.optim.weight_decay) if self.config.optim.name == "sgd" else 0.0

    def train_data(self) -> Any:
        if self._train is None:
            self._train = build.build_train_data(self.config, self.host.data_dirs)
        return self._train

    def test_data(self) -> Any:
        if self._test is None:
            self._test = build.build_test_data(self.config, self.host.data_dirs)
        return self._test

    def new_model(self) -> nn.Module:
        torch.manual_seed(0)
        model = build.build_model_for(self.config, self.train_data()).to(self.device)
        return model.to(memory_format=torch.channels_last) if self.config.model.channels_last else model

    def schedule(self) -> Callable[[int], float]:
        return build.build_schedule_for(
            self.config, build.total_steps_for(self.config, len(self.train_data()))
        )

    def _dataset_batches(self) -> build.DatasetBatches:
        if self._batches is None:
            self._batches = build.DatasetBatches(
                self.train_data(),
                self.config.data,
                batch_size=self.config.train.batch_size,
                seed=self.config.train.seed,
                device=self.device,
                channels_last=self.config.model.channels_last,
            )
        return self._batches

    def make_batch(self, indices: torch.Tensor, aug_seed: int) -> Any:
        return self._dataset_batches().make(indices, aug_seed if self.config.data.augment else None)

    def heldout_batches(self, count: int, seed: int) -> list[Any]:
        return build.heldout_batches(
            self.test_data(),
            self.config.data,
            batch_size=self.config.train.batch_size,
            count=count,
            seed=seed,
            device=self.device,
            channels_last=self.config.model.channels_last,
        )

    def recalibration_batches(self, count: int) -> Iterator[Any]:
        return self._dataset_batches().recalibration_batches(count)

    def test_batches(self) -> Iterator[Any]:
        from trajlab.data import iterate_eval

        return iterate_eval(
            self.test_data(),
            self.config.train.eval_batch_size,
            device=self.device,
            channels_last=self.config.model.channels_last,
        )

    def train_batches_in_order(self) -> Iterator[Any]:
        from trajlab.data import iterate_eval

        return iterate_eval(self.train_data(), self.config.train.eval_batch_size, device=self.device)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate_model(model, self.test_batches, device_type=self.device.type)


class LoopSource:
    """A run recorded from a user's loop: model, data, loss and collate come from factories (the recipe's
    references, or objects/references given when opening the run)."""

    kind = "loop"

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        device: torch.device,
        *,
        model: Any = None,
        data: Any = None,
        loss_fn: Any = None,
        collate_fn: Any = None,
    ) -> None:
        self.recipe, self.run_dir, self.device = recipe, run_dir, device
        self._model_factory = _factory(model, recipe.model_factory, "model", run_dir)
        self._data_source = data if data is not None else recipe.data_factory
        hook = loss_fn if loss_fn is not None else recipe.loss_fn
        if isinstance(hook, str):
            hook = references.load_reference(hook, what="loss_fn", base_dir=run_dir)
        self.loss_fn = as_loss_hook(hook) if hook is not None else None
        collate = collate_fn if collate_fn is not None else recipe.collate_fn
        if isinstance(collate, str):
            collate = references.load_reference(collate, what="collate_fn", base_dir=run_dir)
        self.collate = collate or torch.utils.data.default_collate
        self._splits: tuple[Any, Any] | None = None

    def description(self) -> dict[str, Any]:
        return self.recipe.to_dict()

    seed = property(lambda self: int(self.recipe.seed))
    num_threads = property(lambda self: 0)
    momentum = property(lambda self: self.recipe.momentum)
    update_weight_decay = property(lambda self: self.recipe.update_weight_decay)

    def require_loss(self) -> Any:
        if self.loss_fn is None:
            raise RunDirError(
                f"{self.run_dir} recorded no loss function; pass --loss module:function (CLI) or "
                "loss_fn= (RecordedRun)"
            )
        return self.loss_fn

    def _data(self) -> tuple[Any, Any]:
        if self._splits is None:
            self._splits = _splits(self._data_source, self.run_dir)
        return self._splits

    def train_data(self) -> Any:
        return self._data()[0]

    def test_data(self) -> Any:
        test = self._data()[1]
        if test is None:
            raise RunDirError(
                f"{self.run_dir}: the data factory returned no eval split; return (train, eval) or "
                '{"train": ..., "eval": ...} from it to evaluate or to get held-out batches'
            )
        return test

    def new_model(self) -> nn.Module:
        torch.manual_seed(0)
        model = self._model_factory()
        if not isinstance(model, nn.Module):
            raise RunDirError(f"the model factory returned {type(model).__name__}, not an nn.Module")
        return model.to(self.device)

    def make_batch(self, indices: torch.Tensor, aug_seed: int) -> Any:
        keys: list[Any] = [int(i) for i in indices]
        if self.recipe.seeded_augmentation:
            keys = [(i, aug_seed) for i in keys]
        return batch_to(self.collate([self.train_data()[k] for k in keys]), self.device)

    def _sampled(self, dataset: Any, seed: int, count: int) -> list[Any]:
        size = self.recipe.batch_size or 64
        available = len(dataset) // size
        if count > available:
            raise RunDirError(
                f"the eval set ({len(dataset)} items) holds only {available} batches of {size}; ask for fewer"
            )
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        return [
            batch_to(self.collate([dataset[int(i)] for i in order[k * size : (k + 1) * size]]), self.device)
            for k in range(count)
        ]

    def heldout_batches(self, count: int, seed: int) -> list[Any]:
        return self._sampled(self.test_data(), _HELDOUT_SEED + seed, count)

    def recalibration_batches(self, count: int) -> Iterator[Any]:
        train = self.train_data()
        size = self.recipe.batch_size or 64
        return iter(self._sampled(train, _RECALIBRATION_SEED + self.seed, min(count, len(train) // size)))

    def test_batches(self) -> Iterator[Any]:
        test, size = self.test_data(), self.recipe.batch_size or 64
        for start in range(0, len(test), size):
            yield batch_to(
                self.collate([test[i] for i in range(start, min(start + size, len(test)))]), self.device
            )

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate_with_hook(model, self.test_batches(), self.require_loss())


def evaluate_with_hook(model: nn.Module, batches: Iterator[Any], loss_fn: Any) -> dict[str, float]:
    """Mean loss (``loss_fn`` hook, weighted by batch size) and, where the batch says what the classes are,
    accuracy; eval mode, no gradients, the model's mode restored."""
    was_training = model.training
    model.eval()
    total = correct = counted = n = 0.0
    try:
        with torch.no_grad():
            for batch in batches:
                size = batch_size(batch)
                total += float(loss_fn(model, batch)) * size
                n += size
                hits = _hits(model, batch, loss_fn)
                if hits is not None:
                    correct, counted = correct + hits[0], counted + hits[1]
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluation got no batches (is the eval set empty?)")
    return {"loss": total / n, "acc": correct / counted if counted else math.nan}


def _hits(model: nn.Module, batch: Any, loss_fn: Any) -> tuple[float, float] | None:
    """(correct, counted) for a classification batch: ``(x, y)`` with integer labels y whose ``model(x)``
    gives one more dimension of logits, or a dict with ``labels`` whose model output has ``logits``
    (positions labelled -100 are not counted); ``None`` for anything else (accuracy is then n/a)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
        if batch[1].is_floating_point():
            return None
        logits, labels = model(batch[0]), batch[1]
    elif isinstance(batch, Mapping) and "labels" in batch:
        out = model(**batch)
        logits, labels = getattr(out, "logits", None), batch["labels"]
    else:
        return None
    if not isinstance(logits, torch.Tensor) or logits.dim() != labels.dim() + 1 or labels.is_floating_point():
        return None
    mask = labels != -100
    hits = (logits.argmax(-1) == labels) & mask
    return float(hits.sum()), float(mask.sum())


def _factory(given: Any, recorded: str | None, what: str, run_dir: Path) -> Callable[[], nn.Module]:
    if isinstance(given, nn.Module):
        state = {k: v.clone() for k, v in given.state_dict().items()}
        import copy

        def fresh() -> nn.Module:
            model = copy.deepcopy(given)
            model.load_state_dict(state)
            return model

        return fresh
    source = given if given is not None else recorded
    if source is None:
        raise RunDirError(
            f"{run_dir} recorded no {what} factory; pass --{what} module:function (CLI) or "
            f"{what}= (RecordedRun)"
        )
    return (
        references.load_reference(source, what=f"{what} factory", base_dir=run_dir)
        if isinstance(source, str)
        else source
    )


def _splits(source: Any, run_dir: Path) -> tuple[Any, Any]:
    """(train, eval) from a dataset, a (train, eval) pair, a {"train", "eval"} mapping, or a factory of
    one."""
    if source is None:
        raise ValueError(
            f"{run_dir} recorded no data factory; pass --data module:function (CLI) or data= (RecordedRun)"
        )
    if isinstance(source, str):
        source = references.load_reference(source, what="data factory", base_dir=run_dir)
    data = source() if callable(source) and not hasattr(source, "__getitem__") else source
    if isinstance(data, Mapping):
        if "train" not in data:
            raise RunDirError(f"the data factory returned a mapping without 'train' (keys {sorted(data)})")
        return data["train"], data.get("eval", data.get("test"))
    if isinstance(data, tuple) and len(data) == 2 and all(hasattr(d, "__getitem__") for d in data):
        return data
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return data, None
    raise TypeError(
        f"the data factory returned {type(data).__name__}; expected a map-style dataset or (train, eval)"
    )
