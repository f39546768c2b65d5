"""The M2 stage of the pipeline: on M1's meshes and factorisations (or its own, standalone), fit
M2 with alpha by the configured rule and gather the maps."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from mpi4py import MPI

from chemomech.dislocations.alpha import (
    AlphaChoice,
    choose_alpha,
    estimate_strain_noise,
    noise_misfit,
)
from chemomech.dislocations.bands import m2_covariance
from chemomech.dislocations.density import mean_density, slip_maps
from chemomech.dislocations.lattice import lattice_data, lattice_maps
from chemomech.dislocations.model import M2FitResult, M2Model
from chemomech.dislocations.settings import Regularisation
from chemomech.exceptions import InputError
from chemomech.mechanics.materials import Material

if TYPE_CHECKING:
    from chemomech.config import RunConfig

logger = logging.getLogger(__name__)


@dataclass
class M2Outcome:
    """What the M2 stage hands to the report (world rank 0 holds the gathered images)."""

    fit: M2FitResult
    alpha: AlphaChoice | None
    images: dict[str, dict[str, np.ndarray]]  # name -> `lattice_maps` (u_x u_y, lattice
    #   strain e_xx e_yy e_xy, theta, plastic_xx _yy _xy, meshed_mask), gamma_<s>, density_<s>,
    #   density_total
    mean_density_um2: dict[str, float]  # name -> particle mean of density_total
    summary: dict  # the summary.json block "dislocations"
    timings_s: dict[str, float]
    covariance: np.ndarray | None = None  # Cov(a) of `chemomech.dislocations.bands` or None
    sigma2: float | None = None


@dataclass
class M1Stage:
    """What M2 reuses of the M1 stage: this rank's particle indices, meshes and the M1Model
    (factorised operators and basis loads), the M1 coefficients and their degree."""

    particle_indices: list[int]
    meshes: list
    model: object  # chemomech.inverse.problem.M1Model
    coefficients: np.ndarray | None = None


def build_m1_stage(prepared: Sequence, config: RunConfig, comm: MPI.Comm) -> M1Stage:
    """Standalone M1 pieces for M2 (tests, benchmarks): particle groups, meshes, setups with the
    strain misfit (and the config's boundary condition: Dirichlet imposes the prepared
    displacement) and the M1Model (the config's material and gauge), the coefficients by M1's
    linear fast path."""
    from chemomech.inverse.particle import particle_setup, split_for_particles
    from chemomech.inverse.problem import M1Model
    from chemomech.mechanics.mesh import mesh_from_mask

    if config.legendre_degree == "auto":
        raise InputError("legendre_degree: auto needs the M1 stage", field="legendre_degree")
    group, mine = split_for_particles(comm, len(prepared))
    setups, meshes = [], []
    for k in mine:
        p = prepared[k]
        pm = mesh_from_mask(p.data.mask, p.data.pixel_size_nm, group,
                            mesh_size_px=config.mesh.size_px,
                            simplify_tol_px=config.mesh.simplify_tol_px,
                            min_island_px=config.mesh.min_island_px)
        meshes.append(pm)
        strain = np.stack([p.strain_image[c] for c in ("e_xx", "e_yy", "e_xy")], -1)
        setups.append(particle_setup(p.data.name, pm, p.data.X, p.data.rotation_rad,
                                     strain=strain, edge_exclusion_px=config.edge_exclusion_px,
                                     fe_degree=config.mesh.fe_degree,
                                     boundary_condition=config.boundary_condition,
                                     boundary_displacement=p.displacement,
                                     fragmented_data=config.fragmented_data))
    material = Material(**config.material_options())
    model = M1Model(setups, degree=config.legendre_degree, material=material, comm=comm,
                    solver=config.solver, gauge=config.gauge_object())
    coefficients = model.fit(method="linear", with_normal_matrix=False).coefficients
    return M1Stage(mine, meshes, model, coefficients)


def m2_model(prepared: Sequence, stage: M1Stage, config: RunConfig) -> M2Model:
    """The M2Model of the config's ``dislocations`` block on the M1 stage's particles."""
    settings = config.dislocations
    reg = settings.regularisation
    data = [lattice_data(prepared[k], pm, config.edge_exclusion_px)
            for k, pm in zip(stage.particle_indices, stage.meshes, strict=True)]
    regularisation = Regularisation(reg.kind, 1.0 if reg.alpha == "auto" else float(reg.alpha),
                                    reg.tv_epsilon_per_nm)
    model = M2Model(stage.model, data, settings.slip_systems, regularisation,
                    theta_weight=settings.theta_weight)
    if stage.coefficients is not None:
        model.coefficients = np.asarray(stage.coefficients, float).copy()
    return model


def _noise_target(model: M2Model, config: RunConfig, prepared, mine
                  ) -> tuple[float, float]:
    """(target misfit of the discrepancy rule, strain-noise std)."""
    noise = config.dislocations.noise_strain
    if noise == "m1":  # the M1 law's lattice misfit (no slip) taken as noise: an upper bound
        J_m1 = sum(model.misfits().values())
        n_free = model.gauge_transform()[0].shape[1]
        unit = noise_misfit(model, 1.0) - 0.5 * n_free  # E J / sigma^2
        sigma = float(np.sqrt(J_m1 / max(unit, 1e-300)))
    elif noise == "auto":
        local = [estimate_strain_noise(prepared[k].data) for k in mine]
        sigma = float(np.median([e for part in model.world.allgather(local) for e in part]))
    else:
        sigma = float(noise)
    return noise_misfit(model, sigma), sigma


def run_m2(prepared: Sequence, config: RunConfig, comm: MPI.Comm = MPI.COMM_WORLD,
           m1: M1Stage | None = None) -> M2Outcome:
    """The M2 stage: fit M2 (alpha by the configured rule), gather the lattice, slip and
    density maps to world rank 0 and summarise (`M2Outcome`).

    `prepared`: `chemomech.correlative.prepared.PreparedParticle` s; `config`: the RunConfig
    (its ``dislocations`` block, `chemomech.dislocations.settings.DislocationsConfig`, and
    edge_exclusion_px; mesh, stiffness, solver, legendre_degree when standalone); `m1`: the
    M1 stage's meshes, factorised model and coefficients (the pipeline passes them), or None:
    mesh and factorise here, start from M1's linear fast path.
    """
    settings = config.dislocations
    t0 = time.perf_counter()
    stage = m1 if m1 is not None else build_m1_stage(prepared, config, comm)
    t_m1 = time.perf_counter() - t0
    model = m2_model(prepared, stage, config)
    group, mine = model.group, stage.particle_indices
    fit_options = {"tao_type": settings.tao_type, "max_it": settings.max_it,
                   "grtol": settings.grtol, "stagnation_rtol": settings.stagnation_rtol,
                   "stagnation_window": settings.stagnation_window}
    reg = settings.regularisation
    choice = None
    t1 = time.perf_counter()
    if reg.alpha == "auto":
        target, sigma = (None, None)
        if reg.rule == "discrepancy":
            target, sigma = _noise_target(model, config, prepared, mine)
        choice, fit = choose_alpha(model, reg.rule, target_misfit=target,
                                   decades=settings.alpha_decades, tau=settings.discrepancy_tau,
                                   **fit_options)
        choice.noise_strain = sigma
    else:
        fit = model.fit(**fit_options)
    t_fit = time.perf_counter() - t1
    t_forward = model.forward_solve_time()
    cov = sigma2 = None
    band = {"method": "none (dislocations.bands: false)"}
    if settings.bands:
        cov, sigma2, info = m2_covariance(model)
        band = {"method": "joint Gauss-Newton over (a, gamma), marginalised on a",
                "noise_sigma": float(np.sqrt(sigma2)), **info}

    images: dict[str, dict[str, np.ndarray]] = {}
    for i, (k, pm) in enumerate(zip(mine, stage.meshes, strict=True)):
        p = prepared[k]
        maps = lattice_maps(model.displacement(i), model.gammas[i], model.particles[i].tensors,
                            pm, p.data.mask.shape)
        maps |= slip_maps(model, i, pm, p.data.mask.shape)
        if group.rank == 0:
            images[p.data.name] = maps
    gathered = comm.gather(images if group.rank == 0 else {}, root=0)
    images = {k: v for d in (gathered or []) for k, v in d.items()}
    densities = {}
    for p in prepared if comm.rank == 0 else []:
        maps = images[p.data.name]
        densities[p.data.name] = mean_density(maps["density_total"], maps["meshed_mask"])
    mean_all = float(np.mean(list(densities.values()))) if densities else float("nan")
    labels = [s.label for s in model.systems]
    summary = {"system": labels[0] if len(labels) == 1 else labels,
               "systems": {s.label: s.notation() for s in model.systems},
               "misfit": "lattice distortion (e_xx, e_yy, e_xy, theta; "
                         f"theta_weight {settings.theta_weight:g})",
               "mean_density_um2": mean_all,
               "per_particle_mean_density_um2": densities,
               "regularisation": {"kind": reg.kind, "alpha": model.reg.alpha,
                                  "rule": choice.rule if choice else "fixed"},
               "fit": fit.summary(), "band": band}
    if choice is not None:
        summary["regularisation"] |= {"target_misfit": choice.target_misfit,
                                      "noise_strain": choice.noise_strain,
                                      "curve": choice.curve}
    iterations = sum(c["iterations"] for c in choice.curve) if choice else fit.iterations
    timings = {"m2_m1_stage": t_m1, "m2_fit": t_fit, "m2_forward_solve": t_forward,
               "m2_band": band.get("time_s", 0.0),
               "m2_iterations": float(iterations), "m2_total": time.perf_counter() - t0}
    if comm.rank == 0:
        logger.info("M2 (%s): alpha %.3g (%s), mean density %.4g um^-2, %.1f s",
                    ", ".join(labels), model.reg.alpha, summary["regularisation"]["rule"],
                    mean_all, timings["m2_total"])
    return M2Outcome(fit, choice, images, densities, summary, timings, cov, sigma2)
