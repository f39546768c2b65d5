"""`chemomech phasefield`: relax a particle at fixed mean X and write what `invert` reads.

Writes into the output folder: ``particle.h5`` (stack file, truth under ``truth/``),
``phasefield.xdmf`` (+ .h5: X, mu, u every ``outputs.xdmf_every`` steps), ``summary.json``
(parameters, energies, steps, iterations and timings), ``config.yaml`` (the validated
config) and ``figures/energy.png``, ``figures/final_state.png``.  Collective under MPI.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import yaml
from mpi4py import MPI

from chemomech.phasefield.config import PhaseFieldConfig, load_phasefield_config

logger = logging.getLogger(__name__)


def build_model(config: PhaseFieldConfig, comm: MPI.Comm = MPI.COMM_WORLD):
    """(domain, PhaseFieldForms, StepControl) of a validated config; collective.  The domain
    is a `chemomech.mechanics.mesh.ParticleMesh` in 2-D, a `geometry.Platelet3D` in 3-D."""
    from chemomech.mechanics.materials import Material
    from chemomech.mechanics.mesh import mesh_from_mask
    from chemomech.phasefield.geometry import extruded_platelet_mesh, mask_from_file, platelet_mask
    from chemomech.phasefield.initial import random_waves, set_initial_composition
    from chemomech.phasefield.model import (
        Elasticity,
        Kinetics,
        PhaseFieldForms,
        vegard_law,
    )
    from chemomech.phasefield.solver import StepControl

    g = config.geometry
    if g.mask_from is not None:
        mask, h, _ = mask_from_file(g.mask_from, g.particle)
    else:
        h = g.pixel_size_nm
        mask = platelet_mask(g.length_nm, g.width_nm, h, exponent=g.exponent,
                             long_axis_rad=g.long_axis_rad,
                             pores=g.pores if config.dim == 2 else 0,
                             pore_radius_nm=g.pore_radius_nm, seed=config.seed)
    check_coarse_mesh(config, h)
    if config.dim == 2:
        pm = mesh_from_mask(mask, h, comm, mesh_size_px=g.mesh_size_px)
    else:
        pm = extruded_platelet_mesh(mask, h, g.thickness_nm or 300.0, comm,
                                    mesh_size_px=g.mesh_size_px, pores=g.pores,
                                    pore_radius_nm=g.pore_radius_nm, seed=config.seed)

    free_energy = _free_energy(config)
    e = config.elasticity
    vegard_a, vegard_c = vegard_law()
    elasticity = Elasticity(Material(e.stiffness, e.reduction), e.rotation_rad,
                            e.coefficients_a or vegard_a, e.coefficients_c or vegard_c,
                            enabled=e.enabled)
    k = config.kinetics
    kinetics = Kinetics(k.diffusivity, k.theta, k.mobility_floor)
    u_degree = e.u_degree or (1 if config.dim == 2 else 2)
    forms = PhaseFieldForms(pm.mesh, free_energy, elasticity, kinetics, u_degree=u_degree)
    w = free_energy.interface_width()
    wavelength = config.initial.wavelength_nm or 3.0 * w
    set_initial_composition(forms, config.mean_x, random_waves(config.seed, wavelength),
                            config.initial.amplitude)
    s = config.steps
    dt0 = s.dt_initial or w**2 / (100.0 * k.diffusivity)
    control = StepControl(dt_initial=dt0, dt_max=max(s.dt_max, dt0), max_steps=s.max_steps,
                          t_end=s.t_end, energy_tol=s.energy_tol, patience=s.patience,
                          newton_target=s.newton_target, max_dc=s.max_dc or math.inf,
                          ksp_rtol=config.solver.ksp_rtol,
                          ksp_max_it=config.solver.ksp_max_it)
    return pm, forms, control


#: The run-mesh stage of coarse-to-fine starts at this fraction of the last coarse dt
#: (1200 x 700 nm platelet: 7 steps, none rejected; from the full dt 4 of 11 were rejected).
FINE_START_DT_FRACTION = 0.1
#: Coarse-to-fine needs at least this many coarse elements per interface width.
COARSE_ELEMENTS_PER_WIDTH = 2.0


def _free_energy(config: PhaseFieldConfig):
    """The `FreeEnergy` of a config (kappa, or kappa from the interface width)."""
    from chemomech.phasefield.model import FreeEnergy

    f = config.free_energy
    params = dict(omega_eV=f.omega_eV, temperature_K=f.temperature_K, log_delta=f.log_delta)
    if f.kappa is not None:
        return FreeEnergy(kappa=f.kappa, **params)
    return FreeEnergy.for_width(f.interface_width_nm or 100.0, **params)


def check_coarse_mesh(config: PhaseFieldConfig, pixel_size_nm: float) -> None:
    """Reject a ``steps.coarse_mesh_size_px`` whose elements are wider than the interface
    width / `COARSE_ELEMENTS_PER_WIDTH` (checked once the pixel size is known)."""
    from chemomech.exceptions import ConfigError

    coarse = config.steps.coarse_mesh_size_px
    if coarse is None:
        return
    w = _free_energy(config).interface_width()
    if coarse * pixel_size_nm * COARSE_ELEMENTS_PER_WIDTH > w * (1 + 1e-12):
        raise ConfigError(f"steps.coarse_mesh_size_px: {coarse} px of {pixel_size_nm:.4g} nm "
                          f"leaves fewer than {COARSE_ELEMENTS_PER_WIDTH:g} elements per "
                          f"interface width ({w:.4g} nm); at most "
                          f"{w / (COARSE_ELEMENTS_PER_WIDTH * pixel_size_nm):.3g} px")


def relax_on_coarse_mesh(config: PhaseFieldConfig, forms, control, comm: MPI.Comm,
                         callback=None):
    """Coarse-to-fine start (2-D): relax the configured particle on a mesh of
    ``steps.coarse_mesh_size_px`` to the configured stop, interpolate its X into ``forms``
    (mean kept exactly; `initial.interpolate_composition`) and return (summary of the coarse
    stage, the run mesh's `StepControl` starting at `FINE_START_DT_FRACTION` of the last
    coarse dt).  The run mesh then relaxes from it to the same stop (its t restarts at 0),
    so the final state satisfies the stop on the run mesh.  `callback` as in
    `PhaseFieldSolver.run`.  Collective."""
    import dataclasses

    from chemomech.phasefield.initial import interpolate_composition
    from chemomech.phasefield.solver import PhaseFieldSolver

    started = time.perf_counter()
    size = config.steps.coarse_mesh_size_px
    coarse = config.model_copy(update={"geometry": config.geometry.model_copy(
        update={"mesh_size_px": size})})
    _, coarse_forms, coarse_control = build_model(coarse, comm)
    solver = PhaseFieldSolver(coarse_forms, coarse_control, linear=config.solver.linear)
    history = solver.run(callback)
    if not history.converged:
        logger.warning("coarse stage stopped before its energy stop (%s); the run mesh "
                       "continues from there", history.reason)
    interpolate_composition(forms, coarse_forms)
    dt = FINE_START_DT_FRACTION * history.steps[-1].dt
    control = dataclasses.replace(control, dt_initial=min(max(dt, control.dt_initial),
                                                          control.dt_max))
    W = coarse_forms.W
    summary = {"mesh_size_px": size,
               "num_dofs": int(W.dofmap.index_map.size_global * W.dofmap.index_map_bs),
               **history.summary(), "rejections": dict(history.rejections),
               "wall_s": comm.allreduce(time.perf_counter() - started, op=MPI.MAX)}
    logger.info("coarse stage (%g px, %d DOFs): %d steps, F = %.8g; run mesh starts at "
                "dt = %.3g", size, summary["num_dofs"], summary["steps"],
                summary["energy_final"]["total"], control.dt_initial)
    return summary, control


def run_phasefield(config: PhaseFieldConfig, comm: MPI.Comm = MPI.COMM_WORLD) -> dict:
    """Run the configured relaxation and write the outputs; returns the summary dict."""
    from chemomech.io.results import versions, write_json_atomic, write_text_atomic
    from chemomech.io.stack import write_stack
    from chemomech.phasefield.outputs import (
        XdmfSeries,
        energy_figure,
        final_state_figure,
        particle_data,
        sample_state,
        sample_state_3d,
    )
    from chemomech.phasefield.solver import PhaseFieldSolver

    started = time.perf_counter()
    out = Path(config.output)
    pm, forms, control = build_model(config, comm)
    coarse = None
    if config.steps.coarse_mesh_size_px is not None:
        coarse, control = relax_on_coarse_mesh(config, forms, control, comm)
    solver = PhaseFieldSolver(forms, control, linear=config.solver.linear)
    every = config.outputs.xdmf_every
    xdmf = XdmfSeries(out / "phasefield.xdmf", forms.mesh) if every else None
    try:
        solver.initialise()
        if xdmf:
            xdmf.write(forms, 0.0)

        def callback(s, record):
            if xdmf and (len(s.history.steps) - 1) % every == 0:
                xdmf.write(forms, record.t)

        history = solver.run(callback)
        if xdmf and (len(history.steps) - 1) % every != 0:
            xdmf.write(forms, solver.t)
    finally:
        if xdmf:
            xdmf.close()
    if config.dim == 2:
        maps = sample_state(forms, pm)
    else:
        maps = sample_state_3d(forms, pm.mask, pm.pixel_size_nm, pm.thickness_nm,
                               config.outputs.thickness_points)
    n_dofs = forms.W.dofmap.index_map.size_global * forms.W.dofmap.index_map_bs
    o = config.outputs
    extra = {} if config.dim == 2 else {
        "thickness_nm": pm.thickness_nm, "voids_nm": np.asarray(pm.voids).reshape(-1, 5),
        "projection": "mean over the material along the beam (z), "
                      f"{config.outputs.thickness_points} Gauss points"}
    particle = particle_data(o.name, maps, pm, forms, history, noise_strain=o.noise_strain,
                             noise_composition=o.noise_composition, seed=config.seed,
                             extra_truth=extra)
    write_stack(out / "particle.h5", particle, comm=comm)
    summary = {"particle": o.name, "dim": config.dim, "num_dofs": int(n_dofs),
               "num_ranks": comm.size,
               "pixels": int(pm.mask.sum()), "pixel_size_nm": pm.pixel_size_nm,
               "kappa_GPa_nm2": forms.free_energy.kappa,
               "interface_width_nm": forms.free_energy.interface_width(),
               "binodal": list(forms.free_energy.binodal()),
               "mean_X_domain": forms.mass() / forms.volume,
               "mean_X_pixels": float(np.nanmean(maps["X"][pm.mask])),
               **history.summary(), "coarse_stage": coarse,
               "wall_s": time.perf_counter() - started,
               "versions": versions()}
    if comm.rank == 0:
        write_json_atomic(out / "summary.json", _finite(summary))
        write_text_atomic(out / "config.yaml",
                          yaml.safe_dump(_finite(config.model_dump()), sort_keys=False))
        if o.figures:
            energy_figure(history, out / "figures" / "energy.png")
            final_state_figure(maps, pm.pixel_size_nm, out / "figures" / "final_state.png")
    comm.Barrier()
    logger.info("phase field: %d steps, converged %s, %.1f s -> %s", summary["steps"],
                summary["converged"], summary["wall_s"], out / "particle.h5")
    return summary


def _finite(obj):
    """Infinite floats as the string "inf" (JSON/YAML friendly), recursively."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    return obj


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `chemomech phasefield` (each overrides the config's key)."""
    parser.add_argument("config", nargs="?", help="YAML config (optional; defaults otherwise)")
    parser.add_argument("--output", help="output folder (writes DIR/particle.h5)")
    parser.add_argument("--dim", type=int, choices=(2, 3), help="2 (plane stress) or 3")
    parser.add_argument("--mean-x", type=float, help="mean Li fraction (0, 1)")
    parser.add_argument("--seed", type=int, help="seed of the initial state (and pores)")
    parser.add_argument("--thickness-nm", type=float, help="platelet thickness (3-D only)")
    parser.add_argument("--pores", type=int, help="number of pores")
    width = parser.add_mutually_exclusive_group()
    width.add_argument("--kappa", type=float, help="gradient coefficient (GPa nm^2)")
    width.add_argument("--interface-width-nm", type=float,
                       help="flat-interface width (sets kappa; default 100 nm)")


def cmd_phasefield(args: argparse.Namespace) -> int:
    """`chemomech phasefield [config.yaml] --output DIR`."""
    overrides = {"output": args.output, "dim": args.dim, "mean_x": args.mean_x,
                 "seed": args.seed, "geometry.thickness_nm": args.thickness_nm,
                 "geometry.pores": args.pores, "free_energy.kappa": args.kappa,
                 "free_energy.interface_width_nm": args.interface_width_nm}
    config = load_phasefield_config(args.config, **overrides)
    run_phasefield(config)
    return 0
