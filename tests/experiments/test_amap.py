"""Claim A's map: the noisy quadratic model's one-step fraction (closed form against an exact quadratic),
the noise-to-signal estimator (against a known mean and spread), and the driver end to end (tiny)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from trajlab.cli import main
from trajlab.experiments.claims.amap import (
    cauchy_fractions,
    noise_to_signal,
    predicted_fraction,
    predicted_from_noise,
)
from trajlab.probes import line_profile


def test_predicted_fraction_is_exact_on_a_quadratic_batch_loss() -> None:
    """Least squares is exactly quadratic: the measured f(lr*)/f(0) equals 1 - |g|^2 / (2 h f(0))."""
    torch.manual_seed(0)
    model = nn.Linear(6, 1, bias=False)
    x, y = torch.randn(32, 6), torch.randn(32, 1)

    def mse(m: nn.Module, batch: tuple) -> torch.Tensor:
        return ((m(batch[0]) - batch[1]) ** 2).mean()

    p = line_profile(model, mse, (x, y), num_points=32, hvp=True)
    predicted = predicted_fraction(p.grad_norm**2, p.curvature_hvp, p.loss_at_zero)
    assert p.bracketed and p.one_step_fraction == pytest.approx(predicted, rel=1e-3, abs=1e-4)
    assert 0.0 < predicted < 1.0
    # With |G|^2 (1 + N/S) equal to |g|^2 the two predictions agree.
    assert predicted_from_noise(p.grad_norm**2 / 4, 3.0, p.curvature_hvp, p.loss_at_zero) == pytest.approx(
        predicted
    )
    assert math.isnan(predicted_fraction(1.0, 0.0, 1.0)) and math.isnan(predicted_fraction(1.0, 1.0, 0.0))


def test_noise_to_signal_of_known_gradients() -> None:
    """A linear model with loss mean(w . x) has gradient mean(x): batches drawn around a known mean give
    N/S = spread / |G|^2 (the estimator removes the 1/K bias of the sample mean)."""

    class Dot(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(50))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # cross_entropy of [s, 0] with label 1 has d/ds = softmax(s)_0 = 1/2 at s = 0: gradient = x/2.
            s = x @ self.w
            return torch.stack([s, torch.zeros_like(s)], dim=1)

    g = torch.Generator().manual_seed(1)
    mean = torch.ones(50)
    batches = [((mean + 2.0 * torch.randn(1, 50, generator=g)), torch.tensor([1])) for _ in range(400)]
    ns, signal, typical = noise_to_signal(Dot(), batches)
    # Each batch gradient is x/2: |G|^2 = 50/4, spread = 50 * 4 / 4 = 50, N/S = 4.
    assert signal == pytest.approx(50 / 4, rel=0.15) and ns == pytest.approx(4.0, rel=0.15)
    # Gaussian noise: |xi|^2 / sigma^2 is chi^2 with 50 degrees of freedom, median ~ 49.3.
    assert typical == pytest.approx(4.0 * 49.33 / 50, rel=0.15)


@pytest.mark.slow
def test_amap_tiny_end_to_end(tmp_path, capsys) -> None:
    assert main(["reproduce", "A-map", "--budget", "tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "measured  predicted" in capsys.readouterr().out
    doc = json.loads((tmp_path / "tiny" / "claim_A-map.json").read_text())
    assert set(doc["cells"]) >= {
        "base",
        "batch 32",
        "batch 512",
        "batch 1024",
        "lr 0.3",
        "long (3x)",
        "resnet BN (batch BN)",
        "resnet BN (running BN)",
    }
    for cell in doc["cells"].values():
        assert cell["n"] + cell["unbracketed"] == 4  # 2 seeds x 2 probes
        assert len(cell["final_test_acc"]) == 2 and all(0 <= a <= 1 for a in cell["final_test_acc"])
        for r in cell["probes"]:
            assert 0.0 < r["one_step_fraction"] <= 1.0 and r["noise_to_signal"] > 0
            assert "predicted_from_noise" in r
    assert (tmp_path / "tiny" / "claim_A-map.png").read_bytes()[:4] == b"\x89PNG"
    assert doc["provenance"]["git"] is not None
    assert main(["reproduce", "A-map", "--budget", "medium", "--out", str(tmp_path)]) == 2


def test_one_step_fraction_decomposes_into_irreducible_loss_and_curvature_spread() -> None:
    """docs/theory.md §14: f(lr*)/f(0) = 1 - kappa R / f(0), R = f(0) - L_B* = 1/2 g^T H^-1 g and
    kappa = |g|^4 / (g^T H g g^T H^-1 g) <= 1, on least squares (exactly quadratic, dense H)."""
    torch.manual_seed(1)
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    model = nn.Linear(6, 1, bias=False).double()

    def mse(m: nn.Module, batch: tuple) -> torch.Tensor:
        return ((m(batch[0]) - batch[1]) ** 2).mean()

    p = line_profile(model, mse, (x, y), num_points=32, hvp=True)
    w = model.weight.detach().reshape(-1, 1)
    hess = 2 * x.T @ x / 32
    g = (hess @ w - 2 * x.T @ y / 32).reshape(-1)
    best = torch.linalg.lstsq(x, y).solution
    loss0, floor = float(((x @ w - y) ** 2).mean()), float(((x @ best - y) ** 2).mean())
    hinv_g = torch.linalg.solve(hess, g)
    reducible = 0.5 * float(g @ hinv_g)
    kappa = float(g @ g) ** 2 / (float(g @ hess @ g) * float(g @ hinv_g))
    assert reducible == pytest.approx(loss0 - floor, rel=1e-9) and 0 < kappa <= 1
    assert p.one_step_fraction == pytest.approx(1 - kappa * reducible / loss0, rel=1e-3, abs=1e-4)


def test_noise_to_signal_leaves_batchnorm_statistics_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(16, 4), torch.randint(0, 2, (16,))) for _ in range(3)]
    noise_to_signal(model, batches)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training


def test_cauchy_fractions_on_least_squares() -> None:
    """Exactly quadratic batch loss: step 1 is the one-step prediction, the steps never raise the loss,
    and with an isotropic Hessian (orthogonal columns of equal norm) one step lands on the batch's floor."""
    torch.manual_seed(2)
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    model = nn.Linear(6, 1, bias=False).double()
    f = cauchy_fractions(model, (x, y), steps=(1, 2, 4, 8), criterion=nn.functional.mse_loss)
    p = line_profile(model, lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), (x, y), hvp=True)
    assert f[1] == pytest.approx(
        predicted_fraction(p.grad_norm**2, p.curvature_hvp, p.loss_at_zero), rel=1e-9
    )
    assert f[1] >= f[2] >= f[4] >= f[8] > 0

    q, _ = torch.linalg.qr(torch.randn(32, 6, dtype=torch.float64))
    floor = float(((q @ (q.T @ y) - y) ** 2).mean())
    f_iso = cauchy_fractions(model, (q, y), steps=(1,), criterion=nn.functional.mse_loss)
    loss0 = float(((model(q).detach() - y) ** 2).mean())
    assert f_iso[1] == pytest.approx(floor / loss0, rel=1e-9)
