"""Closed-form (exact quadratic) and reference (copy-the-model line search) tests of line_profile."""

import copy

import numpy as np
import pytest
import torch
from probe_fixtures import MSE, mse

from trajlab.probes import HVP_METHODS, curvature_along, hessian_vector_product, line_profile


def _exact(model, batch):
    x, y = batch
    a = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # [n, 6]: H = A^T A / n over (w, b)
    h = a.T @ a / len(x)
    model.zero_grad()
    mse(model(x), y).backward()
    g = torch.cat([model.weight.grad.flatten(), model.bias.grad])
    model.zero_grad(set_to_none=True)
    g2, ghg = float(g @ g), float(g @ h @ g)
    with torch.no_grad():
        f0 = float(mse(model(x), y))
    return g2 / ghg, f0 - g2**2 / (2 * ghg), ghg / g2


@pytest.mark.parametrize(
    "kwargs", [{}, {"lr_guess": 0.01}, {"lr_guess": 100.0}, {"lrs": np.linspace(0.1, 2.5, 12)}]
)
def test_exact_quadratic_recovers_lr_star_minimum_and_curvature(quadratic, kwargs):
    model, batch, _ = quadratic
    lr_star, f_min, curv = _exact(model, batch)
    if "lrs" in kwargs:  # a fixed grid around lr*, which the 3-point interpolation must hit exactly
        kwargs = {"lrs": list(kwargs["lrs"] * lr_star)}
    p = line_profile(model, MSE, batch, **kwargs)
    assert p.bracketed
    assert p.lr_star == pytest.approx(lr_star, rel=1e-6)
    assert p.loss_at_lr_star == pytest.approx(f_min, rel=1e-6)
    assert p.fit.r2 == pytest.approx(1.0, abs=1e-9)
    assert p.curvature_fit == pytest.approx(curv, rel=1e-6)
    assert p.curvature_hvp == pytest.approx(curv, rel=1e-6)
    assert p.lr_star_hvp == pytest.approx(lr_star, rel=1e-6)
    if "lr_guess" in kwargs:  # the exact HVP shares its graph-keeping backward with the gradient
        assert p.cost.backwards == 1 and p.cost.hvps == 1 and p.cost.forwards <= 8


def test_hvp_methods_agree_with_each_other_and_finite_differences(cnn):
    model, batch, _ = cnn
    v = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    hv = {
        m: hessian_vector_product(model, torch.nn.functional.cross_entropy, batch, v, method=m)
        for m in HVP_METHODS
    }
    for m in HVP_METHODS:
        for n in v:
            torch.testing.assert_close(hv[m][n], hv["double_backward"][n], rtol=1e-5, atol=1e-7)
    c = [
        curvature_along(model, torch.nn.functional.cross_entropy, batch, method=m).curvature
        for m in HVP_METHODS
    ]
    assert c == pytest.approx([c[0]] * 3, rel=1e-6)


def _slow_line(model, loss_fn, batch, lrs, bn):
    """Copy the model, set the BN mode, step with the gradient, evaluate: the obvious reference."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        m.training = isinstance(m, torch.nn.BatchNorm2d) and bn == "batch"
    loss_fn(ref(batch[0]), batch[1]).backward()
    out = []
    for lr in lrs:
        step = copy.deepcopy(ref)
        with torch.no_grad():
            for p, p0 in zip(step.parameters(), ref.parameters()):
                p.sub_(lr * p0.grad)
            out.append(float(loss_fn(step(batch[0]), batch[1])))
    return out


@pytest.mark.parametrize("bn", ["batch", "running"])
@pytest.mark.parametrize("evaluation", ["loop", "vmap"])
def test_cnn_profile_matches_slow_line_search(cnn, bn, evaluation):
    model, batch, control = cnn
    loss_fn = torch.nn.functional.cross_entropy
    lrs = [0.1, 0.5, 1.0, 2.0, 4.0]
    p = line_profile(
        model,
        loss_fn,
        batch,
        lrs=lrs,
        bn=bn,
        eval_batches={"c": control},
        evaluation=evaluation,
        vmap_chunk_size=3,
        evaluate_at_star=False,
        hvp=False,
    )
    assert p.lrs[0] == 0.0 and list(p.lrs[1:]) == lrs
    assert list(p.losses) == pytest.approx(_slow_line(model, loss_fn, batch, [0.0, *lrs], bn), rel=1e-10)
    assert p.bn == bn and p.evaluation == evaluation and p.cost.forwards == 2 * len(lrs) + 1


def test_adaptive_from_guess_matches_dense_grid_and_direction_and_weight_decay(cnn):
    model, batch, _ = cnn
    loss_fn = torch.nn.functional.cross_entropy
    dense = line_profile(model, loss_fn, batch, num_points=24, hvp=False)
    quick = line_profile(model, loss_fn, batch, lr_guess=dense.lr_star * 2.5, hvp=False)
    assert quick.lr_star == pytest.approx(dense.lr_star, rel=0.02)
    assert quick.loss_at_lr_star == pytest.approx(dense.loss_at_lr_star, rel=0.02)
    assert quick.cost.forwards <= 8 and quick.cost.backwards == 1
    g = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    given = line_profile(model, loss_fn, batch, direction=g, lrs=[0.01, 0.02], hvp=False)
    assert given.direction == "given" and given.direction_norm == pytest.approx(
        sum(p.numel() for p in model.parameters()) ** 0.5
    )
    wd = line_profile(model, loss_fn, batch, weight_decay=0.1, lrs=[0.01, 0.02], hvp=False)
    assert wd.weight_decay == 0.1 and wd.direction_norm != pytest.approx(wd.grad_norm)


def test_bad_inputs_give_clear_errors(cnn):
    model, batch, _ = cnn
    loss_fn = torch.nn.functional.cross_entropy
    with pytest.raises(ValueError, match="bn must be one of"):
        line_profile(model, loss_fn, batch, bn="eval")
    with pytest.raises(ValueError, match="not both"):
        line_profile(model, loss_fn, batch, lrs=[1, 2], lr_guess=1.0)
    with pytest.raises(TypeError, match=r"\(inputs, targets\) pair for the criterion"):
        line_profile(model, loss_fn, batch[0])
    with pytest.raises(ValueError, match="missing"):
        line_profile(model, loss_fn, batch, direction={"conv.weight": torch.zeros(4, 1, 3, 3)})
