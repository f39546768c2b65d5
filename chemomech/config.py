"""The run configuration (YAML), validated with pydantic: unknown keys are errors.

Minimum keys (DESIGN §3)::

    data: path/to/stack.h5        # or .mat / py4DSTEM file; list allowed
    particles: all                # or a list of names
    model: M1                     # M0 | M1 | M2
    legendre_degree: 2            # highest degree of P_n(2X-1); "auto" = choose by validation
    output: results/

Every other key has a documented default (see `RunConfig` and `chemomech config --defaults`).
Relative paths are resolved against the folder of the config file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from chemomech.dislocations.settings import DislocationsConfig
from chemomech.exceptions import ConfigError

logger = logging.getLogger(__name__)

Int = StrictInt  # integer keys: YAML's true / 2.0 are refused, not read as 1 / 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MeshConfig(_Strict):
    """Meshing of the particle masks (units: pixels)."""

    size_px: float = Field(1.0, gt=0, description="target element size")
    simplify_tol_px: float = Field(0.25, ge=0, lt=0.5, description="contour simplification "
                                   "(< 0.5 px; every pixel centre stays inside below 0.35)")
    min_island_px: Int = Field(50, ge=1, description="drop particles smaller than this")
    fe_degree: Literal[1, 2] = Field(1, description="Lagrange degree of the displacement")

    @field_validator("fe_degree", mode="before")
    @classmethod
    def _not_bool(cls, value):  # Literal[1, 2] takes YAML's true for 1
        if isinstance(value, bool):
            raise ValueError(f"must be 1 or 2, got {value}")
        return value


class OptimiserConfig(_Strict):
    """The optimiser of the adjoint path (PETSc TAO) or the linear fast path."""

    method: Literal["tao", "linear"] = Field("tao", description="adjoint+TAO or normal equations")
    tao_type: Literal["blmvm", "bqnls", "lmvm", "nls"] = Field(
        "bqnls", description="bqnls/blmvm (quasi-Newton), nls (Newton, second-order-adjoint "
        "Hessian action), lmvm")
    initial_hessian: Literal["exact", "identity"] = Field(
        "exact", description="H0 of bqnls/blmvm: the exact Hessian G^T G (first step = Newton "
        "step) or the identity")
    gatol: float = Field(0.0, ge=0, description="absolute gradient tolerance (scaled J)")
    grtol: float = Field(0.0, ge=0, description="gradient tolerance relative to J")
    gttol: float = Field(1e-9, ge=0, description="gradient reduction |g|/|g0|")
    max_it: Int = Field(500, ge=1, description="most TAO iterations")
    cross_check: bool = Field(True, description="compare TAO with the linear fast path")
    verify_gradient: bool = Field(False, description="Taylor test of the adjoint gradient "
                                  "before fitting (rates in summary.json)")


class UncertaintyConfig(_Strict):
    """Covariance of the coefficients behind the 95 % bands."""

    method: Literal["auto", "gauss_newton", "integrated_noise", "calibrated"] = Field(
        "auto", description="auto: calibrated for model M1; for M2 (whose band is its own) "
        "the noise covariance: integrated_noise for the displacement misfit (its noise is "
        "correlated by the integration), gauss_newton for the strain misfit; calibrated: "
        "that noise covariance widened by a sandwich over pixel blocks, a second-mesh "
        "estimate of the discretisation error and, when stated, the composition errors "
        "(docs/verification.md)")
    n_draws: Int = Field(100, ge=10, description="Monte Carlo draws of integrated_noise")
    evaluation: Literal["exact", "monte_carlo"] = Field(
        "exact", description="integrated_noise in closed form (adjoint integrations; with "
        "dirichlet also of the boundary response) or by Monte Carlo (n_draws)")
    n_probes: Int = Field(20, ge=2, description="Hutchinson probes of the exact evaluation's "
                          "noise-level trace")
    block_px: float = Field(8.0, gt=0, description="calibrated: side (px) of the square "
                            "pixel blocks of the sandwich covariance")
    discretisation: Literal["coarse", "fine", "none"] = Field(
        "coarse", description="calibrated: discretisation error from a second fit on a mesh "
        "2x coarser (cheap) or 2x finer, Richardson-scaled by discretisation_rate; none")
    discretisation_rate: float = Field(1.0, gt=0, description="calibrated: assumed "
                                       "convergence rate p of the law with the mesh size")
    noise_composition: float = Field(0.0, ge=0, le=0.5, description="calibrated: std of the "
                                     "noise of the X map (sigma_X, fraction)")
    registration_px: float = Field(0.0, ge=0, le=5, description="calibrated: std (px, per "
                                   "axis) of the X-to-strain misregistration")
    blur_px: float = Field(0.0, ge=0, le=5, description="calibrated: Gaussian std (px) of the "
                           "X map's blur (resolution of the X-ray map)")
    composition_draws: Int = Field(12, ge=2, description="calibrated: Monte Carlo refits per "
                                   "X error (noise, registration)")
    bias_correction: bool = Field(True, description="calibrated: remove the bias that X noise "
                                  "causes (SIMEX-like, from the noise draws)")

    def calibrated_options_set(self) -> list[str]:
        """The calibrated-only options given a non-default value."""
        defaults = UncertaintyConfig.model_fields
        return [k for k in ("block_px", "discretisation", "discretisation_rate",
                            "noise_composition", "registration_px", "blur_px",
                            "composition_draws", "bias_correction")
                if getattr(self, k) != defaults[k].default]

    @model_validator(mode="after")
    def _calibrated_options(self):
        """The calibrated options act only with method calibrated (or auto, for M1)."""
        changed = self.calibrated_options_set()
        if changed and self.method not in ("calibrated", "auto"):
            raise ValueError(f"{changed[0]}: acts only with uncertainty.method: calibrated "
                             f"(method is {self.method})")
        return self


class GaugeConfig(_Strict):
    """A user-set gauge of the law: f_a(X) = f_a and f_c(X) = f_c."""

    X: float = Field(1.0, ge=0, le=1, description="Li fraction where f is fixed")
    f_a: float = Field(0.0, description="value of f_a at X")
    f_c: float = Field(0.0, description="value of f_c at X")


class FrameConfig(_Strict):
    """Frame check of the measured gradient (DESIGN §2)."""

    check: bool = Field(True, description="rank the frames, warn if the file's is not best")
    adopt: bool = Field(False, description="use the most compatible frame instead of the file's "
                        "(needs check: true)")

    @model_validator(mode="after")
    def _adopt_needs_check(self):
        if self.adopt and not self.check:
            raise ValueError("adopt: true needs check: true (the adopted frame is the check's "
                             "best frame)")
        return self


class RunConfig(_Strict):
    """A chemomech run: data, model and options; every default documented here."""

    data: list[Path | list[Path]] = Field(  # files, or [strain, composition] pairs
        min_length=1,
        description="stack, .mat, py4DSTEM or .npz files, or [strain, composition] pairs")
    particles: Literal["all"] | list[str] = Field("all", description="particle names to use")
    model: Literal["M0", "M1", "M2"] = Field(
        "M1", description="M0 regression, M1 elasticity, M2 M1 + slip fields")
    legendre_degree: Int | Literal["auto"] = Field(
        2, description="highest degree N of P_n(2X-1); auto: by held-out error")
    max_auto_degree: Int = Field(4, ge=0, le=8, description="largest degree tried by 'auto'")
    m0_degree: Int = Field(3, ge=0, le=8, description="degree of the direct regression M0")
    output: Path = Field(Path("results"), description="results folder")
    misfit: Literal["displacement", "strain"] = Field(
        "displacement", description="integrated displacement modulo rigid motion, or pixel "
        "strain")
    edge_exclusion_px: Int = Field(2, ge=0, description="pixels this near the edge left out")
    boundary_condition: Literal["traction_free", "dirichlet"] = Field(
        "traction_free", description="traction-free (rigid modes removed), or dirichlet: the "
        "integrated measured displacement imposed on the whole boundary, misfit over the "
        "interior (what the study's code did; M1 and M2)")
    gauge: Literal["auto", "none", "LiFePO4"] | GaugeConfig = Field(
        "auto", description="fixes the constant parts of f_a, f_c, undetermined under "
        "dirichlet with a constant stiffness (weakly determined with stiffness mixed): "
        "auto = LiFePO4 (f(1) = 0) under dirichlet, none otherwise; none (dirichlet with "
        "mixed only); or {X, f_a, f_c}: f_a(X) = f_a, f_c(X) = f_c; dirichlet only")
    fragmented_data: Literal["per_piece", "refuse"] = Field(
        "per_piece", description="valid displacement data in several connected pieces: each "
        "piece gets its own rigid modes in the misfit, or the run is refused (dirichlet "
        "always refuses)")
    stiffness: Literal["average", "mixed", "LiFePO4", "FePO4"] = Field(
        "average", description="mixed: C(X) = X C_LFP + (1 - X) C_FP (M0, M1, M2)")
    reduction: Literal["plane_stress", "plane_strain"] = Field(
        "plane_stress", description="2-D reduction of the stiffness")
    b_law: Literal["vegard"] | list[float] | None = Field(
        None, description="plane strain only: f_b(X) of the b-axis eigenstrain, 'vegard' "
        "(default there: (1 - X)(b_FP/b_LFP - 1), -3.63 % at X = 0) or shifted-Legendre "
        "coefficients")
    solver: Literal["auto", "lu", "gamg"] = Field(
        "auto", description="auto: MUMPS (LDL^T; option value lu) up to 300 000 DOFs, "
        "CG + GAMG above")
    pixel_size_nm: float | None = Field(None, gt=0, description="override the file's pixel size")
    band_level: float = Field(0.95, gt=0, lt=1, description="pointwise confidence level")
    mesh: MeshConfig = MeshConfig()
    optimiser: OptimiserConfig = OptimiserConfig()
    frame: FrameConfig = FrameConfig()
    uncertainty: UncertaintyConfig = UncertaintyConfig()
    dislocations: DislocationsConfig = DislocationsConfig()

    @field_validator("data", mode="before")
    @classmethod
    def _as_list(cls, value):
        return value if isinstance(value, list) else [value]

    @field_validator("particles")
    @classmethod
    def _some_particles(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("an empty list selects no particle (use 'all' or names)")
        if isinstance(value, list) and len(set(value)) != len(value):
            twice = sorted({n for n in value if value.count(n) > 1})
            raise ValueError(f"particles listed twice: {twice}")
        return value

    @field_validator("legendre_degree")
    @classmethod
    def _degree_range(cls, value):
        if value != "auto" and not 0 <= value <= 8:
            raise ValueError("legendre_degree must be 0..8 or 'auto'")
        return value

    @model_validator(mode="after")
    def _supported_combination(self):
        """Refuse option combinations the inversion cannot honour, before any work."""
        dirichlet = self.boundary_condition == "dirichlet"
        if self.gauge not in ("auto", "none") and not dirichlet:
            raise ValueError("gauge: a gauge applies only with boundary_condition: dirichlet "
                             "(traction-free data determine the constant parts of f_a, f_c)")
        if self.gauge == "none" and dirichlet and self.stiffness != "mixed":
            raise ValueError("gauge: none leaves the constant parts of f_a and f_c "
                             "undetermined under boundary_condition: dirichlet with a "
                             "constant stiffness (use auto or LiFePO4)")
        if dirichlet and self.legendre_degree == 0 and self.gauge != "none":
            raise ValueError("legendre_degree: 0 with boundary_condition: dirichlet leaves "
                             "nothing to fit once the gauge fixes the constant")
        if self.b_law is not None and self.reduction != "plane_strain":
            raise ValueError("b_law: acts only with reduction: plane_strain (plane stress has "
                             "sigma_bb = 0, so f_b does not enter the in-plane fields)")
        changed = self.uncertainty.calibrated_options_set()
        if changed and self.model != "M1" and self.uncertainty.method == "auto":
            raise ValueError(f"uncertainty.{changed[0]}: acts only with the calibrated band, "
                             f"which auto chooses for model M1 only (model is {self.model}; "
                             f"set uncertainty.method: calibrated)")
        if self.misfit == "strain" and self.uncertainty.method == "integrated_noise":
            raise ValueError("uncertainty.method: integrated_noise is the noise of the "
                             "integrated displacement (misfit: displacement); with misfit: "
                             "strain use auto or gauss_newton")
        if (self.model == "M0" and "legendre_degree" in self.model_fields_set
                and self.legendre_degree != self.m0_degree):
            raise ValueError(f"legendre_degree: model M0 fits the degree m0_degree "
                             f"({self.m0_degree}); set m0_degree instead")
        if dirichlet and self.model == "M0":
            raise ValueError("boundary_condition: dirichlet needs a mechanical model (M1)")
        defaults = DislocationsConfig()
        m2_options = [k for k in type(defaults).model_fields
                      if getattr(self.dislocations, k) != getattr(defaults, k)]
        if m2_options and self.model != "M2":
            raise ValueError(f"dislocations.{m2_options[0]}: acts only with model: M2 (model is "
                             f"{self.model}); set model: M2 or remove the dislocations block")
        return self

    def material_options(self) -> dict:
        """Keyword arguments of `chemomech.mechanics.materials.Material` for this run."""
        b_law = None if self.b_law in (None, "vegard") else tuple(self.b_law)
        return {"stiffness": self.stiffness, "reduction": self.reduction, "b_law": b_law}

    def gauge_object(self):
        """The gauge for `chemomech.inverse.problem.M1Model`: "auto", None or a Gauge."""
        from chemomech.inverse.identifiability import Gauge

        if self.gauge == "auto":
            return "auto"
        if self.gauge == "none":
            return None
        if self.gauge == "LiFePO4":
            return Gauge()
        return Gauge(self.gauge.X, self.gauge.f_a, self.gauge.f_c)

    def resolved(self, base: Path) -> RunConfig:
        """Copy with relative `data` and `output` paths made relative to `base`."""
        def absolute(p: Path) -> Path:
            return p if p.is_absolute() else base / p

        data = [[absolute(q) for q in p] if isinstance(p, list) else absolute(p)
                for p in self.data]
        output = self.output if self.output.is_absolute() else base / self.output
        return self.model_copy(update={"data": data, "output": output})


def parse_degree(text: str) -> int | str:
    """A command-line degree (`--degree`): an integer 0..8 or 'auto'."""
    import argparse

    if text == "auto":
        return text
    try:
        degree = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer or 'auto', got {text!r}") from None
    if not 0 <= degree <= 8:
        raise argparse.ArgumentTypeError(f"must be 0..8 or 'auto', got {degree}")
    return degree


def load_config(path: str | Path, **overrides) -> RunConfig:
    """Read and validate a YAML config; errors name the file and the offending keys."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, "
                          f"got {type(raw).__name__}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("model", "M2") != "M2" and raw.get("model") == "M2" and "dislocations" in raw:
        logger.warning("model %s (override): the config's dislocations block is not used",
                       overrides["model"])  # `invert --model M1` on an M2 config
        raw = {k: v for k, v in raw.items() if k != "dislocations"}
    raw |= overrides
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}"
                             for e in err.errors())
        raise ConfigError(f"config file {path}: {problems}") from None
    return config.resolved(path.resolve().parent)


def dump_config(config: RunConfig) -> str:
    """The config as YAML (all keys, defaults filled in), for the results folder."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
