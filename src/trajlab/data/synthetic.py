"""A seeded, learnable synthetic image classification task for fast tests.

Each class has a smooth random template (a coarse random grid upsampled bilinearly, so it survives
random crops); a sample is its class template plus Gaussian pixel noise, quantised to uint8.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trajlab.data.errors import DataError


@dataclass(frozen=True)
class SyntheticSpec:
    """Configuration of the synthetic task (the keys of ``load_dataset(..., synthetic={...})``).

    Attributes:
        n: Train samples.
        n_test: Test samples.
        num_classes: Number of classes (labels are balanced: ``i % num_classes`` before shuffling).
        channels: Image channels.
        size: Image side length in pixels.
        seed: Seed of the templates and of the samples.
        noise: Std of the pixel noise in units of full scale (templates lie in [0.2, 0.8]).
        grid: Side of the coarse random grid each template is upsampled from (smaller = smoother).
    """

    n: int = 1024
    n_test: int = 256
    num_classes: int = 10
    channels: int = 1
    size: int = 32
    seed: int = 0
    noise: float = 0.25
    grid: int = 4

    @classmethod
    def from_dict(cls, options: dict | None) -> SyntheticSpec:
        """Builds a spec from a dict; unknown keys are errors."""
        options = dict(options or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise DataError(f"unknown synthetic option(s) {unknown}; known: {sorted(known)}")
        spec = cls(**options)
        ints = (spec.n, spec.n_test, spec.num_classes, spec.channels, spec.size, spec.grid)
        if min(ints) < 1 or spec.noise < 0:
            raise DataError(f"synthetic options must be positive (noise >= 0), got {options}")
        return spec


def make_synthetic(spec: SyntheticSpec, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Generates one split; train and test share the templates but not the noise.

    Returns:
        ``(images, labels)``: uint8 ``[n, channels, size, size]`` and int64 ``[n]``.
    """
    g = torch.Generator().manual_seed(spec.seed)
    coarse = torch.rand(spec.num_classes, spec.channels, spec.grid, spec.grid, generator=g)
    templates = 0.2 + 0.6 * F.interpolate(
        coarse, size=(spec.size, spec.size), mode="bilinear", align_corners=False
    )
    n = spec.n if split == "train" else spec.n_test
    # Distinct streams per split: (seed, 1) for train, (seed, 2) for test.
    g = torch.Generator().manual_seed(spec.seed * 1_000_003 + (1 if split == "train" else 2))
    labels = (torch.arange(n) % spec.num_classes)[torch.randperm(n, generator=g)]
    x = templates[labels] + spec.noise * torch.randn(n, spec.channels, spec.size, spec.size, generator=g)
    images = (x.clamp_(0.0, 1.0) * 255.0).round_().to(torch.uint8)
    return images.contiguous(), labels
