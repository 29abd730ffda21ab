"""What a constant-lr run measures, as numbers, and the linear model each measurement obeys given timescales.

Groups j = 1..J of directions share a curvature h_j (the training-loss dynamics) and carry a loss weight
A_j (their share of the stationary excess of the loss being fitted, e.g. the test loss). For given
curvatures every measurement is *linear* in (L_min, A_j) and in the nuisance weights B_j, W_j:

    last iterate        L_min + sum_j A_j
    two-point gain (k)  sum_j A_j (1 - rho_j(k)) / 2
    EMA(beta)           L_min + sum_j A_j R_j(beta)
    lr-drop branch      L_min + sum_j A_j m_j(age; lr')    (``heavy_ball.lr_drop_variance_ratio``)
    loss autocov (k)    sum_j B_j rho_j(k)^2               (Gaussian: Cov(x_t^2, x_{t+k}^2) = 2 gamma_k^2)
    weight autocov (k)  sum_j W_j rho_j(k)
    Rayleigh quotient   sum_j A_j c_j (h_j - q) = 0,  c_j = h_j (1 + f_j) / f_j

The last row is E[g^T H g] = q E|g|^2 for mini-batch gradients g, with E|g_j|^2 = h_j^2 (gamma_0 + s^2)
= 2 A_j c_j; it assumes the fitted loss weighs the groups like the training loss does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from trajlab.theory import heavy_ball
from trajlab.theory._validate import decay_value, momentum_value, positive_scalar


def _floats(name: str, values: ArrayLike | None, positive: bool = False) -> np.ndarray:
    arr = np.atleast_1d(np.asarray([] if values is None else values, dtype=np.float64))
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a 1-d array of finite numbers, got {arr[:5].tolist()}")
    if positive and np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0, got {arr[arr <= 0][:3].tolist()}")
    return arr


def _steps(name: str, values: ArrayLike | None, minimum: int) -> np.ndarray:
    arr = _floats(name, values)
    if np.any(arr != np.round(arr)) or np.any(arr < minimum):
        raise ValueError(f"{name} must be whole numbers of steps >= {minimum}, got {arr[:5].tolist()}")
    return arr.astype(np.int64)


def _se(name: str, se: ArrayLike | None, size: int) -> np.ndarray | None:
    if se is None:
        return None
    arr = _floats(name, se, positive=True)
    if arr.size == 1 and size > 1:
        arr = np.full(size, arr[0])
    if arr.size != size:
        raise ValueError(f"{name} has {arr.size} entries for {size} measurements")
    return arr


def _pair(name: str, x: np.ndarray, y: np.ndarray) -> None:
    if x.size != y.size:
        raise ValueError(f"{name}: {x.size} positions but {y.size} values; give one value per position")


@dataclass(frozen=True)
class LadderBranch:
    """The fitted loss of a branch that continues the run from a plateau point at a lower lr.

    Args:
        lr: the branch's lr (the run keeps its momentum; PyTorch velocity convention).
        ages: steps since the branch point, >= 1.
        losses: the loss at each age (average over seeds / branch points where possible).
        losses_se: standard errors; None estimates them from the fit's residuals.
    """

    lr: float
    ages: ArrayLike
    losses: ArrayLike
    losses_se: ArrayLike | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", positive_scalar("LadderBranch.lr", self.lr))
        object.__setattr__(self, "ages", _steps("LadderBranch.ages", self.ages, 1))
        object.__setattr__(self, "losses", _floats("LadderBranch.losses", self.losses))
        _pair("LadderBranch", self.ages, self.losses)
        object.__setattr__(self, "losses_se", _se("LadderBranch.losses_se", self.losses_se, self.ages.size))


@dataclass(frozen=True)
class RunMeasurements:
    """Numbers measured on one constant-lr run (SGD with heavy-ball momentum), any subset.

    Losses are of one loss (say the test loss); gains are last-iterate loss minus averaged loss. Every
    ``*_se`` may be None (then estimated from the fit's residuals, and the fit says so).

    Args:
        lr, momentum: the run's lr eta and heavy-ball momentum mu.
        last_loss, last_loss_se: the last iterate's loss at stationarity.
        two_point_gaps, two_point_gains, two_point_gains_se: the gain at gap k,
            L(theta_t) - L((theta_t + theta_{t-k}) / 2).
        ema_decays, ema_losses, ema_losses_se: loss of EMA(beta) of the iterates.
        ladder: branches continued at lower lrs from a plateau point (``LadderBranch``).
        loss_autocov_lags, loss_autocov, loss_autocov_se: autocovariance of the loss along the run.
        weight_autocov_lags, weight_autocov, weight_autocov_se: <theta_t - m, theta_{t+k} - m> along the run.
        gradient_curvatures: Rayleigh quotients g^T H g / |g|^2 along mini-batch gradients (training loss).
        hessian_top_eigenvalue: the largest training-Hessian eigenvalue (bounds every group's curvature).
    """

    lr: float
    momentum: float = 0.0
    last_loss: float | None = None
    last_loss_se: float | None = None
    two_point_gaps: ArrayLike = ()
    two_point_gains: ArrayLike = ()
    two_point_gains_se: ArrayLike | None = None
    ema_decays: ArrayLike = ()
    ema_losses: ArrayLike = ()
    ema_losses_se: ArrayLike | None = None
    ladder: tuple[LadderBranch, ...] = ()
    loss_autocov_lags: ArrayLike = ()
    loss_autocov: ArrayLike = ()
    loss_autocov_se: ArrayLike | None = None
    weight_autocov_lags: ArrayLike = ()
    weight_autocov: ArrayLike = ()
    weight_autocov_se: ArrayLike | None = None
    gradient_curvatures: ArrayLike = ()
    hessian_top_eigenvalue: float | None = None
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        put("lr", positive_scalar("lr", self.lr))
        put("momentum", momentum_value(self.momentum))
        if self.last_loss is not None:
            put("last_loss", float(_floats("last_loss", [self.last_loss])[0]))
        put(
            "last_loss_se",
            None if self.last_loss_se is None else float(_se("last_loss_se", self.last_loss_se, 1)[0]),
        )
        for prefix, lag_min in (("two_point", 1), ("loss_autocov", 0), ("weight_autocov", 0)):
            lag_key = "two_point_gaps" if prefix == "two_point" else f"{prefix}_lags"
            val_key = "two_point_gains" if prefix == "two_point" else prefix
            put(lag_key, _steps(lag_key, getattr(self, lag_key), lag_min))
            put(val_key, _floats(val_key, getattr(self, val_key)))
            _pair(prefix, getattr(self, lag_key), getattr(self, val_key))
            put(
                f"{val_key}_se",
                _se(f"{val_key}_se", getattr(self, f"{val_key}_se"), getattr(self, lag_key).size),
            )
        put("ema_decays", np.asarray([decay_value(b) for b in _floats("ema_decays", self.ema_decays)]))
        put("ema_losses", _floats("ema_losses", self.ema_losses))
        _pair("ema", self.ema_decays, self.ema_losses)
        put("ema_losses_se", _se("ema_losses_se", self.ema_losses_se, self.ema_decays.size))
        put("ladder", tuple(self.ladder))
        if any(not isinstance(b, LadderBranch) for b in self.ladder):
            raise ValueError("ladder must be a sequence of LadderBranch(lr, ages, losses, losses_se)")
        put("gradient_curvatures", _floats("gradient_curvatures", self.gradient_curvatures, positive=True))
        if self.hessian_top_eigenvalue is not None:
            put(
                "hessian_top_eigenvalue",
                positive_scalar("hessian_top_eigenvalue", self.hessian_top_eigenvalue),
            )
        if self.gradient_curvatures.size == 1:
            raise ValueError(
                "gradient_curvatures needs >= 2 probes (its standard error comes from their spread)"
            )

    @property
    def has_loss_level(self) -> bool:
        """Whether some measurement fixes the loss level L_min (last iterate, EMA or ladder losses)."""
        return self.last_loss is not None or self.ema_decays.size > 0 or len(self.ladder) > 0

    @property
    def horizon_steps(self) -> float:
        """The longest relaxation time (in steps of the run) the measurements can resolve.

        Max over the largest gap and lag, 1/(1 - beta) of the slowest EMA, and age * lr'/lr of each branch
        (a branch at lr' observes relaxation times lr/lr' times longer than the run's).
        """
        spans = [1.0, *self.two_point_gaps, *self.loss_autocov_lags, *self.weight_autocov_lags]
        spans += [1.0 / (1.0 - b) for b in self.ema_decays]
        spans += [b.ages.max() * b.lr / self.lr for b in self.ladder if b.ages.size]
        return float(max(spans))


@dataclass(frozen=True)
class Channel:
    """One kind of measurement: its name, positions (gap, decay, age...), values and standard errors."""

    name: str
    positions: np.ndarray
    values: np.ndarray
    se: np.ndarray | None
    branch_lr: float = 0.0


def channels(meas: RunMeasurements) -> list[Channel]:
    """The non-empty measurement channels of ``meas`` (the Rayleigh constraint is handled separately)."""
    out = []
    if meas.last_loss is not None:
        se = None if meas.last_loss_se is None else np.array([meas.last_loss_se])
        out.append(Channel("last", np.zeros(1), np.array([meas.last_loss]), se))
    for name, pos, val, se in (
        ("two_point", meas.two_point_gaps, meas.two_point_gains, meas.two_point_gains_se),
        ("ema", meas.ema_decays, meas.ema_losses, meas.ema_losses_se),
        ("loss_autocov", meas.loss_autocov_lags, meas.loss_autocov, meas.loss_autocov_se),
        ("weight_autocov", meas.weight_autocov_lags, meas.weight_autocov, meas.weight_autocov_se),
    ):
        if pos.size:
            out.append(Channel(name, pos, val, se))
    for i, b in enumerate(meas.ladder):
        out.append(Channel(f"ladder_{i}", b.ages, b.losses, b.losses_se, branch_lr=b.lr))
    return out


def design(
    chans: list[Channel], curvatures: np.ndarray, lr: float, momentum: float
) -> tuple[np.ndarray, list[str]]:
    """The matrix X with measurement = X @ theta for theta = (L_min, A_1..J, B_1..J, W_1..J).

    Returns:
        X of shape (total measurements, 1 + 3 J) and the parameter names.
    """
    h = np.asarray(curvatures, dtype=np.float64)
    j = h.size
    blocks = []
    for ch in chans:
        x = np.zeros((ch.values.size, 1 + 3 * j))
        if ch.name == "last":
            x[:, 0], x[:, 1 : 1 + j] = 1.0, 1.0
        elif ch.name == "two_point":
            x[:, 1 : 1 + j] = 0.5 * (1.0 - heavy_ball.autocorrelation(ch.positions, lr, h, momentum))
        elif ch.name == "ema":
            x[:, 0] = 1.0
            x[:, 1 : 1 + j] = np.stack(
                [heavy_ball.ema_variance_ratio(b, lr, h, momentum) for b in ch.positions]
            )
        elif ch.name == "loss_autocov":
            x[:, 1 + j : 1 + 2 * j] = heavy_ball.autocorrelation(ch.positions, lr, h, momentum) ** 2
        elif ch.name == "weight_autocov":
            x[:, 1 + 2 * j :] = heavy_ball.autocorrelation(ch.positions, lr, h, momentum)
        else:
            x[:, 0] = 1.0
            x[:, 1 : 1 + j] = heavy_ball.lr_drop_variance_ratio(ch.positions, lr, ch.branch_lr, h, momentum)
        blocks.append(x)
    names = [
        "min_loss",
        *(
            f"{p}_{i}"
            for p in ("amplitude", "loss_autocov_weight", "weight_autocov_weight")
            for i in range(j)
        ),
    ]
    return np.concatenate(blocks), names


def rayleigh_row(curvatures: np.ndarray, lr: float, momentum: float, quotient: float) -> np.ndarray:
    """Coefficients c_j (h_j - q) of the A_j in the Rayleigh constraint sum_j A_j c_j (h_j - q) = 0."""
    h = np.asarray(curvatures, dtype=np.float64)
    f = heavy_ball.stationary_factor(lr, h, momentum)
    return h * (1.0 + f) / f * (h - quotient)


def rayleigh_scale(curvatures: np.ndarray, lr: float, momentum: float, amplitudes: np.ndarray) -> float:
    """sum_j A_j c_j (proportional to E|g|^2): turns the constraint row into a relative curvature error."""
    h = np.asarray(curvatures, dtype=np.float64)
    f = heavy_ball.stationary_factor(lr, h, momentum)
    return float(np.sum(amplitudes * h * (1.0 + f) / f))
