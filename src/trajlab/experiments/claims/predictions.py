"""What the noisy quadratic model predicts for the claim runs: the constant lr an EMA equals (claim F's
reduced-lr branch) and the time scale of the 1/t cooldown SWA equals."""

from __future__ import annotations

from trajlab.experiments.claims.budgets import Budget, base_spec


def predicted_lrs(b: Budget, h: float) -> dict[str, float]:
    """The reduced lr of the EMA and the 1/t cooldown time scale predicted by the NQM for curvature h.

    EMA(beta) over SGD(lr, momentum mu): the constant lr with the same stationary variance along h
    (:func:`trajlab.theory.equivalent_lr`, exact with momentum; ~ lr / (1 + lr_eff h tau_e) with
    lr_eff = lr / (1 - mu)). SWA from T_b: SGD with lr_eff,t h ~ 1 / (t - T_b), realised as the
    inverse-time schedule lr / (1 + (t - T_b) / T) with T = (1 - mu) / (lr h), the relaxation time of
    SGD at lr (the two agree for t - T_b >> T).
    """
    from trajlab.averaging import EMA
    from trajlab.theory import equivalent_lr

    cfg = base_spec(b, 0).config()
    lr, mu = cfg.optim.lr, cfg.optim.momentum
    decay = cfg.averaging.ema_decays[0]
    first_order = lr / (1 + lr / (1 - mu) * h / (1 - decay))
    try:
        reduced, note = float(equivalent_lr(EMA(decay), lr, h, momentum=mu)), "exact (equivalent_lr)"
    except ValueError:  # lr h beyond the NQM's stability limit: only the first-order form is defined
        reduced, note = first_order, "first order: lr h is beyond the NQM's stability limit"
    return {
        "reduced_lr_formula": note,
        "lr": lr,
        "momentum": mu,
        "ema_decay": decay,
        "ema_horizon_steps": 1 / (1 - decay),
        "h": h,
        "reduced_lr": float(f"{reduced:.3g}"),
        "reduced_lr_first_order": first_order,
        "cooldown_time_scale_steps": float(f"{max((1 - mu) / (lr * h), 1e-3):.3g}"),
    }
