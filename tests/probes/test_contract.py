"""Contract: every probe leaves the model exactly as it was (parameters, buffers, grads, train/eval flags)."""

import copy

import pytest
import torch
from probe_fixtures import TinyCNN

from trajlab.objective import supervised
from trajlab.probes import (
    curvature_along,
    gradient_alignment,
    hessian_vector_product,
    interpolate,
    line_profile,
)

F = torch.nn.functional.cross_entropy


def _probes(batch, control):
    return {
        "line_batch": lambda m: line_profile(m, F, batch, eval_batches=[control], num_points=6),
        "line_running_vmap": lambda m: line_profile(
            m, F, batch, lrs=[0.1, 0.2], bn="running", evaluation="vmap"
        ),
        "line_guess_jvp": lambda m: line_profile(m, F, batch, lr_guess=0.5, hvp_method="jvp"),
        "curvature_db": lambda m: curvature_along(m, F, batch, method="double_backward"),
        "hvp_fd": lambda m: hessian_vector_product(
            m, F, batch, {n: torch.ones_like(p) for n, p in m.named_parameters()}
        ),
        "alignment": lambda m: gradient_alignment(
            m, F, [batch, control], [batch, control], hessian_batches=1
        ),
        "interpolate": lambda m: interpolate(
            m,
            m.state_dict(),
            _shifted(m),
            [0, 0.5, 1],
            batch,
            buffers="recalibrate",
            recalibration_data=[batch[0]],
        ),
    }


def _shifted(m):
    return {k: (v + 0.1 if v.is_floating_point() else v) for k, v in m.state_dict().items()}


def _snapshot(m):
    return (
        {k: v.clone() for k, v in m.state_dict(keep_vars=True).items()},
        {n: None if p.grad is None else p.grad.clone() for n, p in m.named_parameters()},
        [mod.training for mod in m.modules()],
        {n: p.requires_grad for n, p in m.named_parameters()},
        {n: p.data_ptr() for n, p in m.named_parameters()},
    )


@pytest.mark.parametrize(
    "probe",
    [
        "line_batch",
        "line_running_vmap",
        "line_guess_jvp",
        "curvature_db",
        "hvp_fd",
        "alignment",
        "interpolate",
    ],
)
@pytest.mark.parametrize("mode", ["train", "eval", "mixed_with_grads"])
def test_probe_leaves_model_untouched(cnn, probe, mode):
    model, batch, control = cnn
    model = copy.deepcopy(model)
    model.train(mode != "eval")
    if mode == "mixed_with_grads":
        model.bn.eval()  # a mixed-mode model must come back mixed
        F(model(batch[0]), batch[1]).backward()
    before = _snapshot(model)
    _probes(batch, control)[probe](model)
    after = _snapshot(model)
    for k, v in before[0].items():
        assert torch.equal(v, after[0][k]), k  # includes running stats and num_batches_tracked
    for n, g in before[1].items():
        assert (g is None and after[1][n] is None) or torch.equal(g, after[1][n]), n
    assert before[2:] == after[2:]


def test_probe_restores_flags_on_error(cnn):
    model, batch, _ = cnn
    model = copy.deepcopy(model).train()
    with pytest.raises(RuntimeError):
        line_profile(model, supervised(lambda out, y: out.sum() @ torch.zeros(3)), batch)
    assert all(m.training for m in model.modules())


def test_dropout_is_off_during_probes():
    torch.manual_seed(1)
    m = TinyCNN().double().train()
    b = (torch.randn(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (8,)))
    a1 = line_profile(m, F, b, lrs=[0.1, 0.3], hvp=False)
    a2 = line_profile(m, F, b, lrs=[0.1, 0.3], hvp=False)
    assert a1.losses == a2.losses
