"""Spectrum probes against the exact Hessian (torch.autograd.functional.hessian) on small float64 models."""

import copy

import numpy as np
import pytest
import torch
from probe_fixtures import MSE, TinyCNN
from torch import nn
from torch.func import functional_call

from trajlab.probes import hessian_trace, spectral_density, top_eigenvalues

F = nn.functional.cross_entropy


def _mlp(act: type[nn.Module], seed: int) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), act(), nn.Linear(8, 4)).double()
    return model, (torch.randn(24, 6, dtype=torch.float64), torch.randint(0, 4, (24,)))


def _exact_hessian(model, loss, batches, train_bn=False):
    """Dense Hessian of sum_b n_b L_b / N over the flattened parameters (BN train mode iff train_bn)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    ref = copy.deepcopy(model)
    for m in ref.modules():  # BN in the asked mode, dropout off: what the probes do
        m.training = train_bn and isinstance(m, nn.modules.batchnorm._BatchNorm)
    buffers = dict(ref.named_buffers())
    total = sum(len(b[1]) for b in batches)

    def f(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
        out = 0.0
        for x, y in batches:
            copies = {k: v.clone() for k, v in buffers.items()}
            out = out + len(y) * loss(functional_call(ref, (params, copies), (x,)), y) / total
        return out

    return torch.autograd.functional.hessian(f, flat0)


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU])
def test_top_eigenvalues_match_dense_hessian(act):
    model, batch = _mlp(act, seed=0)
    exact = torch.linalg.eigvalsh(_exact_hessian(model, F, [batch])).numpy()[::-1]
    r = top_eigenvalues(model, F, batch, k=3, tol=1e-6)
    assert all(r.converged) and r.hvps == r.iterations <= 100
    np.testing.assert_allclose(r.eigenvalues, exact[:3], rtol=1e-2)
    assert all(res <= 1e-6 * abs(v) for res, v in zip(r.residuals, r.eigenvalues))
    by_magnitude = top_eigenvalues(model, F, batch, k=2, order="magnitude", tol=1e-6)
    expected = sorted(exact, key=abs, reverse=True)[:2]
    np.testing.assert_allclose(by_magnitude.eigenvalues, expected, rtol=1e-2)


def test_top_two_close_eigenvalues_are_resolved():
    """Least squares with H = R diag(10, 9.9, 4, 3, 2, 1) R^T: the top two differ by 1%."""
    g = torch.Generator().manual_seed(3)
    lam = torch.tensor([10.0, 9.9, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(60, 6, generator=g, dtype=torch.float64))
    r, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    x = 60**0.5 * q @ torch.diag(lam.sqrt()) @ r.T  # x^T x / 60 = r diag(lam) r^T
    model = nn.Linear(6, 1, bias=False).double()
    batch = (x, torch.randn(60, generator=g, dtype=torch.float64))
    # mse = mean (w.x - y)^2 / 2 has Hessian x^T x / n exactly
    result = top_eigenvalues(model, MSE, batch, k=3, tol=1e-8)
    np.testing.assert_allclose(result.eigenvalues, [10.0, 9.9, 4.0], rtol=1e-6)


def test_trace_within_three_standard_errors_and_minimum_samples():
    model, batch = _mlp(nn.Tanh, seed=1)
    exact = float(torch.trace(_exact_hessian(model, F, [batch])))
    # A tiny tanh MLP has large off-diagonal entries: one plain sample's std is ~2x the trace here.
    plain = hessian_trace(model, F, batch, rtol=0.1, max_samples=2000, deflation_steps=0)
    assert plain.converged and plain.samples >= 10 and plain.rel_std_error <= 0.1
    assert abs(plain.trace - exact) <= 3 * plain.std_error and plain.hvps == plain.samples
    deflated = hessian_trace(model, F, batch, rtol=0.1, max_samples=2000, deflation_steps=20)
    assert abs(deflated.trace - exact) <= 3 * deflated.std_error and deflated.hvps == 20 + deflated.samples
    assert deflated.samples < plain.samples  # the outliers carried most of the variance
    n = sum(p.numel() for p in model.parameters())
    whole = hessian_trace(model, F, batch, deflation_steps=n, min_samples=2)  # Q spans everything
    assert whole.trace == pytest.approx(exact, rel=1e-8) and whole.samples == 2
    # A Hessian c I gives v^T H v = c n for every Rademacher v: zero spread, stops at min_samples exactly.
    lin = nn.Linear(4, 1, bias=False).double()
    x = 8**0.5 * torch.linalg.qr(torch.randn(8, 4, dtype=torch.float64))[0]  # x^T x / 8 = I
    flat = hessian_trace(lin, MSE, (x, torch.zeros(8, dtype=torch.float64)), min_samples=7, deflation_steps=0)
    assert flat.samples == 7 and flat.trace == pytest.approx(4.0) and flat.converged


def test_density_integrates_to_one_and_its_mean_is_trace_over_n():
    model, batch = _mlp(nn.Tanh, seed=2)
    h = _exact_hessian(model, F, [batch])
    n = h.shape[0]
    d = spectral_density(model, F, batch, lanczos_steps=n, num_probes=12, seed=1)
    assert np.trapezoid(d.density, d.grid) == pytest.approx(1.0, abs=1e-3)
    assert all(w.sum() == pytest.approx(1.0) for w in d.weights)
    per_probe = np.array([np.dot(w, x) for w, x in zip(d.weights, d.nodes)])
    se = per_probe.std(ddof=1) / np.sqrt(len(per_probe))
    assert abs(d.mean() - float(torch.trace(h)) / n) <= 3 * se + 1e-12
    assert d.trace_estimate == pytest.approx(n * d.mean())
    # With m = n steps the nodes are H's eigenvalues: the largest node is lambda_max.
    assert max(x.max() for x in d.nodes) == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-6)


def test_full_data_is_the_size_weighted_loss_and_bn_modes():
    model, (x, y) = _mlp(nn.Tanh, seed=4)
    parts = [(x[:16], y[:16]), (x[16:], y[16:])]
    exact = torch.linalg.eigvalsh(_exact_hessian(model, F, parts)).numpy()[::-1]
    r = top_eigenvalues(model, F, data=parts, k=2, tol=1e-6)
    np.testing.assert_allclose(r.eigenvalues, exact[:2], rtol=1e-2)
    assert r.n_examples == 24 and r.cost.hvps == 2 * r.hvps
    torch.manual_seed(0)
    cnn = TinyCNN().double()
    xb, yb = torch.randn(12, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (12,))
    with torch.no_grad():
        cnn.train()(xb + 1)  # running statistics that differ from the batch's
    for bn, train_bn in (("running", False), ("batch", True)):
        h = _exact_hessian(cnn, F, [(xb, yb)], train_bn=train_bn)
        top = top_eigenvalues(cnn, F, (xb, yb), k=1, bn=bn, tol=1e-6)
        assert top.eigenvalues[0] == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-2)


def test_spectrum_probes_leave_model_untouched_and_are_deterministic(cnn):
    model, batch, _ = cnn
    model = copy.deepcopy(model).train()
    F(model(batch[0]), batch[1]).backward()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    runs = [
        (
            top_eigenvalues(model, F, batch, k=2, seed=s, max_iter=30),
            hessian_trace(model, F, batch, seed=s, min_samples=3, max_samples=5),
            spectral_density(model, F, data=[batch, batch], lanczos_steps=5, seed=s),
        )
        for s in (7, 7, 8)
    ]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert all(m.training for m in model.modules())
    (a, b, c), (a2, b2, c2), (_, b3, _) = runs
    assert a.eigenvalues == a2.eigenvalues and b.estimates == b2.estimates and b.estimates != b3.estimates
    assert np.array_equal(c.density, c2.density)
    assert c.to_dict()["hvps"] == 5 and c.cost.hvps == 10  # 5 HVPs of L, each one per batch


def test_spectrum_bad_inputs():
    model, batch = _mlp(nn.Tanh, seed=0)
    with pytest.raises(ValueError, match="exactly one of batch"):
        top_eigenvalues(model, F, batch, data=[batch])
    with pytest.raises(ValueError, match="1 <= k <= n_params"):
        top_eigenvalues(model, F, batch, k=10_000)
    with pytest.raises(ValueError, match="order must be one of"):
        top_eigenvalues(model, F, batch, order="largest")
    with pytest.raises(ValueError, match="min_samples"):
        hessian_trace(model, F, batch, min_samples=1)
    with pytest.raises(TypeError, match="iterable of batches"):
        spectral_density(model, F, data={"x": batch[0]})


def test_trace_is_unbiased_in_float32_on_a_relu_net_with_an_outlier():
    """Conditional on Q the deflated estimator is unbiased by algebra (E[v v^T] = I, tr(P H P) + tr(Q^T H Q)
    = tr(H)); this checks that nothing in float32 HVPs, the projection or the Lanczos basis breaks that, on
    a ReLU net whose Hessian has an outlier (inputs offset by 4: lambda_max 17.4 of a trace of 24.4).
    The seeds are fixed, so the z-test is deterministic; 1000 runs of 5 samples give an SE of ~1.5%."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))
    x, y = torch.randn(48, 8) + 4.0, torch.randint(0, 4, (48,))
    h = _exact_hessian(copy.deepcopy(model).double(), F, [(x.double(), y)])
    exact = float(torch.trace(h))
    assert float(torch.linalg.eigvalsh(h)[-1]) > 0.5 * exact
    for deflation in (0, 3):
        est = np.array(
            [
                hessian_trace(
                    model, F, (x, y), min_samples=5, max_samples=5, deflation_steps=deflation, seed=s
                ).trace
                for s in range(1000)
            ]
        )
        z = (est.mean() - exact) / (est.std(ddof=1) / np.sqrt(est.size))
        assert abs(z) < 4, (deflation, est.mean(), exact)
