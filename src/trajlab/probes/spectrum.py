"""The Hessian's spectrum: top eigenvalues (Lanczos), trace (Hutchinson) and density (stochastic Lanczos).

All three work on exact Hessian-vector products of L(theta), either the loss of one mini-batch
(``batch=``) or the full-data loss over an iterable of batches (``data=``), L = sum_b n_b L_b / N with
n_b the size of batch b (:func:`trajlab.objective.batch_size`) and N = sum_b n_b. BatchNorm uses the
statistics of each batch (``bn="batch"``, train mode, as in the training step; running statistics
untouched) or the running ones (``bn="running"``, eval mode). The model is never mutated, nothing is
sent to a device the model is not on, and every result is plain numbers or numpy arrays in a frozen
dataclass with ``to_dict()``.

HVPs are reverse-over-reverse (:mod:`trajlab.probes.curvature`) with cheap convolution/BatchNorm double
backwards. For one batch the graph of g = dL/dtheta is built once and kept, so each further HVP costs
one double backward; over ``data`` every HVP re-runs forward, backward and double backward per batch
(memory stays that of one batch).

Relation to the paper's line probe. Along the batch gradient the line probe measures the best one-step
learning rate lr* and the curvature h = g^T H g / |g|^2 (:func:`trajlab.probes.line_profile`); for an
exactly quadratic batch loss lr* = 1 / h. h is a Rayleigh quotient of the Hessian measured here, so
lambda_min <= h <= lambda_max and lr* lambda_max >= 1, with equality when g lies in the top eigenvector:
lr* lambda_max says how much of the step's curvature comes from the sharpest directions, and the
density says whether h sits among the outliers or in the bulk. Gradient descent on a quadratic is
stable only for lr < 2 / lambda_max; full-batch training at a constant lr drives lambda_max up to about
2 / lr and holds it there, the "edge of stability" (Cohen et al., 2021). The paper's observation that
lr* is many times the training lr, read against 2 / lambda_max, places the training lr relative to that
edge. The noisy quadratic model of :mod:`trajlab.theory` takes h as its curvature scale; the spectrum
shows how far one h stands for the many h_i. See docs/probes.md.

References:
    Lanczos 1950; Golub & Meurant, "Matrices, Moments and Quadrature" (2010) for stochastic Lanczos
    quadrature; Hutchinson 1989; Ghorbani, Krishnan & Xiao 2019 and Yao et al. 2020 (PyHessian) for their
    use on neural networks; Cohen et al. 2021, "Gradient Descent on Neural Networks Typically Occurs at
    the Edge of Stability".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from trajlab.objective import batch_size
from trajlab.probes._functional import (
    Batch,
    CostLedger,
    CostMeter,
    FunctionalLoss,
    LossFn,
    Params,
    check_bn_mode,
    detached_buffers,
    detached_params,
    prepare_batch,
    probe_mode,
)
from trajlab.probes._second_order import SecondOrderKernels
from trajlab.probes.curvature import grad_and_hvp

logger = logging.getLogger(__name__)

Order = Literal["algebraic", "magnitude"]
ORDERS = ("algebraic", "magnitude")


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class TopEigenvalues:
    """Result of :func:`top_eigenvalues` (eigenvalues ordered as asked, largest first).

    Attributes:
        eigenvalues: the k Ritz values.
        residuals: ||H y - lambda y|| of each unit Ritz vector y, from the Lanczos recurrence
            (beta_m |s_m|; equal to the directly computed norm when the basis is orthogonal, which full
            reorthogonalisation keeps).
        converged: whether each residual is <= ``tol * |lambda|``.
        order: ``"algebraic"`` or ``"magnitude"``.
        iterations: Lanczos steps taken (one HVP each).
        hvps: Hessian-vector products of L (each one per batch over ``data``).
        tol: the relative residual tolerance.
        seed: seed of the start vector.
        bn: BatchNorm mode.
        n_params: dimension of the Hessian.
        n_examples: examples in the loss (N).
        wall_time_s: seconds spent, setup included.
        cost: per-batch forwards/backwards/HVPs.
    """

    eigenvalues: tuple[float, ...]
    residuals: tuple[float, ...]
    converged: tuple[bool, ...]
    order: str
    iterations: int
    hvps: int
    tol: float
    seed: int
    bn: str
    n_params: int
    n_examples: int
    wall_time_s: float
    cost: CostLedger

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


@dataclass(frozen=True)
class HessianTrace:
    """Result of :func:`hessian_trace`: tr(H) = tr(Q^T H Q) + E[(P v)^T H (P v)], v Rademacher.

    Attributes:
        trace: the estimate, deflated_part + mean of the residual samples.
        std_error: its standard error, sample std / sqrt(samples).
        samples: number of Rademacher vectors (one HVP each).
        converged: whether std_error <= ``rtol * |trace|`` was reached before ``max_samples``.
        estimates: the per-vector values deflated_part + (P v_i)^T H (P v_i).
        deflation_steps: Lanczos steps whose Krylov basis Q was removed (P = I - Q Q^T; 0: plain
            Hutchinson).
        deflated_part: tr(Q^T H Q), exact.
        hvps: deflation_steps + samples.
        rtol, min_samples, max_samples, seed, bn, n_params, n_examples, wall_time_s, cost: as given /
            measured.
    """

    trace: float
    std_error: float
    samples: int
    converged: bool
    estimates: tuple[float, ...]
    deflation_steps: int
    deflated_part: float
    hvps: int
    rtol: float
    min_samples: int
    max_samples: int
    seed: int
    bn: str
    n_params: int
    n_examples: int
    wall_time_s: float
    cost: CostLedger

    @property
    def rel_std_error(self) -> float:
        return self.std_error / abs(self.trace) if self.trace != 0 else math.inf

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["estimates"] = list(self.estimates)
        d["rel_std_error"] = self.rel_std_error
        return d


@dataclass(frozen=True)
class SpectralDensity:
    """Result of :func:`spectral_density` (stochastic Lanczos quadrature).

    For probe p with unit start vector v_p, m Lanczos steps give the Gauss quadrature of the spectral
    measure mu_p = sum_j (v_p . u_j)^2 delta(lambda_j): nodes theta_pi (eigenvalues of the m x m
    tridiagonal T_p) and weights tau_pi = (first component of T_p's i-th eigenvector)^2, summing to 1.
    The density is phi(t) = mean_p sum_i tau_pi N(t; theta_pi, sigma^2); it integrates to 1 and its
    mean, mean_p sum_i tau_pi theta_pi = mean_p v_p^T H v_p, estimates tr(H) / n_params.

    Attributes:
        nodes: per probe, the Ritz values theta_pi (numpy, ascending).
        weights: per probe, the weights tau_pi.
        grid: points t where the density is evaluated (numpy).
        density: phi(t) on ``grid``.
        sigma: the gaussian width.
        trace_estimate: n_params * mean_p sum_i tau_pi theta_pi.
        lanczos_steps, num_probes, hvps, seed, bn, n_params, n_examples, wall_time_s, cost: as given /
            measured.
    """

    nodes: tuple[np.ndarray, ...]
    weights: tuple[np.ndarray, ...]
    grid: np.ndarray
    density: np.ndarray
    sigma: float
    trace_estimate: float
    lanczos_steps: int
    num_probes: int
    hvps: int
    seed: int
    bn: str
    n_params: int
    n_examples: int
    wall_time_s: float
    cost: CostLedger

    def mean(self) -> float:
        """Mean of the quadrature measure, mean_p sum_i tau_pi theta_pi (~= tr(H) / n_params)."""
        return float(np.mean([np.dot(w, x) for w, x in zip(self.weights, self.nodes)]))

    def to_dict(self) -> dict[str, object]:
        d = {k: v for k, v in asdict(self).items() if k not in ("nodes", "weights", "grid", "density")}
        d["nodes"] = [x.tolist() for x in self.nodes]
        d["weights"] = [w.tolist() for w in self.weights]
        d["grid"], d["density"] = self.grid.tolist(), self.density.tolist()
        return d


# ------------------------------------------------------------------------------------------ the operator


class _HessianOperator:
    """v -> H v on flat vectors, for one batch (graph of g kept) or a list of (batch, n_b) pairs."""

    def __init__(self, floss: FunctionalLoss, params: Params, data: list[tuple[Batch, int]]):
        self.floss, self.params, self.data = floss, params, data
        self.n_examples = sum(n for _, n in data)
        self.names = list(params)
        self.shapes = [params[n].shape for n in self.names]
        self.numels = [params[n].numel() for n in self.names]
        first = params[self.names[0]]
        self.dtype, self.device = first.dtype, first.device
        self.dim = sum(self.numels)
        self.applications = 0
        self._graph: tuple[list[Tensor], list[Tensor]] | None = None
        if len(data) == 1:
            self._graph = self._keep_graph(data[0][0])

    def _keep_graph(self, batch: Batch) -> tuple[list[Tensor], list[Tensor]]:
        self.floss.meter.backwards += 1
        leaves = [self.params[n].detach().requires_grad_(True) for n in self.names]
        with torch.enable_grad(), SecondOrderKernels():
            loss = self.floss(dict(zip(self.names, leaves)), batch)
            grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        return leaves, [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves)]

    def unflatten(self, flat: Tensor) -> Params:
        parts = torch.split(flat, self.numels)
        return {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}

    def flatten(self, tree: Params) -> Tensor:
        return torch.cat([tree[n].reshape(-1) for n in self.names])

    def __call__(self, flat_v: Tensor) -> Tensor:
        self.applications += 1
        v = self.unflatten(flat_v)
        if self._graph is not None:
            self.floss.meter.hvps += 1
            leaves, grads = self._graph
            pairs = [(g, v[n]) for g, n in zip(grads, self.names) if g.requires_grad]
            if not pairs:
                return torch.zeros_like(flat_v)
            outs, vs = zip(*pairs)
            hv = torch.autograd.grad(
                outs, leaves, vs, retain_graph=True, allow_unused=True, materialize_grads=True
            )
            return torch.cat([t.reshape(-1) for t in hv])
        total = torch.zeros_like(flat_v)
        for batch, n in self.data:
            hv = grad_and_hvp(self.floss, self.params, batch, v, "double_backward").hvp
            total.add_(self.flatten(hv), alpha=n / self.n_examples)
        return total

    def random(self, generator: torch.Generator, kind: str) -> Tensor:
        """A Gaussian or Rademacher vector drawn on the CPU (the same numbers on any device)."""
        if kind == "rademacher":
            v = torch.randint(0, 2, (self.dim,), generator=generator, dtype=torch.int8).to(self.dtype) * 2 - 1
        else:
            v = torch.randn(self.dim, generator=generator, dtype=torch.float64)
        return v.to(device=self.device, dtype=self.dtype)


def _resolve_data(
    model: nn.Module, loss_fn: LossFn, batch: Batch | None, data: Iterable[Batch] | None
) -> list[tuple[Batch, int]]:
    if (batch is None) == (data is None):
        raise ValueError("pass exactly one of batch= (one mini-batch) or data= (an iterable of batches)")
    if batch is not None:
        b = prepare_batch(batch, model, loss_fn)
        return [(b, batch_size(b))]
    if isinstance(data, (Tensor, Mapping)):
        raise TypeError(
            "data= must be an iterable of batches (e.g. a list or a DataLoader); for one batch use batch="
        )
    items = [prepare_batch(b, model, loss_fn, f"data[{i}]") for i, b in enumerate(data)]
    if not items:
        raise ValueError("data= yielded no batches")
    return [(b, batch_size(b)) for b in items]


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be positive and finite, got {value}")


# ------------------------------------------------------------------------------------------ Lanczos


class _Lanczos:
    """Lanczos tridiagonalisation with full reorthogonalisation (classical Gram-Schmidt, twice).

    After m steps, H Q_m = Q_m T_m + beta_m q_{m+1} e_m^T with T_m tridiagonal (alphas on the diagonal,
    betas beside it), so the Ritz pair (theta_i, Q_m s_i) has residual beta_m |e_m^T s_i|.
    """

    def __init__(self, op: _HessianOperator, start: Tensor):
        self.op = op
        self.basis = [start / start.norm()]  # q_1..q_j, each [n]
        self.alphas: list[float] = []
        self.betas: list[float] = []

    def step(self) -> bool:
        """One Lanczos step; False when the Krylov space is exhausted (an invariant subspace found)."""
        q = self.basis[-1]
        w = self.op(q)
        alpha = float(torch.dot(q.double(), w.double()))
        w = w - alpha * q
        if self.betas:
            w = w - self.betas[-1] * self.basis[-2]
        stack = torch.stack(self.basis)  # [j, n]
        for _ in range(2):  # "twice is enough" (Parlett): orthogonal to working precision
            w = w - stack.T @ (stack @ w)
        beta = float(w.double().norm())
        self.alphas.append(alpha)
        self.betas.append(beta)
        scale = max(abs(a) for a in self.alphas) or 1.0
        if beta <= 1e3 * torch.finfo(w.dtype).eps * scale or len(self.basis) == self.op.dim:
            return False
        self.basis.append(w / beta)
        return True

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(theta ascending, residual bounds beta_m |s_mi|, first components s_1i) of T_m."""
        a = np.asarray(self.alphas)
        t = np.diag(a) + np.diag(self.betas[:-1], 1) + np.diag(self.betas[:-1], -1)
        theta, s = np.linalg.eigh(t)
        return theta, abs(self.betas[-1] * s[-1, :]), s[0, :]


def _wanted(theta: np.ndarray, k: int, order: str) -> np.ndarray:
    """Indices of the k wanted Ritz values, largest first (algebraically or in magnitude)."""
    key = -np.abs(theta) if order == "magnitude" else -theta
    return np.argsort(key, kind="stable")[:k]


def top_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Batch | None = None,
    k: int = 1,
    *,
    data: Iterable[Batch] | None = None,
    order: Order = "algebraic",
    tol: float = 1e-3,
    max_iter: int = 100,
    bn: str = "batch",
    seed: int = 0,
) -> TopEigenvalues:
    """The k largest Hessian eigenvalues by Lanczos with full reorthogonalisation on exact HVPs.

    Lanczos builds an orthonormal basis Q_m of the Krylov space span{q, Hq, ..., H^(m-1) q} from a
    Gaussian start q and the tridiagonal T_m = Q_m^T H Q_m; the extreme eigenvalues of T_m (Ritz values)
    converge to H's much faster than power iteration's. It stops when each wanted Ritz pair has
    ||H y - theta y|| <= tol |theta| (then |theta - lambda| <= tol |theta|, and usually ~ tol^2), when the
    Krylov space is exhausted, or after ``max_iter`` HVPs. A single start vector finds one copy of an
    eigenvalue of multiplicity > 1 (close but distinct eigenvalues are resolved).

    Args:
        model: any module (never mutated); theta = its parameters, n_params of them.
        loss_fn: the loss hook ``loss_fn(model, batch) -> scalar`` (a mean over the batch) or a criterion
            for ``(x, y)`` batches (see :mod:`trajlab.objective`).
        batch: one mini-batch (the graph of its gradient is kept between HVPs).
        k: how many eigenvalues (1 <= k <= n_params).
        data: instead of ``batch``, an iterable of batches for the full-data loss sum_b n_b L_b / N.
        order: ``"algebraic"`` (largest lambda first) or ``"magnitude"`` (largest |lambda| first, as
            PyHessian's power iteration finds them).
        tol: relative residual tolerance.
        max_iter: at most this many Lanczos steps (HVPs).
        bn: ``"batch"`` (train-mode statistics of each batch) or ``"running"`` (eval mode).
        seed: seed of the start vector (drawn on the CPU: the same on every device).

    Returns:
        A :class:`TopEigenvalues`; ``converged`` says which residuals met ``tol``.
    """
    check_bn_mode(bn)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    _check_positive(tol=tol)
    meter = CostMeter()
    params = detached_params(model)
    n_params = sum(p.numel() for p in params.values())
    if not 1 <= k <= n_params or max_iter < k:
        raise ValueError(
            f"need 1 <= k <= n_params ({n_params}) and max_iter >= k, got k={k}, max_iter={max_iter}"
        )
    items = _resolve_data(model, loss_fn, batch, data)
    with probe_mode(model, bn):
        op = _HessianOperator(FunctionalLoss(model, loss_fn, meter, detached_buffers(model)), params, items)
        lanczos = _Lanczos(op, op.random(torch.Generator().manual_seed(seed), "gaussian"))
        theta, resid, idx = _run_to_convergence(lanczos, k, order, tol, max_iter)
    converged = tuple(bool(resid[i] <= tol * abs(theta[i])) for i in idx)
    if not all(converged):
        logger.warning(
            "top_eigenvalues: %d of %d not converged after %d HVPs", converged.count(False), k, max_iter
        )
    return TopEigenvalues(
        eigenvalues=tuple(float(theta[i]) for i in idx),
        residuals=tuple(float(resid[i]) for i in idx),
        converged=converged,
        order=order,
        iterations=len(lanczos.alphas),
        hvps=op.applications,
        tol=tol,
        seed=seed,
        bn=bn,
        n_params=n_params,
        n_examples=op.n_examples,
        wall_time_s=meter.ledger().wall_time_s,
        cost=meter.ledger(),
    )


