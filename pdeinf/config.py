"""Profiles (smoke, quick, faithful, faithful-full, paper) as frozen dataclasses, and the PDE /
class registry.

`PDEINF_PROFILE` overrides the default profile name wherever `get_profile()` is called
without an explicit name (the notebooks and nbval use this).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from pdeinf.errors import InputError


@dataclass(frozen=True)
class PDESpec:
    """Every per-PDE fact in one place (what used to be `if pde == "CE"` branches).

    Model channels are the conserved / velocity fields the surrogates see, `[..., C, H, W]`
    with x along W (the last axis) and y along H. `vector_axes` maps each vector-component
    channel to the grid axis it points along (-1 = W = x, -2 = H = y); every other channel is a
    scalar. The assignment was checked on the stored data (NS: spectral divergence of (u, v) is
    at round-off with u along W and not with the swap; CE: continuity residual), see
    tests/test_symmetry.py.
    """

    name: str
    classes: tuple[str, str, str]  # the three initial-condition classes, in the order used everywhere
    channel_names: tuple[str, ...]  # model channels
    vector_axes: dict[int, int]  # model channel -> grid axis it points along (-1: W/x, -2: H/y)
    stored_variables: tuple[str, ...]  # variables in the PDEGym files, in stored channel order
    file_kind: str  # PDEGym chunk file stem: data_K.nc (CE) or velocity_K.nc (NS)
    gamma: float | None = None  # ratio of specific heats (CE)
    density_channel: int | None = None  # model channel of the mass density (CE)
    energy_channel: int | None = None  # model channel of the total energy density (CE)

    @property
    def channels(self) -> int:
        return len(self.channel_names)

    @property
    def compressible(self) -> bool:
        return self.density_channel is not None


PDE_SPECS: dict[str, PDESpec] = {
    "CE": PDESpec(
        name="CE",
        classes=("CE-RP", "CE-CRP", "CE-RPUI"),
        channel_names=("rho", "rho_vx", "rho_vy", "E"),
        vector_axes={1: -1, 2: -2},
        stored_variables=("rho", "vx", "vy", "p", "E"),
        file_kind="data",
        gamma=1.4,
        density_channel=0,
        energy_channel=3,
    ),
    "NS": PDESpec(
        name="NS",
        classes=("NS-BB", "NS-Gauss", "NS-Sines"),
        channel_names=("u", "v"),
        vector_axes={0: -1, 1: -2},
        stored_variables=("u", "v", "tracer"),
        file_kind="velocity",
    ),
}

#: The three initial-condition classes of each PDE, in the order used everywhere
#: (class index c in influence batches, the c axes of labelled arrays). Views of PDE_SPECS.
PDE_CLASSES: dict[str, tuple[str, str, str]] = {k: v.classes for k, v in PDE_SPECS.items()}
#: Model channels per PDE: CE conserved (rho, rho*vx, rho*vy, E); NS velocity (u, v).
PDE_CHANNELS: dict[str, int] = {k: v.channels for k, v in PDE_SPECS.items()}
CHANNEL_NAMES: dict[str, tuple[str, ...]] = {k: v.channel_names for k, v in PDE_SPECS.items()}
#: Smallest stored grid (H = W) anything accepts, shared by generation, models and training:
#: the UNets need >= 8 (their bottleneck is at least 4 x 4 after one 2x down-sampling).
MIN_RESOLUTION = 8

DATASETS: tuple[str, ...] = PDE_CLASSES["CE"] + PDE_CLASSES["NS"]
MODELS: tuple[str, ...] = ("unet", "vit")
PROFILE_NAMES: tuple[str, ...] = ("smoke", "quick", "faithful", "faithful-full", "paper")
#: The profile whose figures and findings are committed (figures/); the others write theirs
#: under results/ (`paths.figures_dir`), the paper profile under figures/paper/.
COMMITTED_PROFILE = "faithful"
#: What each profile's numbers are, printed on its figures' stamps and in its findings.
REGIME_LABELS: dict[str, str] = {
    "smoke": "test run: not the paper's regime",
    "quick": "tour: not the paper's regime",
    "faithful": "the paper's regime as far as a 2-core CPU allows, with stated cuts",
    "faithful-full": "the paper's regime as far as a 2-core CPU allows",
    "paper": "the paper's regime",
}


def pde_of(dataset: str) -> str:
    """`"CE-RP" -> "CE"`; raises ValueError naming the unknown data set."""
    for pde, classes in PDE_CLASSES.items():
        if dataset in classes:
            return pde
    raise InputError(f"unknown data set {dataset!r}; expected one of {', '.join(DATASETS)}")


def pde_spec(pde: str) -> PDESpec:
    """The PDESpec of `pde` ("CE" or "NS"); InputError naming an unknown PDE."""
    return PDE_SPECS[check_pde(pde)]


def check_pde(pde: str) -> str:
    """`pde` if it names a PDE, else InputError (a ValueError) naming it."""
    if pde not in PDE_CLASSES:
        raise InputError(f"pde: unknown PDE {pde!r}; expected one of {', '.join(PDE_CLASSES)}")
    return pde


def check_model(model: str) -> str:
    """`model` if it names a surrogate architecture, else InputError naming it."""
    if model not in MODELS:
        raise InputError(f"model: unknown model {model!r}; expected one of {', '.join(MODELS)}")
    return model


@dataclass(frozen=True)
class Profile:
    """Every size knob of the study. Pure data: stages are functions of (profile, ...)."""

    name: str
    resolution: int  # stored grid (H = W), the models' input size
    solver_resolution: int  # grid the look-alike data are computed on, then block-averaged
    n_trajectories: int  # generated trajectories per class
    model_size: str  # "smoke" | "quick" | "paper" (see pdeinf.models.build)
    epochs: dict[str, int]  # per PDE
    checkpoints: dict[str, tuple[int, ...]]  # epochs after which a checkpoint is kept
    seeds: tuple[int, ...]
    n_influence_batches: int  # test trajectories per class used as influence batches
    pdes: tuple[str, ...] = ("CE", "NS")
    models: tuple[str, ...] = MODELS
    batch_size: int = 48
    lr: float = 5e-4
    weight_decay: float = 1e-4
    t_max: int = 17  # snapshots kept per trajectory (16 transitions)
    split: tuple[float, float, float] = (0.65, 0.05, 0.30)  # train/val/test fractions per class
    seed_paper_batches: int = 6  # influence batches of the seed paper's figures (final checkpoint)
    # The seed paper's estimator is the full-space Krylov solve; its cost is the number of CG
    # iterations (tens to hundreds at rtol 1.5e-2) times one subspace matrix, beyond a 2-core
    # budget at quick: there the seed paper's aggregations use the exact subspace estimator, and
    # notebook 12 measures what the estimator changes on a subset (captions say which is used).
    seed_paper_estimator: str = "full-space"
    fullspace_damping: float = 1e-4  # lambda of the seed paper's (J^T J + lambda I), the weight decay
    fullspace_rtol: tuple[tuple[str, float], ...] = (("unet", 1.5e-2), ("vit", 5e-2))  # CG rtol per model
    model_variant: str = "authors"  # "authors" (as lanl/PDEHats) | "pdeinf" (pdeinf's own UNet / ViT, which predict increments)
    residual: bool = False  # False: predict u_{t+1} directly (the authors); True: u_t + f(u_t)
    damping: float = 1e-6
    energy_tol: float = 1e-4
    # --- symmetry study (follow-up + Lie derivative), final checkpoint
    symmetry_batches: int = 1  # influence batches per seed for orbit influence / equivariance
    symmetry_shifts: tuple[int, ...] = (1, 2, 4, 8)  # circular shifts along each axis (grid cells)
    symmetry_box: int = 0  # orbit influence on the box grid of joint shifts (a, b), 1 <= a, b <= box
    symmetry_pairs: tuple[tuple[str, str], ...] | None = None  # (PDE, model) pairs; None: all
    symmetry_orbit_epochs: tuple[int, ...] | None = None  # orbit influence across these epochs; None: all

    def pairs(self, subset: tuple[tuple[str, str], ...] | None = None) -> list[tuple[str, str]]:
        """The (PDE, model) pairs of the profile, or those of `subset` (a study's stated subset)."""
        every = [(pde, model) for pde in self.pdes for model in self.models]
        return every if subset is None else [p for p in every if tuple(p) in set(map(tuple, subset))]
    # --- interventions (training recipes), same data and optimizer steps as one-step
    recipes: tuple[str, ...] = ("one-step", "pushforward", "noise", "multistep", "augment", "physics")
    recipe_pairs: tuple[tuple[str, str], ...] | None = None  # (PDE, model) pairs; None: all
    recipe_batches: int | None = None  # influence batches per checkpoint; None: n_influence_batches
    recipe_seeds: tuple[int, ...] | None = None  # seeds of the interventions and ablation; None: all

    def study_seeds(self) -> tuple[int, ...]:
        """The seeds of the interventions and ablation studies (`recipe_seeds`, else `seeds`)."""
        return tuple(self.seeds if self.recipe_seeds is None else self.recipe_seeds)
    # --- the regime ladder (ours): the seed paper's headline numbers from a small, briefly
    # trained model to this profile's regime, on one pair (pipeline.ladder); None: no ladder
    ladder_pair: tuple[str, str] | None = None
    ladder_widths: tuple[int, ...] = ()  # ViT width / UNet base of the capacity axis
    ladder_trajectories: tuple[int, ...] = ()  # training trajectories per class of the data axis
    ladder_seeds: tuple[int, ...] = (10, 35, 42)
    # --- ablation of our model departures (increment vs direct; pdeinf's own models vs the authors')
    ablation_pairs: tuple[tuple[str, str], ...] | None = None  # None: every pair
    # --- estimator study (what lambda and the Krylov tolerance do), one batch per seed, on a
    # stated subset: (PDE, model) pairs (None: all), transitions per class kept from batch 0
    # (None: all), Krylov sweeps per column (None: the solver's default), seeds with a full-space
    # side (None: all)
    estimator_lambdas: tuple[float, ...] = (1e-8, 1e-6, 1e-4, 1e-2, 1e-1)
    estimator_rtols: tuple[float, ...] = (5e-2, 1.5e-2, 1e-3)
    estimator_pairs: tuple[tuple[str, str], ...] | None = None
    estimator_times: int | None = None
    estimator_maxiter: int | None = None
    estimator_fullspace_seeds: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def rtol_for(self, model: str) -> float:
        """The seed paper's Krylov tolerance for `model` (1.5e-2 UNet, 5e-2 ViT)."""
        return dict(self.fullspace_rtol)[model]


#: Epochs of the faithful profile: enough optimizer steps for the validation SMSE to plateau
#: (pdeinf.analysis.regime.plateau_reached, checked on every run's history).
FAITHFUL_EPOCHS = 40
FAITHFUL_CHECKPOINTS = (1, 10, 20, 30, 40)
FAITHFUL_FULL_EPOCHS = 60
FAITHFUL_FULL_CHECKPOINTS = (1, 10, 20, 30, 40, 50, 60)

_FAITHFUL_FULL = Profile(
    name="faithful-full",
    # the paper's regime as far as a 2-core CPU goes, without the 2-hour cuts of "faithful"
    resolution=32,
    solver_resolution=64,
    # 48 trajectories per class: 32 train / 2 validation / 14 test, so that 6 influence
    # batches (one test trajectory per class each) never repeat a trajectory
    n_trajectories=48,
    model_size="faithful",  # P/M >= 1 for every pair (pdeinf.models)
    epochs={"CE": FAITHFUL_FULL_EPOCHS, "NS": FAITHFUL_FULL_EPOCHS},
    checkpoints={"CE": FAITHFUL_FULL_CHECKPOINTS, "NS": FAITHFUL_FULL_CHECKPOINTS},
    seeds=(10, 35, 42, 7, 99),
    n_influence_batches=2,
    seed_paper_batches=6,
    seed_paper_estimator="full-space",
    # the follow-up's translation set at 32x32: every axis shift (signed -16..15) and the
    # box grid {0..4}^2 (its {0..17}^2 at 128x128, scaled)
    symmetry_shifts=tuple(range(1, 32)),
    symmetry_box=4,
    symmetry_pairs=(("CE", "vit"), ("NS", "vit")),
    symmetry_orbit_epochs=(1, FAITHFUL_FULL_EPOCHS),
    recipe_pairs=(("CE", "vit"),),
    recipe_batches=1,
    recipe_seeds=(10, 35, 42),
    ablation_pairs=(("CE", "vit"),),
    # P/M 0.43 / 1.14 / 2.82 (CE) and 2 / 8 / 32 training trajectories per class
    ladder_pair=("CE", "vit"),
    ladder_widths=(48, 80, 128),
    ladder_trajectories=(2, 8, 32),
    estimator_times=5,
    estimator_maxiter=30,
    estimator_fullspace_seeds=1,
)

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        resolution=16,
        solver_resolution=32,
        n_trajectories=8,
        model_size="smoke",
        epochs={"CE": 2, "NS": 2},
        checkpoints={"CE": (1, 2), "NS": (1, 2)},
        seeds=(10,),
        n_influence_batches=1,
        seed_paper_batches=1,
        seed_paper_estimator="subspace",
        symmetry_shifts=(1, 4),
        symmetry_pairs=(("CE", "unet"), ("NS", "vit")),
        recipes=("one-step", "pushforward"),
        recipe_pairs=(("CE", "unet"),),
        ablation_pairs=(("CE", "unet"),),
        ladder_pair=("CE", "vit"),
        ladder_widths=(8,),
        ladder_trajectories=(1,),
        ladder_seeds=(10,),
        estimator_lambdas=(1e-6, 1e-2),
        estimator_rtols=(5e-2,),
        estimator_pairs=(("CE", "unet"),),
        estimator_times=4,
        estimator_maxiter=12,
        estimator_fullspace_seeds=1,
    ),
    "quick": Profile(
        name="quick",
        resolution=32,
        solver_resolution=64,
        n_trajectories=24,
        model_size="quick",
        # a tour of the whole study sized for about half an hour on 2 cores: 13 epochs (208 optimizer
        # steps per run), P/M below 1 for CE, the subspace estimator for the seed paper's
        # figures, stated subsets for the follow-up and our studies; never the committed figures
        epochs={"CE": 13, "NS": 13},
        checkpoints={"CE": (1, 5, 9, 13), "NS": (1, 5, 9, 13)},
        seeds=(10, 35, 42),
        n_influence_batches=1,
        seed_paper_batches=3,
        seed_paper_estimator="subspace",
        symmetry_shifts=(1,),
        symmetry_pairs=(("CE", "vit"), ("NS", "vit")),
        symmetry_orbit_epochs=(1,),
        recipes=("one-step", "pushforward"),
        recipe_pairs=(("CE", "vit"),),
        recipe_batches=1,
        ablation_pairs=(),
        # the estimator study of one pair in 1-2 minutes: the full-space side on one seed, 5
        # transitions per class (P/M of the quick ViT 2.4 on that batch), at most 30 sweeps
        estimator_pairs=(("CE", "vit"),),
        estimator_times=5,
        estimator_maxiter=30,
        estimator_fullspace_seeds=1,
    ),
    # the paper's regime on 2 cores: P/M >= 1, the seed paper's estimator on its 6 batches and 5
    # seeds (the paper's 10, 35, 42 first) kept; 40 epochs (1,280 steps; the UNets plateau by
    # then) and stated subsets for the follow-up and our studies; the regime ladder of
    # faithful-full on its 40 epochs and the paper's 3 seeds
    "faithful": dataclasses.replace(
        _FAITHFUL_FULL,
        name="faithful",
        epochs={"CE": FAITHFUL_EPOCHS, "NS": FAITHFUL_EPOCHS},
        checkpoints={"CE": FAITHFUL_CHECKPOINTS, "NS": FAITHFUL_CHECKPOINTS},
        seeds=(10, 35, 42, 7, 99),
        n_influence_batches=1,
        # signed axis shifts +-1, 2, 4, 8 and 16 of the follow-up's translation set at 32x32
        symmetry_shifts=(1, 2, 4, 8, 16, 24, 28, 30, 31),
        symmetry_box=0,
        symmetry_orbit_epochs=(1, FAITHFUL_EPOCHS),
        recipes=("one-step", "pushforward"),
        recipe_seeds=None,
        ablation_pairs=(),
        # the regime ladder as in faithful-full: 4 extra CE-ViT runs per ladder seed
    ),
    "faithful-full": _FAITHFUL_FULL,
    "paper": Profile(
        name="paper",
        resolution=128,
        solver_resolution=256,
        n_trajectories=1000,
        model_size="paper",
        epochs={"CE": 150, "NS": 100},
        checkpoints={
            "CE": (1, 15, 30, 45, 60, 75, 90, 105, 120, 135, 150),
            "NS": (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100),
        },
        seeds=(10, 35, 42),
        n_influence_batches=18,
    ),
}


def get_profile(name: Profile | str | None = None) -> Profile:
    """A Profile passes through; a name picks one; None gives `$PDEINF_PROFILE`, else "quick".
    Raises InputError (a ValueError) naming an unknown profile."""
    if isinstance(name, Profile):
        return name
    if name is not None and not isinstance(name, str):
        raise InputError(f"profile: expected a Profile or a name, got {type(name).__name__}")
    name = name or os.environ.get("PDEINF_PROFILE") or "quick"
    try:
        return PROFILES[name]
    except KeyError:
        raise InputError(
            f"profile: unknown profile {name!r}; expected one of {', '.join(PROFILES)}"
        ) from None
