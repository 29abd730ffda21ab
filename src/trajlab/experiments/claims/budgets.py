"""Budgets of the claim experiments (sizes only; the setup is the same at every budget) and the shared runs.

One recorded base run per seed (constant lr, snapshots, checkpoints, an online EMA) feeds claims A, B, C,
E, F and G. Branches start from one of its checkpoints with the same ``train.seed`` (identical batches
after the branch point) and change only the schedule: ``lr_half`` (lr / 2), ``reduced`` (the lr the EMA
is predicted to equal, claim F) and ``cooldown`` (1/t decay, claim F).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from trajlab.experiments.claims.cache import RunSpec

BUDGET_NAMES = ("tiny", "small", "medium", "plateau", "plateau-long", "full")


@dataclass(frozen=True)
class Budget:
    """Sizes of one budget.

    Attributes:
        name: ``tiny`` (tests, synthetic data), ``small`` (2 CPU cores, about an hour), ``medium`` (the
            same, 3x longer: 1.5-2 hours), ``plateau`` (medium's network on the whole training set at a
            higher lr, so that the constant-lr phase plateaus), ``plateau-long`` (the same, 1.5x longer) or
            ``full``.
        preset: the base run's preset (``claims-<name>``).
        gaps_steps: two-point gaps k (multiples of the snapshot spacing).
        line_checkpoints: how many snapshots get line profiles (claim A).
        line_points: lrs per line profile.
        memory_offsets: batches used this many steps before a snapshot are tracked (claim B).
        future_batches: batches used after the tracked snapshots (the unseen baseline, claim B).
        heldout_batches: held-out (augmented test) batches (claims A, B).
        align_batches: mini-batches compared with the full gradient (claim G).
        pair_steps: steps of the two-trajectory runs (claim D).
        pair_offset_steps: the two starts of "same batches, different starts" are this far apart (claim D).
        plateau_windows: windows the base run is cut into to find the plateau (claim C).
        extend_to_steps: claim C also continues each base run (same seed, same batches as a longer run)
            to this many steps, to see whether a plateau is reached later (0 = no extension).
        min_window_fraction: the branch window is at least this fraction of the base run.
        nqm_steps: simulated steps per NQM check (claim H).
        nqm_seeds: simulated seeds (claim H).
        recal_batches: batches for BatchNorm recalibration of every evaluated state.
    """

    name: str
    preset: str
    gaps_steps: tuple[int, ...]
    line_checkpoints: int
    line_points: int
    memory_offsets: tuple[int, ...]
    future_batches: int
    heldout_batches: int
    align_batches: int
    pair_steps: int
    pair_offset_steps: int
    plateau_windows: int
    extend_to_steps: int
    min_window_fraction: float
    nqm_steps: int
    nqm_seeds: int
    recal_batches: int


_SMALL = Budget(
    name="small",
    preset="claims-small",
    gaps_steps=(25, 50, 100, 200, 400),
    line_checkpoints=6,
    line_points=24,
    memory_offsets=(0, 1, 2, 4, 8, 16),
    future_batches=4,
    heldout_batches=4,
    align_batches=8,
    pair_steps=200,
    pair_offset_steps=100,
    plateau_windows=10,
    extend_to_steps=1600,
    min_window_fraction=0.4,
    nqm_steps=100_000,
    nqm_seeds=8,
    recal_batches=20,
)

# The small setup, 3x longer (it did not plateau either; EXPERIMENTS.md): only sizes tied to the length
# change.
_MEDIUM = replace(
    _SMALL,
    name="medium",
    preset="claims-medium",
    gaps_steps=(50, 100, 200, 400, 800),
    pair_steps=400,
    pair_offset_steps=200,
    plateau_windows=12,
    extend_to_steps=0,
)

BUDGETS: dict[str, Budget] = {
    "tiny": Budget(
        name="tiny",
        preset="claims-tiny",
        gaps_steps=(2, 4, 8, 16),
        line_checkpoints=3,
        line_points=6,
        memory_offsets=(0, 1, 2),
        future_batches=2,
        heldout_batches=2,
        align_batches=3,
        pair_steps=8,
        pair_offset_steps=8,
        plateau_windows=6,
        extend_to_steps=64,
        min_window_fraction=0.25,
        nqm_steps=20_000,
        nqm_seeds=4,
        recal_batches=2,
    ),
    "small": _SMALL,
    "medium": _MEDIUM,
    # Medium's network and sizes on the whole 60k training set at lr 0.3 (preset claims-plateau): neither
    # small nor medium plateaued because the network kept fitting its 4096-image subset; here it cannot,
    # and the higher lr's noise floor is reached sooner (pilot: train-loss plateau from step 1400).
    "plateau": replace(_MEDIUM, name="plateau", preset="claims-plateau"),
    # The same runs 1.5x longer (4800 steps). Continued to 4800 steps, the plateau budget's three base runs
    # plateaued from step 2933 (18 windows of 267 steps, as here); the window keeps 35% of the run so that
    # it starts at step 3000, after that.
    "plateau-long": replace(
        _MEDIUM,
        name="plateau-long",
        preset="claims-plateau-long",
        plateau_windows=18,
        min_window_fraction=0.35,
    ),
    "full": Budget(
        name="full",
        preset="claims-full",
        gaps_steps=(50, 100, 250, 500, 1000, 2000),
        line_checkpoints=10,
        line_points=32,
        memory_offsets=(0, 1, 2, 4, 8, 16, 32),
        future_batches=8,
        heldout_batches=8,
        align_batches=16,
        pair_steps=1000,
        pair_offset_steps=250,
        plateau_windows=12,
        extend_to_steps=0,
        min_window_fraction=0.4,
        nqm_steps=400_000,
        nqm_seeds=16,
        recal_batches=50,
    ),
}


def get_budget(name: str) -> Budget:
    """The budget called ``name``; a clear error for anything else."""
    if name not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}; use one of {', '.join(BUDGET_NAMES)}")
    return BUDGETS[name]


def base_spec(budget: Budget, seed: int) -> RunSpec:
    """The recorded constant-lr base run of ``seed``."""
    return RunSpec(f"base-s{seed}", budget.preset, (f"train.seed={seed}",))


def branch_spec(budget: Budget, seed: int, step: int, label: str, schedule: tuple[str, ...]) -> RunSpec:
    """A branch of the base run of ``seed`` at checkpoint ``step`` with schedule overrides ``schedule``.

    The branch keeps the base run's ``train.seed`` (so the same batches follow the branch point) and its
    length (it ends where the base run ends).
    """
    base = base_spec(budget, seed)
    # Branches are evaluated post hoc from their snapshots (recalibrated BN): no online averages and
    # one evaluation at the end only.
    quiet = ("averaging.ema_decays=[]", f"train.eval_every_steps={10 * base.config().train.steps}")
    return RunSpec(f"{label}-s{seed}", budget.preset, (*base.overrides, *quiet, *schedule), (base, int(step)))


def lr_half_spec(budget: Budget, seed: int, step: int) -> RunSpec:
    """The base run continued at lr / 2 from ``step`` (claims C, E, G)."""
    lr = budget_lr(budget)
    return branch_spec(budget, seed, step, "lr_half", (f"optim.lr={lr / 2:.6g}",))


def reduced_spec(budget: Budget, seed: int, step: int, lr: float, *, label: str = "reduced") -> RunSpec:
    """The base run continued at the constant ``lr`` predicted for the EMA from ``step`` (claims C, F, G);
    ``label`` names the runs at 2x and 1/2x of it (claim F's bracket)."""
    return branch_spec(budget, seed, step, label, (f"optim.lr={lr:.3g}",))


def cooldown_spec(budget: Budget, seed: int, step: int, time_scale_steps: float) -> RunSpec:
    """The base run continued with a 1/t decay ``lr / (1 + (t - step) / T)`` from ``step`` (claim F)."""
    return branch_spec(
        budget,
        seed,
        step,
        "cooldown",
        (
            "schedule.name=inverse_time",
            f"schedule.start_step={step}",
            f"schedule.time_scale_steps={time_scale_steps:.3g}",
        ),
    )


def reorder_spec(budget: Budget, seed: int, step: int) -> RunSpec:
    """The base run continued from ``step`` for ``pair_steps`` steps with another batch order
    (``train.seed`` + 1000, claim D)."""
    base = base_spec(budget, seed)
    quiet = ("averaging.ema_decays=[]", f"train.eval_every_steps={10 * base.config().train.steps}")
    length = (f"train.steps={step + budget.pair_steps}",)
    return RunSpec(
        f"reorder-s{seed}", budget.preset, (f"train.seed={seed + 1000}", *quiet, *length), (base, int(step))
    )


def extension_spec(budget: Budget, seed: int) -> RunSpec:
    """The base run of ``seed`` continued from its last step to ``extend_to_steps`` (claim C).

    Same seed and constant lr: the batches are those of a longer base run, so base + extension is one
    longer trajectory (the online EMA restarts at the branch point).
    """
    base = base_spec(budget, seed)
    steps = base.config().train.steps
    longer = (*base.overrides, f"train.steps={budget.extend_to_steps}")
    return RunSpec(f"long-s{seed}", budget.preset, longer, (base, steps))


def budget_lr(budget: Budget) -> float:
    """The base run's (constant) learning rate."""
    return base_spec(budget, 0).config().optim.lr