def _run_to_convergence(
    lanczos: _Lanczos, k: int, order: str, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lanczos steps until the k wanted Ritz pairs meet the tolerance; (theta, residuals, wanted idx)."""
    while True:
        more = lanczos.step()
        theta, resid, _ = lanczos.ritz()
        idx = _wanted(theta, k, order)
        done = len(theta) >= k and all(resid[i] <= tol * abs(theta[i]) for i in idx)
        if done or not more or len(lanczos.alphas) >= max_iter:
            return theta, resid, idx


# ------------------------------------------------------------------------------------------ trace


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Batch | None = None,
    *,
    data: Iterable[Batch] | None = None,
    rtol: float = 1e-2,
    min_samples: int = 10,
    max_samples: int = 1000,
    deflation_steps: int = 10,
    bn: str = "batch",
    seed: int = 0,
) -> HessianTrace:
    """tr(H) by Hutchinson's estimator with Rademacher vectors, stopped on its relative standard error.

    With v in {-1, +1}^n, E[v^T H v] = tr(H) and Var[v^T H v] = 2 sum_{i != j} H_ij^2: for a network
    Hessian, whose few outlier eigenvalues carry most of ||H||_F, a single sample's standard deviation
    can exceed the trace itself. So the Krylov space Q of ``deflation_steps`` Lanczos steps (which holds
    the outliers) is taken exactly and Hutchinson runs on the rest:

        tr(H) = tr(Q^T H Q) + E[(P v)^T H (P v)],   P = I - Q Q^T,

    unbiased for any orthonormal Q drawn independently of the v (Krylov-deflated Hutchinson, as in
    Hutch++, Meyer et al. 2021). After each sample i >= ``min_samples`` the standard error s_i / sqrt(i)
    is compared with ``rtol * |estimate|``; the minimum keeps a lucky pair of close samples from stopping
    it.

    Args:
        model: any module (never mutated).
        loss_fn: the loss hook (or a criterion for ``(x, y)`` batches), see :mod:`trajlab.objective`.
        batch: one mini-batch; or ``data``: an iterable of batches for the full-data loss.
        data: see ``batch``.
        rtol: stop when std_error <= rtol * |trace|.
        min_samples: never stop before this many samples (>= 2).
        max_samples: stop here regardless (``converged`` is then False).
        deflation_steps: Lanczos steps removed exactly (0 for plain Hutchinson); each costs one HVP.
        bn: ``"batch"`` or ``"running"`` BatchNorm statistics.
        seed: seed of the Lanczos start and the Rademacher vectors (drawn on the CPU).

    Returns:
        A :class:`HessianTrace`.
    """
    check_bn_mode(bn)
    _check_positive(rtol=rtol)
    if not 2 <= min_samples <= max_samples or deflation_steps < 0:
        raise ValueError(
            "need 2 <= min_samples <= max_samples and deflation_steps >= 0, got "
            f"{min_samples}, {max_samples}, {deflation_steps}"
        )
    meter = CostMeter()
    params = detached_params(model)
    items = _resolve_data(model, loss_fn, batch, data)
    generator = torch.Generator().manual_seed(seed)
    with probe_mode(model, bn):
        op = _HessianOperator(FunctionalLoss(model, loss_fn, meter, detached_buffers(model)), params, items)
        basis, deflated = _deflation(op, generator, deflation_steps)
        estimates = _hutchinson(op, generator, basis, deflated, rtol, min_samples, max_samples)
    mean, se = _mean_and_se(estimates)
    ledger = meter.ledger()
    converged = len(estimates) >= min_samples and se <= rtol * abs(mean)
    return HessianTrace(
        mean, se, len(estimates), converged, tuple(estimates), deflation_steps, deflated, op.applications,
        rtol, min_samples, max_samples, seed, bn, op.dim, op.n_examples, ledger.wall_time_s, ledger,
    )  # fmt: skip


def _deflation(op: _HessianOperator, generator: torch.Generator, steps: int) -> tuple[Tensor | None, float]:
    """(Q [m, n] orthonormal, tr(Q^T H Q) = sum of the Lanczos alphas) after ``steps`` Lanczos steps."""
    if steps == 0:
        return None, 0.0
    lanczos = _Lanczos(op, op.random(generator, "gaussian"))
    while len(lanczos.alphas) < steps and lanczos.step():
        pass
    m = len(lanczos.alphas)
    return torch.stack(lanczos.basis[:m]), float(sum(lanczos.alphas))


def _hutchinson(
    op: _HessianOperator,
    generator: torch.Generator,
    basis: Tensor | None,
    deflated: float,
    rtol: float,
    min_samples: int,
    max_samples: int,
) -> list[float]:
    """deflated + (P v)^T H (P v) for Rademacher v until the relative standard error meets ``rtol``."""
    estimates: list[float] = []
    while len(estimates) < max_samples:
        v = op.random(generator, "rademacher")
        if basis is not None:
            v = v - basis.T @ (basis @ v)
        estimates.append(deflated + float(torch.dot(v.double(), op(v).double())))
        mean, se = _mean_and_se(estimates)
        if len(estimates) >= min_samples and se <= rtol * abs(mean):
            break
    return estimates


def _mean_and_se(values: list[float]) -> tuple[float, float]:
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return float(x.mean()), math.inf
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


# ------------------------------------------------------------------------------------------ density


def spectral_density(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Batch | None = None,
    *,
    data: Iterable[Batch] | None = None,
    lanczos_steps: int = 80,
    num_probes: int = 1,
    grid_points: int = 1000,
    sigma: float | None = None,
    bn: str = "batch",
    seed: int = 0,
) -> SpectralDensity:
    """Eigenvalue density of H by stochastic Lanczos quadrature (see :class:`SpectralDensity`).

    Each probe runs ``lanczos_steps`` steps (fewer when the Krylov space is exhausted) from a normalised
    Rademacher vector; for large n one probe already gives the density to O(1/sqrt(n)).

    Args:
        model: any module (never mutated).
        loss_fn: the loss hook (or a criterion for ``(x, y)`` batches), see :mod:`trajlab.objective`.
        batch: one mini-batch; or ``data``: an iterable of batches for the full-data loss.
        data: see ``batch``.
        lanczos_steps: m, the quadrature nodes per probe (HVPs per probe).
        num_probes: independent start vectors averaged.
        grid_points: size of the grid, spanning the nodes +- 5 sigma.
        sigma: gaussian width; default 1% of the node range (largest minus smallest node).
        bn: ``"batch"`` or ``"running"`` BatchNorm statistics.
        seed: seed of the start vectors (drawn on the CPU).

    Returns:
        A :class:`SpectralDensity`.
    """
    check_bn_mode(bn)
    if lanczos_steps < 1 or num_probes < 1 or grid_points < 2:
        raise ValueError(
            f"need lanczos_steps >= 1, num_probes >= 1, grid_points >= 2; got {lanczos_steps}, {num_probes}, "
            f"{grid_points}"
        )
    meter = CostMeter()
    params = detached_params(model)
    items = _resolve_data(model, loss_fn, batch, data)
    generator = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    with probe_mode(model, bn):
        op = _HessianOperator(FunctionalLoss(model, loss_fn, meter, detached_buffers(model)), params, items)
        for _ in range(num_probes):
            lanczos = _Lanczos(op, op.random(generator, "rademacher"))
            while len(lanczos.alphas) < lanczos_steps and lanczos.step():
                pass
            theta, _, first = lanczos.ritz()
            nodes.append(theta)
            weights.append(first**2)
    grid, density, sigma = _smoothed_density(nodes, weights, grid_points, sigma)
    ledger = meter.ledger()
    mean = float(np.mean([np.dot(w, x) for w, x in zip(weights, nodes)]))
    return SpectralDensity(
        tuple(nodes), tuple(weights), grid, density, sigma, op.dim * mean, lanczos_steps, num_probes,
        op.applications, seed, bn, op.dim, op.n_examples, ledger.wall_time_s, ledger,
    )  # fmt: skip


def _smoothed_density(
    nodes: list[np.ndarray], weights: list[np.ndarray], grid_points: int, sigma: float | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """phi(t) = mean_p sum_i tau_pi N(t; theta_pi, sigma^2) on a grid over [min - 5 sigma, max + 5 sigma]."""
    allx = np.concatenate(nodes)
    lo, hi = float(allx.min()), float(allx.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 1e-3
    _check_positive(sigma=sigma)
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_points)
    density = np.zeros_like(grid)
    for x, w in zip(nodes, weights):
        z = (grid[:, None] - x[None, :]) / sigma  # [grid, m]
        density += (np.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))) @ w
    return grid, density / len(nodes), float(sigma)
