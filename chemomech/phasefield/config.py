"""The phase-field run configuration (YAML), validated with pydantic: unknown keys are errors.

Example (every key optional; the defaults are shown by `PhaseFieldConfig` field docs)::

    output: results/phasefield
    dim: 2                       # 3: the mask extruded to geometry.thickness_nm
    mean_x: 0.5
    seed: 0
    geometry: {length_nm: 1200, width_nm: 700, pixel_size_nm: 16.6, pores: 0}
    free_energy: {interface_width_nm: 100}     # or kappa (GPa nm^2), not both
    elasticity: {rotation_rad: 0.0, stiffness: average}
    steps: {energy_tol: 1.0e-8}
    solver: {linear: lu}         # fieldsplit: FGMRES, LU on (c, mu), GAMG on u (large 3-D)

Relative paths are resolved against the folder of the config file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chemomech.exceptions import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeometryConfig(_Strict):
    """The particle: a mask from a file, or a generated superellipse platelet (nm)."""

    mask_from: str | None = Field(None, description="stack/.mat/py4DSTEM file whose mask is "
                                  "used (its pixel size too); null: generated platelet")
    particle: str | None = Field(None, description="particle name in mask_from (default first)")
    length_nm: float = Field(1200.0, gt=0, description="platelet long axis")
    width_nm: float = Field(700.0, gt=0, description="platelet short axis")
    exponent: float = Field(2.5, gt=0, description="superellipse exponent p")
    long_axis_rad: float = Field(0.0, description="long axis from image x (ccw)")
    pixel_size_nm: float = Field(16.6, gt=0, description="pixel size of the generated mask")
    pores: int = Field(0, ge=0, description="pores: through-thickness holes in 2-D, closed "
                       "voids at mid-thickness in 3-D")
    pore_radius_nm: float = Field(60.0, gt=0)
    mesh_size_px: float = Field(1.0, gt=0, description="element size (pixels)")
    thickness_nm: float | None = Field(None, gt=0, description="3-D platelet thickness "
                                       "(dim 3 only; default 300 nm)")


class FreeEnergyConfig(_Strict):
    """Regular solution and gradient energy; give kappa or interface_width_nm (not both)."""

    omega_eV: float = Field(0.115, gt=0, description="interaction per formula unit (eV)")
    temperature_K: float = Field(298.15, gt=0)
    kappa: float | None = Field(None, gt=0, description="gradient coefficient (GPa nm^2)")
    interface_width_nm: float | None = Field(None, gt=0, description="flat-interface slope "
                                             "width; sets kappa (default 100 nm)")
    log_delta: float = Field(1e-4, gt=0, lt=1e-2, description="log-term regularisation")

    @model_validator(mode="after")
    def _one_of(self):
        if self.kappa is not None and self.interface_width_nm is not None:
            raise ValueError("give free_energy.kappa or free_energy.interface_width_nm, not both")
        return self


class ElasticityConfig(_Strict):
    """Coherency elasticity (package materials; coefficients null = Vegard)."""

    enabled: bool = True
    stiffness: Literal["average", "mixed", "LiFePO4", "FePO4"] = "average"
    reduction: Literal["plane_stress", "plane_strain"] = "plane_stress"
    rotation_rad: float = Field(0.0, description="image x to crystal a (ccw)")
    coefficients_a: list[float] | None = Field(None, min_length=1, description="Legendre "
                                               "coefficients of f_a (null: Vegard)")
    coefficients_c: list[float] | None = Field(None, min_length=1)
    u_degree: Literal[1, 2] | None = Field(None, description="Lagrange degree of u; null: 1 "
                                           "in 2-D, 2 in 3-D (P1 tetrahedra lock in thin "
                                           "platelets)")


class KineticsConfig(_Strict):
    """Mobility and time discretisation."""

    diffusivity: float = Field(1.0, gt=0, description="D (nm^2 per time unit tau)")
    theta: float = Field(1.0, ge=0.5, le=1.0, description="1 backward Euler, 0.5 CN")
    mobility_floor: float = Field(1e-6, gt=0, lt=0.25)


class InitialConfig(_Strict):
    """Seeded smooth random perturbation of the mean composition."""

    amplitude: float = Field(0.05, ge=0, le=0.4)
    wavelength_nm: float | None = Field(None, gt=0, description="null: 3 x interface width")


class StepsConfig(_Strict):
    """Adaptive time stepping and the stop (chemomech.phasefield.solver.StepControl)."""

    dt_initial: float | None = Field(None, gt=0, description="null: w^2 / (100 D)")
    dt_max: float = Field(math.inf, gt=0)
    max_steps: int = Field(2000, ge=1)
    t_end: float = Field(math.inf, gt=0)
    energy_tol: float = Field(1e-8, ge=0, description="stop when dF / (area barrier) < this")
    patience: int = Field(3, ge=1)
    newton_target: int = Field(5, ge=1)
    max_dc: float | None = Field(
        None, gt=0, lt=1, description="limit dt so that the largest composition change of "
        "the last accepted step, scaled to the next dt, stays below this (dt x max_dc / "
        "max|c - c_n|; shrinks dt ahead of domain pinch-offs instead of failing Newton); "
        "null: grow by 1.5 after every easy step")
    coarse_mesh_size_px: float | None = Field(
        None, gt=0, description="coarse-to-fine (2-D only): relax first on a mesh of this "
        "element size (pixels) to the same stop, interpolate X to the run mesh "
        "(geometry.mesh_size_px) and relax there to the stop, from 0.1 x the last coarse "
        "dt; must exceed geometry.mesh_size_px and leave at least 2 elements per interface "
        "width (3 px for 16.6 nm pixels and w = 120 nm); null: the run mesh only")


class SolverConfig(_Strict):
    """Linear solver of the monolithic Newton systems (chemomech.phasefield.solver)."""

    linear: Literal["lu", "fieldsplit"] = Field(
        "lu", description="lu: MUMPS LU of the full Jacobian; fieldsplit: FGMRES with a "
        "multiplicative fieldsplit, MUMPS LU on the (c, mu) block and GAMG (rigid modes as "
        "near-null space) on the u block, for large 3-D runs")
    ksp_rtol: float = Field(1e-9, gt=0, lt=1, description="relative FGMRES tolerance "
                            "(fieldsplit only)")
    ksp_max_it: int = Field(500, ge=1, description="FGMRES iterations per Newton step "
                            "(fieldsplit only; more fails the Newton step)")


class OutputConfig(_Strict):
    """What is written besides particle.h5."""

    xdmf_every: int = Field(5, ge=0, description="write every n-th accepted step (0: none)")
    figures: bool = True
    noise_strain: float = Field(0.0, ge=0, description="Gaussian noise on the stored strain")
    noise_composition: float = Field(0.0, ge=0, description="Gaussian noise on stored X")
    name: str = Field("phasefield", min_length=1, description="particle name in the stack")
    thickness_points: int = Field(8, ge=1, description="Gauss points along the beam for the "
                                  "3-D thickness projection")


class PhaseFieldConfig(_Strict):
    """A phase-field run: `chemomech phasefield [config.yaml] --output DIR`."""

    output: str = "results/phasefield"
    dim: Literal[2, 3] = 2
    mean_x: float = Field(0.5, gt=0, lt=1)
    seed: int = Field(0, ge=0)
    geometry: GeometryConfig = GeometryConfig()
    free_energy: FreeEnergyConfig = FreeEnergyConfig()
    elasticity: ElasticityConfig = ElasticityConfig()
    kinetics: KineticsConfig = KineticsConfig()
    initial: InitialConfig = InitialConfig()
    steps: StepsConfig = StepsConfig()
    solver: SolverConfig = SolverConfig()
    outputs: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _supported(self):
        if self.dim == 2 and self.geometry.thickness_nm is not None:
            raise ValueError("geometry.thickness_nm is only used with dim: 3")
        if self.dim == 2 and self.geometry.mask_from is not None and self.geometry.pores:
            raise ValueError("geometry.pores in 2-D cuts holes in the generated platelet, not "
                             "in geometry.mask_from (in 3-D pores are voids in any mask)")
        coarse = self.steps.coarse_mesh_size_px
        if coarse is not None and self.dim != 2:
            raise ValueError("steps.coarse_mesh_size_px is implemented for dim: 2 only")
        if coarse is not None and coarse <= self.geometry.mesh_size_px:
            raise ValueError(f"steps.coarse_mesh_size_px ({coarse}) must exceed "
                             f"geometry.mesh_size_px ({self.geometry.mesh_size_px})")
        if "/" in self.outputs.name:
            raise ValueError("outputs.name must not contain '/'")
        return self


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "config"
        lines.append(f"{key}: {e['msg']}")
    return "; ".join(lines)


def load_phasefield_config(path: str | Path | None = None, **overrides) -> PhaseFieldConfig:
    """Read and validate a YAML config (None: all defaults); `overrides` are dotted keys
    ("geometry.pores") or top-level keys set on top, None values ignored (an override of
    kappa drops the file's interface_width_nm and vice versa).  A relative ``output`` is
    resolved against the config's folder, an ``output`` override against the cwd."""
    data: dict = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read {path}: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys")
        base = path.resolve().parent
    exclusive = {"free_energy.kappa": "interface_width_nm",
                 "free_energy.interface_width_nm": "kappa"}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in exclusive and isinstance(data.get("free_energy"), dict):
            data["free_energy"].pop(exclusive[key], None)  # the override replaces the other
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{p}: must be a mapping")
        node[leaf] = value
    try:
        config = PhaseFieldConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{path or 'config'}: {_format(err)}") from None
    updates = {"output": str((base / config.output) if "output" not in overrides or
                             overrides["output"] is None else Path(config.output))}
    if config.geometry.mask_from is not None:
        mask_path = base / config.geometry.mask_from
        if not mask_path.exists():
            raise ConfigError(f"geometry.mask_from: file {mask_path} does not exist")
        updates["geometry"] = config.geometry.model_copy(update={"mask_from": str(mask_path)})
    return config.model_copy(update=updates)
