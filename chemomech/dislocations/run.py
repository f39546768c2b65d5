"""The M2 stage of the pipeline: mesh, fit M2 with alpha by the configured rule, gather maps."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from chemomech.dislocations.alpha import (
    AlphaChoice,
    choose_alpha,
    estimate_strain_noise,
    noise_misfit,
)
from chemomech.dislocations.density import mean_density, slip_maps
from chemomech.dislocations.model import M2FitResult, M2Model
from chemomech.dislocations.settings import M2Settings, Regularisation
from chemomech.exceptions import InputError
from chemomech.mechanics.materials import Material

logger = logging.getLogger(__name__)


@dataclass
class M2Outcome:
    """What the M2 stage hands to the report (world rank 0 holds the gathered images)."""

    fit: M2FitResult
    alpha: AlphaChoice | None
    images: dict[str, dict[str, np.ndarray]]  # name -> u_x u_y e_xx e_yy e_xy meshed_mask,
    #                                            gamma_<s>, density_<s>, density_total
    mean_density_um2: dict[str, float]  # name -> particle mean of density_total
    summary: dict  # the summary.json block "dislocations"
    timings_s: dict[str, float]


def _settings_value(config, key: str, default):
    return getattr(config, key, default) if config is not None else default


def _build_setups(prepared, config, comm):
    """Particle groups, meshes and M1 setups exactly as `chemomech.pipeline.run_m1` builds them."""
    from chemomech.inverse.problem import particle_setup, split_for_particles
    from chemomech.mechanics.mesh import mesh_from_mask

    mesh_cfg = _settings_value(config, "mesh", None)
    misfit = _settings_value(config, "misfit", "displacement")
    edge = _settings_value(config, "edge_exclusion_px", 2)
    group, mine = split_for_particles(comm, len(prepared))
    setups, meshes = [], []
    for k in mine:
        p = prepared[k]
        pm = mesh_from_mask(p.data.mask, p.data.pixel_size_nm, group,
                            mesh_size_px=getattr(mesh_cfg, "size_px", 1.0),
                            simplify_tol_px=getattr(mesh_cfg, "simplify_tol_px", 0.25),
                            min_island_px=getattr(mesh_cfg, "min_island_px", 50))
        meshes.append(pm)
        if misfit == "displacement":
            if p.displacement is None:
                raise InputError(f"particle {p.data.name!r} has no measured displacement",
                                 field="misfit")
            data = {"displacement": p.displacement}
        else:
            data = {"strain": np.stack([p.strain_image[c] for c in ("e_xx", "e_yy", "e_xy")],
                                       -1)}
        setups.append(particle_setup(p.data.name, pm, p.data.X, p.data.rotation_rad,
                                     edge_exclusion_px=edge,
                                     fe_degree=getattr(mesh_cfg, "fe_degree", 1), **data))
    return group, mine, setups, meshes


def _noise_target(model: M2Model, settings: M2Settings, prepared, mine, meshes,
                  m1_sigma2: float | None, misfit_kind: str) -> tuple[float, float | None]:
    """(target misfit, strain-noise std or None) of the discrepancy rule."""
    from chemomech.inverse.uncertainty import strain_noise_sampler

    if settings.noise_strain == "m1":
        if m1_sigma2 is None:
            raise InputError("noise_strain: m1 needs the M1 result", field="noise_strain")
        n_obs = model._world_sum(sum(p.base.misfit.num_observations for p in model.particles))
        n_nuis = model._world_sum(sum(0 if p.base.misfit.Q is None else p.base.misfit.Q.shape[1]
                                      for p in model.particles))
        return 0.5 * m1_sigma2 * (n_obs - n_nuis - model.num_coefficients), None
    if settings.noise_strain == "auto":
        local = [estimate_strain_noise(prepared[k].data) for k in mine]
        estimates = [e for part in model.world.allgather(local) for e in part]
        sigma = float(np.median(estimates))
    else:
        sigma = float(settings.noise_strain)
    samplers = None
    if misfit_kind == "displacement":
        samplers = {p.name: strain_noise_sampler(prepared[k].data, pm.pixel_indices(),
                                                 p.base.misfit)
                    for p, k, pm in zip(model.particles, mine, meshes, strict=True)}
    return noise_misfit(model, sigma, samplers, settings.noise_draws), sigma


def run_m2(prepared: Sequence, config, comm: MPI.Comm = MPI.COMM_WORLD, m1_result=None,
           settings: M2Settings | None = None) -> M2Outcome:
    """The M2 stage of the pipeline: mesh, fit M2 (alpha by the configured rule), gather the
    model and density maps to world rank 0 and summarise (`M2Outcome`).

    `prepared`: `chemomech.correlative.prepared.PreparedParticle` s; `config`: a `RunConfig` (reads
    legendre_degree, misfit, mesh, edge_exclusion_px, stiffness, reduction, solver and the
    ``dislocations`` block, see `M2Settings`); `m1_result`: the `M1Outcome` (warm start, degree
    for ``auto`` and sigma^2 for ``noise_strain: m1``), or None (M1 by its linear fast path).
    """
    from chemomech.mechanics.fields import model_maps
    from chemomech.mechanics.forms import epsilon

    t0 = time.perf_counter()
    settings = settings or M2Settings.from_config(config)
    group, mine, setups, meshes = _build_setups(prepared, config, comm)
    t_mesh = time.perf_counter() - t0
    degree = _settings_value(config, "legendre_degree", 2)
    if degree == "auto":
        if m1_result is None:
            raise InputError("legendre_degree: auto needs the M1 result", field="legendre_degree")
        degree = m1_result.fit.degree
    material = Material(stiffness=_settings_value(config, "stiffness", "average"),
                        reduction=_settings_value(config, "reduction", "plane_stress"))
    reg = Regularisation(settings.kind, 1.0 if settings.alpha == "auto" else float(
        settings.alpha), settings.tv_epsilon_per_nm)
    model = M2Model(setups, settings.slip_systems, degree=degree, material=material, comm=comm,
                    solver=_settings_value(config, "solver", "auto"), regularisation=reg)
    if m1_result is not None and m1_result.fit.degree == degree:
        initial = m1_result.fit.coefficients
        sigma2 = m1_result.sigma2
    else:
        initial = model.m1.fit(method="linear", with_normal_matrix=False).coefficients
        sigma2 = None
    model.coefficients = np.asarray(initial, float).copy()
    fit_options = {"tao_type": settings.tao_type, "max_it": settings.max_it,
                   "grtol": settings.grtol}
    misfit_kind = _settings_value(config, "misfit", "displacement")
    choice = None
    if settings.alpha == "auto":
        target, sigma = (None, None)
        if settings.rule == "discrepancy":
            target, sigma = _noise_target(model, settings, prepared, mine, meshes, sigma2,
                                          misfit_kind)
        choice, fit = choose_alpha(model, settings.rule, target_misfit=target,
                                   decades=settings.alpha_decades, tau=settings.discrepancy_tau,
                                   **fit_options)
        choice.noise_strain = sigma
    else:
        fit = model.fit(**fit_options)
    t_fit = time.perf_counter() - t0 - t_mesh
    t_forward = model.forward_solve_time()

    images: dict[str, dict[str, np.ndarray]] = {}
    for i, (k, pm) in enumerate(zip(mine, meshes, strict=True)):
        p = prepared[k]
        u = model.displacement(i)
        maps = model_maps(u, epsilon(u), pm, p.data.mask.shape)
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
               "mean_density_um2": mean_all,
               "per_particle_mean_density_um2": densities,
               "regularisation": {"kind": settings.kind, "alpha": model.reg.alpha,
                                  "rule": choice.rule if choice else "fixed"},
               "fit": fit.summary()}
    if choice is not None:
        summary["regularisation"] |= {"target_misfit": choice.target_misfit,
                                      "noise_strain": choice.noise_strain,
                                      "curve": choice.curve}
    iterations = sum(c["iterations"] for c in choice.curve) if choice else fit.iterations
    timings = {"m2_mesh": t_mesh, "m2_fit": t_fit, "m2_forward_solve": t_forward,
               "m2_iterations": float(iterations), "m2_total": time.perf_counter() - t0}
    if comm.rank == 0:
        logger.info("M2 (%s): alpha %.3g (%s), mean density %.4g um^-2", ", ".join(labels),
                    model.reg.alpha, summary["regularisation"]["rule"], mean_all)
    return M2Outcome(fit, choice, images, densities, summary, timings)
