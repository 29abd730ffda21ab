"""Typed, frozen run configuration; presets (TOML data files) and ``--set key=value`` overrides.

A run is fully described by one :class:`RunConfig`. It is built from a preset (a TOML file under
``trajlab/experiments/presets/``), optionally a user config file (TOML or JSON with the same layout),
then ``--set section.key=value`` overrides, in that order. Unknown sections or keys and values of the
wrong type are errors (:class:`ConfigError`) that name the key and say what is expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message says what to change."""


@dataclass(frozen=True)
class DataConfig:
    """Which data, how much of it, and how it is augmented.

    ``train_subset``/``test_subset`` of 0 mean the whole split; a subset is class-balanced and fixed by
    ``subset_seed``. ``pad_to`` zero-pads smaller images (28x28 -> 32x32 for the CIFAR ResNets);
    0 = no padding.
    """

    name: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    pad_to: int | None = 32
    image_size: int | None = None
    train_subset: int = 0
    test_subset: int = 0
    subset_seed: int = 0
    augment: bool = True
    crop_padding: int = 4
    flip: bool = True
    # synthetic data only: n, num_classes, channels, size, seed, noise (see trajlab.data.load_dataset)
    synthetic: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.train_subset >= 0, "data.train_subset must be >= 0 (0 = the whole split)")
        _check(self.test_subset >= 0, "data.test_subset must be >= 0 (0 = the whole split)")
        _check(self.crop_padding >= 0, "data.crop_padding must be >= 0")
        _check(self.pad_to is None or self.pad_to >= 0, "data.pad_to must be a size >= 0 (0 = no padding)")
        if self.data_dir is not None:
            _check(
                len(self.data_dir) <= 4096 and all(len(p.encode()) <= 255 for p in Path(self.data_dir).parts),
                f"data.data_dir is not a usable path ({len(self.data_dir)} characters; components of at most "
                "255 bytes, 4096 in all)",
            )


