"""Dict batches through every probe: a hook reading batch["inputs"], batch["labels"] gives exactly the
numbers of F.cross_entropy on the same (x, y) tuples, and leaves the model untouched."""

import copy

import pytest
import torch
from probe_fixtures import TinyCNN
from torch import nn

from trajlab.probes import (
    curvature_along,
    gradient_alignment,
    hessian_vector_product,
    interpolate,
    line_profile,
    loss_matrix,
)

F = nn.functional.cross_entropy


def hook(model, batch):
    return F(model(batch["inputs"]), batch["labels"])


def as_dict(batch):
    return {"inputs": batch[0], "labels": batch[1], "meta": "not a tensor"}


def test_line_profile_and_curvature_match_tuple_batches(cnn):
    model, batch, control = cnn
    kw = {"lrs": [0.1, 0.5, 1.0, 2.0], "bn": "running"}
    a = line_profile(model, F, batch, eval_batches={"c": control}, **kw)
    b = line_profile(model, hook, as_dict(batch), eval_batches={"c": as_dict(control)}, **kw)
    assert a.losses == b.losses and a.control_losses == b.control_losses
    assert b.curvature_hvp == pytest.approx(a.curvature_hvp, rel=1e-12)
    single = line_profile(model, hook, as_dict(batch), eval_batches=as_dict(control), lrs=[0.1, 0.2])
    assert list(single.control_losses) == ["control_0"]
    for method in ("double_backward", "jvp", "finite_difference"):
        ca = curvature_along(model, F, batch, method=method)
        cb = curvature_along(model, hook, as_dict(batch), method=method)
        assert cb.curvature == pytest.approx(ca.curvature, rel=1e-10)


def test_alignment_loss_matrix_and_interpolation_match_tuple_batches(cnn):
    model, batch, control = cnn
    ra = gradient_alignment(model, F, [batch, control], [batch, control])
    rb = gradient_alignment(
        model, hook, [as_dict(batch), as_dict(control)], [as_dict(batch), as_dict(control)]
    )
    assert rb.cosine == pytest.approx(ra.cosine, rel=1e-10) and rb.b_noise == pytest.approx(
        ra.b_noise, rel=1e-8
    )
    assert rb.n_full == ra.n_full == 32

    class Store:
        def __init__(self, fmt):
            self.fmt = fmt

        def steps(self):
            return [0, 1]

        def load(self, step, device=None, dtype=None):
            return {k: v + 0.01 * step if v.is_floating_point() else v for k, v in model.state_dict().items()}

        def batch(self, step, device=None):
            return self.fmt(batch)

        def batch_indices(self, step):
            return torch.arange(16)

    m = loss_matrix(Store(as_dict), [1, as_dict(control)], None, lambda: TinyCNN().double(), loss_fn=hook)
    ref = loss_matrix(Store(tuple), [1, control], None, lambda: TinyCNN().double())
    assert m.losses == ref.losses
    sb = {k: (v * 1.1 if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    ia = interpolate(model, model.state_dict(), sb, [0, 0.5], [batch, control])
    ib = interpolate(
        model, model.state_dict(), sb, [0, 0.5], [as_dict(batch), as_dict(control)], loss_fn=hook
    )
    assert ib.losses == pytest.approx(ia.losses, rel=1e-12)
    rc = interpolate(
        model,
        model.state_dict(),
        sb,
        [0.5],
        as_dict(batch),
        loss_fn=hook,
        buffers="recalibrate",
        recalibration_data=[as_dict(batch)],
    )
    assert rc.losses[0] > 0


def _probes(batch, control):
    ones = lambda m: {n: torch.ones_like(p) for n, p in m.named_parameters()}  # noqa: E731
    return {
        "line": lambda m: line_profile(m, hook, batch, eval_batches=[control], num_points=6),
        "line_vmap_running": lambda m: line_profile(
            m, hook, batch, lrs=[0.1, 0.2], bn="running", evaluation="vmap"
        ),
        "curvature_jvp": lambda m: curvature_along(m, hook, batch, method="jvp"),
        "hvp": lambda m: hessian_vector_product(m, hook, batch, ones(m)),
        "alignment": lambda m: gradient_alignment(m, hook, [batch, control], [batch, control]),
        "interpolate": lambda m: interpolate(
            m,
            m.state_dict(),
            m.state_dict(),
            [0, 1],
            batch,
            loss_fn=hook,
            buffers="recalibrate",
            recalibration_data=[batch],
        ),
    }


@pytest.mark.parametrize(
    "probe", ["line", "line_vmap_running", "curvature_jvp", "hvp", "alignment", "interpolate"]
)
def test_dict_batch_probes_leave_model_untouched(cnn, probe):
    model, batch, control = cnn
    model = copy.deepcopy(model).train()
    F(model(batch[0]), batch[1]).backward()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    _probes(as_dict(batch), as_dict(control))[probe](model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert all(m.training for m in model.modules())


def test_bad_hooks_and_batches_fail_in_one_line(cnn):
    model, batch, _ = cnn
    with pytest.raises(TypeError, match=r"pair for the criterion cross_entropy, got a dict"):
        line_profile(model, F, as_dict(batch))
    with pytest.raises(TypeError, match=r"must return a scalar floating-point tensor .* shape \(16, 3\)"):
        curvature_along(model, lambda m, b: m(b["inputs"]), as_dict(batch))
    with pytest.raises(TypeError, match="holds no tensor"):
        curvature_along(model, hook, {"inputs": [1, 2]})
    with pytest.raises(TypeError) as err:  # a criterion-style function passed as a hook
        line_profile(model, lambda out, y: (out - y).pow(2).mean(), batch)
    assert "supervised(criterion)" in "".join(getattr(err.value, "__notes__", []))