@dataclass(frozen=True)
class ModelConfig:
    """Model name in the registry (``resnet20``, ``resnet18``, ``torchvision:resnet50`` ...)."""

    name: str = "resnet20"
    width: int | None = None
    stem: str | None = None
    channels_last: bool = True

    def __post_init__(self) -> None:
        _check(self.width is None or self.width > 0, "model.width must be a positive integer or null")
        _check(self.stem in (None, "cifar", "imagenet"), "model.stem must be 'cifar', 'imagenet' or null")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer. ``lr`` is the peak learning rate per step (not scaled by batch size)."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        _check(self.name in ("sgd", "adamw"), f"optim.name must be 'sgd' or 'adamw', got {self.name!r}")
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _check(not (self.nesterov and self.momentum == 0), "optim.nesterov needs optim.momentum > 0")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas: two values in [0, 1)"
        )


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule as a pure ``step -> lr`` function (see :mod:`trajlab.train.schedules`).

    names: ``constant``, ``step`` (x ``gamma`` at each of ``milestones_steps``), ``cosine`` (to
    ``final_lr_fraction * lr``), ``wsd`` (warmup-stable-decay: constant, then a ``decay_steps``-long
    cooldown of shape ``decay_shape`` to ``final_lr_fraction * lr``), ``inverse_time`` (1/t:
    ``lr / (1 + (step - start_step) / time_scale_steps)`` after ``start_step``). ``warmup_steps`` of
    linear warmup applies to all of them.
    """

    name: str = "constant"
    warmup_steps: int = 0
    milestones_steps: tuple[int, ...] = ()
    gamma: float = 0.1
    final_lr_fraction: float = 0.0
    decay_steps: int = 0
    decay_shape: str = "linear"
    start_step: int = 0
    time_scale_steps: float = 1.0

    def __post_init__(self) -> None:
        names = ("constant", "step", "cosine", "wsd", "inverse_time")
        _check(self.name in names, f"schedule.name must be one of {names}, got {self.name!r}")
        _check(self.warmup_steps >= 0, "schedule.warmup_steps must be >= 0")
        _check(
            self.decay_shape in ("linear", "cosine", "1-sqrt"), "schedule.decay_shape: linear|cosine|1-sqrt"
        )
        _check(self.final_lr_fraction >= 0, "schedule.final_lr_fraction must be >= 0")
        _check(self.time_scale_steps > 0, "schedule.time_scale_steps must be > 0")
        _check(self.gamma > 0, "schedule.gamma must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    """Length, batch, seed, evaluation cadence and device of a run.

    ``steps`` > 0 fixes the number of optimizer steps; otherwise ``epochs`` (may be fractional) sets it.
    ``eval_every_steps`` = 0 evaluates once per epoch (and always at the end). ``tensorboard``: mirror the
    metrics (training loss, lr, test metrics of the last iterate and of every average) as TensorBoard
    scalars in ``RUN/tensorboard`` when the ``tensorboard`` package is installed (false: never).
    """

    seed: int = 0
    batch_size: int = 128
    epochs: float = 1.0
    steps: int = 0
    eval_every_steps: int = 0
    log_every_steps: int = 20
    eval_batch_size: int = 1000
    device: str = "auto"
    bf16_autocast: bool = True
    num_threads: int = 0
    progress: bool = True
    tensorboard: bool = True
    sync_bn: bool = False

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, f"train.batch_size must be > 0, got {self.batch_size}")
        _check(self.epochs > 0 or self.steps > 0, "set train.steps > 0 or train.epochs > 0")
        _check(self.steps >= 0, "train.steps must be >= 0")
        _check(self.eval_every_steps >= 0, "train.eval_every_steps must be >= 0")
        _check(self.log_every_steps > 0, "train.log_every_steps must be > 0")
        _check(self.eval_batch_size > 0, "train.eval_batch_size must be > 0")
        _check(self.num_threads >= 0, "train.num_threads must be >= 0 (0 = torch's default)")


@dataclass(frozen=True)
class RecordConfig:
    """Trajectory recording (snapshots, batch log) and training checkpoints for resume.

    ``snapshots`` is a schedule given as data, e.g. ``{every_steps = 100}``, ``{at_steps = [0, 50]}``,
    ``{log_per_decade = 10}``, ``{windows = [[5000, 200, 1]]}`` (start, length, every); see
    :class:`trajlab.trajectory.SnapshotSchedule`.
    """

    enabled: bool = False
    snapshots: dict[str, Any] = field(default_factory=lambda: {"every_steps": 100})
    dtype: str = "float32"
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    queue_size: int = 4

    def __post_init__(self) -> None:
        _check(self.dtype in ("float32", "bfloat16"), "record.dtype must be 'float32' or 'bfloat16'")
        _check(self.checkpoint_every_steps >= 0, "record.checkpoint_every_steps must be >= 0")
        _check(self.keep_checkpoints >= 1, "record.keep_checkpoints must be >= 1")
        _check(self.queue_size >= 1, "record.queue_size must be >= 1")


@dataclass(frozen=True)
class AveragingConfig:
    """Online iterate averages kept during training and evaluated next to the live model.

    Each list adds one average per value: ``ema_decays = [0.999]``, ``ema_half_life_steps = [500]``,
    ``swa_start_steps = [1000]``, ``two_point_gaps = [500, 2000]``. ``eval_bn`` is ``recalibrate``
    (recompute BN statistics on ``bn_batches`` training batches, the default) or ``running``.
    """

    ema_decays: tuple[float, ...] = ()
    ema_half_life_steps: tuple[float, ...] = ()
    swa_start_steps: tuple[int, ...] = ()
    two_point_gaps: tuple[int, ...] = ()
    every_steps: int = 1
    eval_bn: str = "recalibrate"
    bn_batches: int = 20
    device: str | None = None

    def __post_init__(self) -> None:
        _check(self.every_steps >= 1, "averaging.every_steps must be >= 1")
        _check(self.eval_bn in ("recalibrate", "running"), "averaging.eval_bn: 'recalibrate' or 'running'")
        _check(self.bn_batches >= 1, "averaging.bn_batches must be >= 1")
        _check(all(0 <= d < 1 for d in self.ema_decays), "averaging.ema_decays must lie in [0, 1)")
        _check(all(g >= 1 for g in self.two_point_gaps), "averaging.two_point_gaps must be >= 1")
        _check(all(h > 0 for h in self.ema_half_life_steps), "averaging.ema_half_life_steps must be > 0")
        _check(all(s >= 0 for s in self.swa_start_steps), "averaging.swa_start_steps must be >= 0")

    @property
    def enabled(self) -> bool:
        return bool(
            self.ema_decays or self.ema_half_life_steps or self.swa_start_steps or self.two_point_gaps
        )


@dataclass(frozen=True)
class ProbeConfig:
    """Online line probes: every ``every_steps`` steps (0 = off), on the batch just used and on
    ``heldout_batches`` never-trained batches, with BN mode ``bn`` (``batch`` or ``running``)."""

    every_steps: int = 0
    heldout_batches: int = 1
    bn: str = "batch"

    def __post_init__(self) -> None:
        _check(self.every_steps >= 0, "probes.every_steps must be >= 0 (0 = off)")
        _check(self.bn in ("batch", "running"), "probes.bn must be 'batch' or 'running'")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    averaging: AveragingConfig = field(default_factory=AveragingConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    preset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> RunConfig:
        return _build(cls, raw, prefix="", source=source)


@dataclass(frozen=True)
class HostSettings:
    """What the machine supplies, as opposed to what a run is: never in ``config.json``, never in a cache key.

    The library reads no environment variable and sets no thread count; the command line does, once
    (``trajlab.cli``), and passes one of these down. A library user passes one only to change a default.

    Attributes:
        data_dirs: extra directories searched for datasets when ``data.data_dir`` is not set (the CLI:
            ``$TRAJLAB_DATA``).
        num_threads: torch threads for this process; 0 = a run's ``train.num_threads``, else torch's default
            (the CLI: ``$TRAJLAB_NUM_THREADS``).
        set_threads: how to set the thread count (the CLI passes torch's thread setter); ``None``: the
            thread count is left alone, whatever ``train.num_threads`` says.
        cpu_kernel: build and use the fused CPU averaging kernel when a C compiler is there (the CLI:
            ``$TRAJLAB_CPU_KERNEL=0`` turns it off).
        kernel_cache_root: the cache root the kernel is compiled under (``<root>/trajlab/kernels``, default
            ``~/.cache``; the CLI:
            ``$TRAJLAB_CACHE`` or ``$XDG_CACHE_HOME``).
        compiler: the C compiler (default: ``cc``, ``gcc`` or ``clang`` on PATH; the CLI: ``$CC``).
        distributed_env: torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (the CLI copies them from the
            environment); empty: a single process, or the already initialised default process group.
    """

    data_dirs: tuple[str, ...] = ()
    num_threads: int = 0
    set_threads: Any = None
    cpu_kernel: bool = True
    kernel_cache_root: str | None = None
    compiler: str | None = None
    distributed_env: Mapping[str, str] = field(default_factory=dict)

    def apply_threads(self, configured: int = 0) -> None:
        """Set the thread count: ``num_threads`` if set, else ``configured`` (a run's ``train.num_threads``)
        if > 0; nothing without ``set_threads``."""
        n = self.num_threads or configured
        if n > 0 and self.set_threads is not None:
            self.set_threads(n)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# ----------------------------------------------------------------------------------------------------
# building dataclasses from nested dicts with type checks


def _build(cls: type, raw: Any, *, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a table of keys")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{source}: unknown key {prefix}{key}{hint}")
        kwargs[key] = _coerce(hints[key], value, key=prefix + key, source=source)
        _check_finite(kwargs[key], prefix + key, source)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _check_finite(value: Any, key: str, source: str) -> None:
    """inf and nan are never a valid setting (an infinite lr or epoch count would only fail later)."""
    values = value if isinstance(value, (tuple, list)) else [value]
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{source}: {key} must be a finite number, got {v}")


def _coerce(hint: Any, value: Any, *, key: str, source: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=key + ".", source=source)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key=key, source=source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{source}: {key} has the wrong type")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]  # a scalar where a list is expected: a list of one
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key=key, source=source) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{source}: {key} expects {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, key=key, source=source) for a, v in zip(args, value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} expects a table, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key} expects true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{source}: {key} expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{source}: {key} expects a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source}: {key} expects a string, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------
# presets, files and overrides


def preset_names() -> list[str]:
    root = resources.files("trajlab.experiments") / "presets"
    return sorted(p.name[: -len(".toml")] for p in root.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    if name not in preset_names():
        close = difflib.get_close_matches(name, preset_names(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"unknown preset {name!r}{hint}; available: {', '.join(preset_names())} "
            "(`trajlab presets` lists them)"
        )
    return (resources.files("trajlab.experiments") / "presets" / f"{name}.toml").read_text()


def preset_description(name: str) -> str:
    raw = tomllib.loads(preset_text(name))
    return str(raw.get("description", ""))


def load_preset_dict(name: str) -> dict[str, Any]:
    raw = tomllib.loads(preset_text(name))
    raw.pop("description", None)
    raw["preset"] = name
    return raw


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(
            f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}"
        ) from None
    raw.pop("description", None)
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value``. The value is read as TOML/JSON (numbers, true/false, lists,
    strings in quotes); anything that does not parse is taken as a plain string."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (e.g. optim.lr=0.05), got {text!r}")
    key, _, value_text = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    value_text = value_text.strip()
    if value_text in ("null", "none", "None"):
        return key.split("."), None
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            value = json.loads(value_text)
        except json.JSONDecodeError:
            value = value_text
    return key.split("."), value


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (tables merge, everything else replaces)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("synthetic", "snapshots"):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunConfig:
    """Preset, then config file, then ``--set`` overrides -> a validated :class:`RunConfig`."""
    raw: dict[str, Any] = load_preset_dict(preset) if preset else {}
    if config_file:
        raw = merge(raw, load_config_file(config_file))
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {part} is not a section")
        node[path[-1]] = value
    return RunConfig.from_dict(raw, source="config")
