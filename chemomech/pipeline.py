"""The inversion run: files -> stack -> mesh and fields -> M0 / M1 -> results.

`run(config)` is what `chemomech invert config.yaml` and `scripts/invert.py` call, under
`mpirun -n K` or serially.  Steps (progress logged on rank 0):

1. read the particles (stack, .mat, py4DSTEM + composition; `chemomech.io.readers`), frame check;
2. measured displacement by integrating the image-frame gradient (or the strain, for the
   strain misfit) and the crystal-frame strains (`chemomech.correlative.displacement`, `frames`);
3. M0: pixel regression of e_aa, e_cc on X (`chemomech.inverse.regression`);
4. M1: particles dealt to rank groups, meshed from their masks, the joint inversion with
   adjoint gradients and TAO or the linear fast path (`chemomech.inverse.problem`), degree chosen by
   held-out error when `legendre_degree: auto` (`chemomech.inverse.selection`), bands
   (`chemomech.inverse.uncertainty`; by default calibrated: `calibrated_covariance`);
5. residual strain, model errors and incompatibility (`chemomech.analysis.residual`), then
   `summary.json`, `fields.h5`/`.xdmf`, figures, `config.yaml`, `log.txt`
   (`chemomech.analysis.report`).

The run writes into ``OUTPUT.partial-<id>/``, renamed over ``OUTPUT`` only when complete
(see `run`): a folder holds exactly one complete run or none.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from mpi4py import MPI

from chemomech.analysis.residual import incompatibility_rms, model_error
from chemomech.config import RunConfig, dump_config
from chemomech.correlative.frames import (
    gradient_crystal,
    rotate_tensor_field,
    strain_crystal_from_image,
)
from chemomech.correlative.prepared import PreparedParticle, prepare_particle, used_pixels
from chemomech.exceptions import ConfigError
from chemomech.inverse.regression import RegressionFit, fit_m0
from chemomech.inverse.uncertainty import band_to_lists, derivative_band, eigenstrain_band
from chemomech.io.parallel import (
    describe,
    import_deferred,
    is_collective,
    signals_deferred,
    stage,
)
from chemomech.io.readers import read_data
from chemomech.io.results import (
    CHECKPOINTS,
    RunFolder,
    fail_partial,
    versions,
    write_json_atomic,
    write_text_atomic,
)
from chemomech.io.stack import ParticleData, check_interior
from chemomech.mechanics import legendre
from chemomech.mechanics.materials import Material

if TYPE_CHECKING:
    from chemomech.analysis.report import ResidualMapJob

logger = logging.getLogger(__name__)

CURVE_POINTS = 101


#: compiled modules the run imports, loaded before it starts (`import_deferred`: a signal
#: during their initialisation would crash the process instead of stopping it cleanly)
COMPILED_MODULES = ("petsc4py.PETSc", "dolfinx", "dolfinx.fem.petsc", "dolfinx.io.gmsh")


def load_particles(config: RunConfig) -> list[ParticleData]:
    """All particles named by the config (`data` entries, filtered by `particles`)."""
    return read_data(config.data, config.particles, pixel_size_nm=config.pixel_size_nm)


def prepare(particle: ParticleData, config: RunConfig) -> PreparedParticle:
    """`prepare_particle` with the config's misfit and frame settings (the displacement is
    integrated also for the strain misfit under Dirichlet data: it is the boundary data)."""
    misfit = "displacement" if config.boundary_condition == "dirichlet" else config.misfit
    return prepare_particle(particle, misfit=misfit, check_frame=config.frame.check,
                            adopt_frame=config.frame.adopt)


def check_inversion_data(prepared: list[PreparedParticle], config: RunConfig) -> None:
    """Refuse, before any heavy work, data the configured inversion cannot use: Dirichlet
    without boundary data, fragmented displacement data (`fragmented_data`, Dirichlet)."""
    if config.model == "M0":
        return
    from chemomech.inverse.misfit import check_fragments
    from chemomech.inverse.particle import check_boundary_data

    for p in prepared:
        if p.displacement is None:
            continue
        if config.boundary_condition == "dirichlet":
            check_boundary_data(p.data.name, p.data.mask, p.displacement)
        valid = p.data.mask & np.all(np.isfinite(p.displacement), axis=-1)
        check_fragments(valid, p.data.mask, p.data.name, config.fragmented_data,
                        config.boundary_condition)


def check_edge_exclusion(particle: ParticleData, edge_exclusion_px: int) -> None:
    """Refuse, before the integration, a particle left without pixels by `edge_exclusion_px`."""
    from chemomech.exceptions import InputError
    from chemomech.io.stack import interior_pixels

    if not interior_pixels(particle.mask, edge_exclusion_px).any():
        raise InputError(f"particle {particle.name!r}: edge_exclusion_px = {edge_exclusion_px} "
                         f"leaves none of its {int(particle.mask.sum())} pixels",
                         path=particle.file, field="mask")


def prepare_distributed(particles: list[ParticleData], config: RunConfig, comm: MPI.Comm
                        ) -> list[PreparedParticle | None]:
    """`prepare` (frame check, integration) of each particle on the ranks that hold it in the
    M1 stage (`chemomech.inverse.problem.particles_of_rank`); world rank 0, which writes the
    report, receives every particle from the lowest rank holding it.  Entries this rank
    neither holds nor reports are None.  The data are checked (`check_inversion_data`) where
    they are prepared; an error on any rank is raised on every rank."""
    from chemomech.exceptions import InputError
    from chemomech.inverse.particle import particles_of_rank

    n, size = len(particles), comm.size
    held = [set(particles_of_rank(r, size, n)) for r in range(size)]
    first = {k: min(r for r in range(size) if k in held[r]) for k in range(n)}
    local, failure = {}, None
    try:
        local = {k: prepare(particles[k], config) for k in sorted(held[comm.rank])}
        check_inversion_data(list(local.values()), config)
    except Exception as exc:  # reported on every rank below, never a hang
        failure = exc
    errors = comm.allgather(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if any(errors):
        raise InputError(f"preparing the particles failed on another rank: "
                         f"{next(e for e in errors if e)}")
    parts = comm.gather({k: v for k, v in local.items() if first[k] == comm.rank}, root=0)
    out: list[PreparedParticle | None] = [local.get(k) for k in range(n)]
    for part in parts or []:
        for k, v in part.items():
            out[k] = v
    return out


def fit_direct_regression(prepared: list[PreparedParticle], degree: int,
                          edge_exclusion_px: int) -> RegressionFit:
    """M0 over the used pixels of all particles."""
    X, e_aa, e_cc = [], [], []
    for p in prepared:
        used = used_pixels(p.data.mask, p, edge_exclusion_px)
        X.append(p.data.X[used])
        e_aa.append(p.strain_crystal["e_aa"][used])
        e_cc.append(p.strain_crystal["e_cc"][used])
    return fit_m0(np.concatenate(X), np.concatenate(e_aa), np.concatenate(e_cc), degree)


def m0_residual(p: PreparedParticle, fit: RegressionFit) -> dict[str, np.ndarray]:
    """Image-frame residual of M0: measured strain minus R diag(f_a(X), f_c(X)) R^T."""
    f_a, f_c = fit.predict(np.clip(p.data.X, 0.0, 1.0))
    crystal = gradient_crystal(p.strain_crystal["e_aa"] - f_a, p.strain_crystal["e_cc"] - f_c,
                               p.strain_crystal["e_ac"], np.zeros_like(f_a))
    image = rotate_tensor_field(crystal, p.data.rotation_rad)
    return {"e_xx": image[..., 0, 0], "e_yy": image[..., 1, 1], "e_xy": image[..., 0, 1]}


@dataclass
class M1Outcome:
    """What the M1 stage hands to the report (world rank 0 holds the gathered images)."""

    fit: object  # chemomech.inverse.FitResult
    covariance: np.ndarray
    sigma2: float
    covariance_method: str
    gradient_check: dict | None
    selection: object | None  # chemomech.inverse.selection.DegreeSelection
    images: dict[str, dict[str, np.ndarray]]  # name -> model maps (rank 0 only)
    timings_s: dict[str, float]
    model: object | None = None  # the M1Model (factorised operators; reused by M2)
    meshes: list | None = None  # this rank's ParticleMesh es
    particle_indices: list[int] | None = None  # their indices in `prepared`
    calibrated: dict | None = None  # `calibrated_covariance` (uncertainty.method calibrated)


def _mesh_particles(prepared: list[PreparedParticle], mine: list[int], group: MPI.Comm,
                    config: RunConfig, setups: list, meshes: list,
                    size_px: float | None = None) -> None:
    """Mesh this rank group's particles and append their M1 setups; errors name the particle.
    `size_px`: element size (default `mesh.size_px`)."""
    from chemomech.exceptions import InputError
    from chemomech.mechanics.mesh import mesh_from_mask

    for k in mine:
        p = prepared[k]
        logger.info("meshing %s (%d pixels, h = %.3g nm)", p.data.name, int(p.data.mask.sum()),
                    p.data.pixel_size_nm)
        try:
            pm = mesh_from_mask(p.data.mask, p.data.pixel_size_nm, group,
                                mesh_size_px=size_px or config.mesh.size_px,
                                simplify_tol_px=config.mesh.simplify_tol_px,
                                min_island_px=config.mesh.min_island_px)
        except InputError as err:  # names the key: the mesher knows only its argument
            raise InputError(f"particle {p.data.name!r} ({int(p.data.mask.sum())} px): {err} "
                             "(see mesh.min_island_px, mesh.size_px, mesh.simplify_tol_px)",
                             path=p.data.file) from None
        meshes.append(pm)
        setups.append(_particle_setup(p, pm, config))


def _particle_setup(p: PreparedParticle, pm, config: RunConfig, X: np.ndarray | None = None):
    """The M1 setup of one prepared particle on mesh `pm` (X image: the data's, or `X`)."""
    from chemomech.inverse.particle import particle_setup

    data = ({"displacement": p.displacement} if config.misfit == "displacement" else
            {"strain": np.stack([p.strain_image[c] for c in ("e_xx", "e_yy", "e_xy")], -1)})
    return particle_setup(p.data.name, pm, p.data.X if X is None else X, p.data.rotation_rad,
                          edge_exclusion_px=config.edge_exclusion_px,
                          fe_degree=config.mesh.fe_degree,
                          boundary_condition=config.boundary_condition,
                          boundary_displacement=p.displacement,
                          fragmented_data=config.fragmented_data, **data)


def calibrated_covariance(prepared: list[PreparedParticle], mine: list[int], setups: list,
                          model, fit, noise_covariance: np.ndarray, config: RunConfig,
                          comm: MPI.Comm, group: MPI.Comm) -> dict:
    """`uncertainty.method: calibrated` (`chemomech.inverse.uncertainty`): the noise
    covariance (`noise_covariance`) widened by the sandwich over pixel blocks, plus the
    discretisation term from a fit on a 2x coarser (or finer) mesh, plus the errors in the
    variables (refits with drawn X maps on the run's meshes) when X errors are stated.
    Collective over `comm`.  Returns coefficients (bias-corrected), covariance, dof, parts."""
    from chemomech.inverse.problem import M1Model
    from chemomech.inverse.uncertainty import (
        discretisation_covariance,
        errors_in_variables,
        noise_floor,
        sandwich_covariance,
    )

    u = config.uncertainty
    options = {"degree": model.degree, "material": model.material, "comm": comm,
               "solver": config.solver, "gauge": config.gauge_object()}
    t0 = time.perf_counter()
    block_nm = {prepared[k].data.name: u.block_px * prepared[k].data.pixel_size_nm
                for k in mine}
    sandwich, g = sandwich_covariance(model, fit, block_nm)
    parts = {"sandwich": noise_floor(sandwich, noise_covariance)}
    timings = {"sandwich": time.perf_counter() - t0}
    if u.discretisation != "none":
        t0 = time.perf_counter()
        ratio = 2.0 if u.discretisation == "coarse" else 0.5
        other_setups, other_meshes = [], []
        _mesh_particles(prepared, mine, group, config, other_setups, other_meshes,
                        size_px=ratio * config.mesh.size_px)
        other = M1Model(other_setups, **options).fit("linear", with_normal_matrix=False)
        parts["discretisation"], _ = discretisation_covariance(
            fit.coefficients, other.coefficients, ratio, u.discretisation_rate)
        del other_setups, other_meshes
        timings["discretisation"] = time.perf_counter() - t0
    bias = np.zeros(len(fit.coefficients))
    if max(u.noise_composition, u.registration_px, u.blur_px) > 0:
        t0 = time.perf_counter()
        from dataclasses import replace

        from chemomech.mechanics.fields import image_to_function

        by_name = {s.name: (k, s) for k, s in zip(mine, setups, strict=True)}

        def refit(images: dict[str, np.ndarray]) -> np.ndarray:
            """The linear fit with these X images (the misfits and samplers are kept)."""
            drawn = [replace(s, X=image_to_function(images[n], s.pixel_size_nm,
                                                    s.X.function_space, mask=s.misfit_mask,
                                                    name="X"))
                     for n, (_, s) in by_name.items()]
            return M1Model(drawn, **options).fit("linear", with_normal_matrix=False
                                                 ).coefficients

        eiv = errors_in_variables(
            refit, {n: prepared[k].data.X for n, (k, _) in by_name.items()},
            {n: prepared[k].data.mask for n, (k, _) in by_name.items()},
            u.noise_composition, u.registration_px, u.blur_px, n_draws=u.composition_draws,
            bias_correction=u.bias_correction)
        parts["composition"] = eiv["covariance"]
        bias = eiv["bias"]
        timings["composition"] = time.perf_counter() - t0
    covariance = sum(parts.values())
    if comm.rank == 0:
        logger.info("calibrated covariance: %d blocks; band std at the parts' diagonals %s",
                    g, {k: float(np.sqrt(np.trace(v))) for k, v in parts.items()})
    return {"coefficients": np.asarray(fit.coefficients, float) - bias,
            "covariance": covariance, "dof": g - fit.num_parameters, "bias": bias,
            "parts": parts, "blocks": g, "timings_s": timings}


def run_m1(prepared: list[PreparedParticle], config: RunConfig, comm: MPI.Comm) -> M1Outcome:
    """Mesh the particles on rank groups, fit M1 jointly, gather model fields to rank 0."""
    from chemomech.inverse.particle import split_for_particles
    from chemomech.inverse.problem import M1Model
    from chemomech.inverse.selection import select_degree
    from chemomech.inverse.uncertainty import (
        IntegratedStrainNoise,
        exact_integrated_noise_covariance,
        fit_covariance,
        integrated_noise_covariance,
        strain_noise_sampler,
    )
    from chemomech.inverse.verify import verify_gradient
    from chemomech.mechanics.fields import model_maps
    from chemomech.mechanics.forms import epsilon

    t0 = time.perf_counter()
    group, mine = split_for_particles(comm, len(prepared))
    setups, meshes = [], []
    with stage("meshing", comm):
        _mesh_particles(prepared, mine, group, config, setups, meshes)
    t_mesh = time.perf_counter() - t0
    material = Material(**config.material_options())
    gauge = config.gauge_object()
    selection = None
    degree = config.legendre_degree
    if degree == "auto":
        probe = M1Model(setups, degree=config.max_auto_degree, material=material, comm=comm,
                        solver=config.solver, gauge=gauge)
        selection = select_degree(probe, config.max_auto_degree)
        degree = selection.chosen
        if comm.rank == 0:
            logger.info("degree selection (%s, rule %s):\n%s", selection.scheme, selection.rule,
                        "\n".join(f"  N = {r['degree']}: train {r['train']:.4g}, held-out "
                                  f"{r['heldout']:.4g}" for r in selection.table))
        del probe
    model = M1Model(setups, degree=degree, material=material, comm=comm, solver=config.solver,
                    gauge=gauge)
    opt = config.optimiser
    gradient_check = verify_gradient(model) if opt.verify_gradient else None
    fit = model.fit(method=opt.method, tao_type=opt.tao_type, gatol=opt.gatol, grtol=opt.grtol,
                    gttol=opt.gttol, max_it=opt.max_it, initial_hessian=opt.initial_hessian)
    if opt.method == "tao" and opt.cross_check:
        fast = model.fit(method="linear", with_normal_matrix=False)
        scale = max(np.abs(fast.coefficients).max(), 1e-30)
        diff = float(np.abs(fit.coefficients - fast.coefficients).max() / scale)
        fit.timings_s["linear_fast_path"] = fast.timings_s["fit"]
        fit.reason += f"; |TAO - linear| / |a| = {diff:.2e}"
        if comm.rank == 0:
            (logger.info if diff < 1e-4 else logger.warning)(
                "cross-check: TAO and the linear fast path differ by %.2e relative", diff)
    method = resolved_uncertainty_method(config)
    noise_method = method if method != "calibrated" else noise_covariance_method(config)
    t_bands = time.perf_counter()
    if noise_method == "integrated_noise" and config.uncertainty.evaluation == "exact":
        operators = {s.name: IntegratedStrainNoise(
            prepared[k].data, pm.pixel_indices(), s.misfit,
            model._particle(s.name) if s.u_boundary is not None else None)
            for k, pm, s in zip(mine, meshes, setups, strict=True)}
        cov, sigma2 = exact_integrated_noise_covariance(model, fit, operators,
                                                        n_probes=config.uncertainty.n_probes)
    elif noise_method == "integrated_noise":
        samplers = {s.name: strain_noise_sampler(
            prepared[k].data, pm.pixel_indices(), s.misfit,
            model.boundary_response(s.name) if s.u_boundary is not None else None)
            for k, pm, s in zip(mine, meshes, setups, strict=True)}
        cov, sigma2 = integrated_noise_covariance(model, fit, samplers,
                                                  n_draws=config.uncertainty.n_draws)
    else:
        cov, sigma2 = fit_covariance(fit)
    calibrated = None
    if method == "calibrated":
        calibrated = calibrated_covariance(prepared, mine, setups, model, fit, cov, config,
                                           comm, group)
        calibrated["noise_covariance"] = cov
        cov = calibrated["covariance"]
    t_bands = time.perf_counter() - t_bands

    images: dict[str, dict[str, np.ndarray]] = {}
    for k, pm, setup in zip(mine, meshes, setups, strict=True):
        p = prepared[k]
        u = model.displacement(setup.name, fit.coefficients)
        images_k = model_maps(u, epsilon(u), pm, p.data.mask.shape, sampler=setup.sampler)
        if group.rank == 0:
            images[setup.name] = images_k
    gathered = comm.gather(images if group.rank == 0 else {}, root=0)
    images = {k: v for d in (gathered or []) for k, v in d.items()}
    timings = {"mesh": t_mesh, "bands": t_bands, "m1_total": time.perf_counter() - t0}
    return M1Outcome(fit, cov, sigma2, method, gradient_check, selection, images, timings,
                     model, meshes, mine, calibrated)


def resolved_uncertainty_method(config: RunConfig) -> str:
    """The covariance method of the run: `uncertainty.method`, with auto resolved."""
    method = config.uncertainty.method
    if method != "auto":
        return method
    return "calibrated" if config.model == "M1" else noise_covariance_method(config)


def noise_covariance_method(config: RunConfig) -> str:
    """The noise covariance for the misfit: integrated noise for the displacement misfit (its
    noise is correlated by the integration), Gauss-Newton for the strain misfit."""
    return "integrated_noise" if config.misfit == "displacement" else "gauss_newton"


def run(config: RunConfig, comm: MPI.Comm = MPI.COMM_WORLD, *, resume: bool = False
        ) -> dict | None:
    """Run the configured inversion; returns the summary on rank 0 (None elsewhere).

    The run writes into ``OUTPUT.partial-<id>/`` and replaces ``OUTPUT`` with it only when it
    is complete (`chemomech.io.results.RunFolder`: the old run becomes ``OUTPUT.previous``, a
    failed run ``OUTPUT.failed`` whose log.txt ends with the error; a second run into the same
    output fails at once).  Every TAO call is checkpointed; `resume` continues the newest
    killed or failed run from its checkpoints (`chemomech.inverse.optimise.checkpointing`).
    An error on any rank ends the run on every rank (`chemomech.io.parallel`)."""
    from chemomech.inverse.optimise import checkpointing

    t_start = time.perf_counter()
    import_deferred(*COMPILED_MODULES)
    with stage("checking the inputs", comm):  # before the output folder is touched
        for entry in config.data:
            for path in entry if isinstance(entry, list) else [entry]:
                if not Path(path).exists():
                    raise ConfigError(f"data: no such file {path}")
    folder = RunFolder(config.output, resume=resume) if comm.rank == 0 else None
    package_logger = logging.getLogger("chemomech")
    level = package_logger.level
    handler, work = None, None
    try:  # from here on a signal or an error moves the partial folder to OUTPUT.failed
        with stage("opening the output folder", comm):
            if folder is not None:
                with signals_deferred():  # the partial folder exists iff folder.path is set
                    folder.open()
        work = Path(comm.bcast(str(folder.path) if folder is not None else None, root=0))
        if folder is not None:  # progress and the log file on rank 0 only
            (work / "log.txt").write_text("")  # appended to: another rank's last error too
            handler = logging.FileHandler(work / "log.txt", mode="a")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s"))
            handler.setLevel(logging.INFO)
            package_logger.addHandler(handler)
            if package_logger.getEffectiveLevel() > logging.INFO:
                package_logger.setLevel(logging.INFO)
            _resume_note(folder, config, work)
        with checkpointing(work / CHECKPOINTS) as store:
            summary = _run(config, comm, work, t_start)
        if store.replayed and comm.rank == 0:
            logger.info("%d TAO evaluation(s) taken from the checkpoints", store.replayed)
        with stage("replacing the output folder", comm), signals_deferred():
            if folder is not None:
                logger.info("results in %s", folder.output)
                _close_log(package_logger, handler)
                handler = None
                folder.commit()
        return summary
    except BaseException as exc:
        if folder is None and work is not None and isinstance(exc, Exception) \
                and not is_collective(exc):
            _fail_from_rank(work, comm.rank, exc)  # rank 0 is blocked: it never sees it
        if folder is not None:
            with signals_deferred():  # a second signal does not cut the clean-up short
                if handler is not None:  # the error is the last line of log.txt
                    handler.handle(package_logger.makeRecord(
                        package_logger.name, logging.ERROR, __file__, 0, "%s",
                        (describe(exc),), None))
                _close_log(package_logger, handler)
                handler = None
                folder.fail()
        raise
    finally:
        _close_log(package_logger, handler)
        package_logger.setLevel(level)
        if folder is not None:
            folder.close()


def _fail_from_rank(work: Path, rank: int, exc: BaseException) -> None:
    """An error on this rank alone ends the job (`exit_on_error` aborts it): append it to the
    run's log.txt (one O_APPEND write, as rank 0's) and move the run to OUTPUT.failed."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        with open(work / "log.txt", "a") as file:
            file.write(f"{stamp} ERROR chemomech: rank {rank}: {describe(exc)}\n")
    except OSError:
        return  # the folder is gone: the message still reaches stderr
    fail_partial(work)


def _close_log(package_logger: logging.Logger, handler: logging.Handler | None) -> None:
    if handler is not None:
        package_logger.removeHandler(handler)
        handler.close()


def _resume_note(folder: RunFolder, config: RunConfig, work: Path) -> None:
    """Keep checkpoints only for the same configuration; log what is resumed (rank 0)."""
    import shutil

    key = dump_config(config.model_copy(update={"output": Path("-")}))
    checkpoints, key_file = work / CHECKPOINTS, work / CHECKPOINTS / "config.yaml"
    if folder.resume:
        if folder.resumed_from is None:
            logger.warning("--resume: no checkpoint of an earlier run into %s; starting afresh",
                           folder.output)
        elif not key_file.exists() or key_file.read_text() != key:
            logger.warning("--resume: the checkpoints in %s are of another configuration; "
                           "starting afresh", folder.resumed_from)
            shutil.rmtree(checkpoints)
        else:
            logger.info("resuming from the checkpoints of %s", folder.resumed_from)
    write_text_atomic(key_file, key)


def _run(config: RunConfig, comm: MPI.Comm, out: Path, t_start: float) -> dict | None:
    rank0 = comm.rank == 0
    timings: dict[str, float] = {}
    t = time.perf_counter()
    with stage("reading the data", comm):
        particles = load_particles(config)
        for p in particles:
            if config.model in ("M1", "M2"):
                check_interior(p)
            check_edge_exclusion(p, config.edge_exclusion_px)
        if rank0:
            logger.info("%d particle(s): %s; model %s, degree %s, misfit %s, %d rank(s)",
                        len(particles), ", ".join(p.name for p in particles), config.model,
                        config.legendre_degree, config.misfit, comm.size)
        prepared = prepare_distributed(particles, config, comm)
    timings["read_and_prepare"] = time.perf_counter() - t

    t = time.perf_counter()
    with stage("the M0 regression", comm):  # an error on rank 0 ends every rank
        m0 = fit_direct_regression(prepared, config.m0_degree, config.edge_exclusion_px) \
            if rank0 else None  # needs every particle; used by the report only
    timings["m0"] = time.perf_counter() - t

    m1 = run_m1(prepared, config, comm) if config.model in ("M1", "M2") else None
    if m1 is not None:
        timings |= m1.timings_s
    m2 = None
    if config.model == "M2":
        from chemomech.dislocations.run import M1Stage, run_m2

        m1_stage = M1Stage(m1.particle_indices, m1.meshes, m1.model, m1.fit.coefficients)
        m2 = run_m2(prepared, config, comm, m1=m1_stage)
        timings |= m2.timings_s
    summary, residual_figures = None, None
    t = time.perf_counter()
    with stage("writing the results", comm):
        if rank0:
            residuals = {p.data.name: _residuals(p, m0, _mechanical(m1, m2),
                                                 config.edge_exclusion_px) for p in prepared}
            summary = _summarise(config, prepared, m0, m1, m2, residuals)
            residual_figures = _write_outputs(config, out, prepared, m1, m2, residuals, summary)
    with stage("drawing the residual maps", comm):
        from chemomech.analysis.report import save_residual_maps

        save_residual_maps(residual_figures, comm)
    with stage("writing the summary", comm):
        if rank0:
            summary["timings_s"] = timings | {"report": time.perf_counter() - t,
                                              "total": time.perf_counter() - t_start}
            write_json_atomic(out / "summary.json", summary)
            logger.info("done in %.1f s: model error %s", summary["timings_s"]["total"],
                        ", ".join(f"{k} {v:.4g}" for k, v in summary["model_errors"].items()))
    return summary


def _residuals(p: PreparedParticle, m0: RegressionFit, mechanical: dict, edge_px: int
               ) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Image-frame residual strain per model and the common pixel set for the errors.

    `mechanical` maps "M1"/"M2" to their outcomes (model images on rank 0)."""
    residual = {"M0": m0_residual(p, m0)}
    mask = p.data.mask
    for model, outcome in mechanical.items():
        maps = outcome.images[p.data.name]
        mask = mask & (maps["meshed_mask"] > 0)
        residual[model] = {k: p.strain_image[k] - maps[k] for k in ("e_xx", "e_yy", "e_xy")}
    return residual, used_pixels(mask, p, edge_px)


def _crystal(r: dict[str, np.ndarray], rotation_rad: float) -> dict[str, np.ndarray]:
    """Residual components aa, cc, ac in the crystal frame (for maps)."""
    c = strain_crystal_from_image(r["e_xx"], r["e_yy"], r["e_xy"], rotation_rad)
    return {"aa": c["e_aa"], "cc": c["e_cc"], "ac": c["e_ac"]}


def _mechanical(m1: M1Outcome | None, m2) -> dict:
    """The physics-based model outcomes that ran, by name."""
    return {name: o for name, o in (("M1", m1), ("M2", m2)) if o is not None}


def _summarise(config: RunConfig, prepared: list[PreparedParticle], m0: RegressionFit,
               m1: M1Outcome | None, m2, residuals: dict) -> dict:
    X = np.linspace(0.0, 1.0, CURVE_POINTS)
    level = config.band_level
    m0_coeffs = np.r_[m0.coefficients_a, m0.coefficients_c]
    m0_curve = eigenstrain_band(m0_coeffs, m0.covariance, X, level)
    if m2 is not None:  # joint (a, gamma) Gauss-Newton covariance, or None: no M2 band
        coeffs, degree, cov = m2.fit.coefficients, m2.fit.degree, m2.covariance
    elif m1 is not None:
        coeffs, cov, degree = m1.fit.coefficients, m1.covariance, m1.fit.degree
    else:
        coeffs, cov, degree = m0_coeffs, m0.covariance, m0.degree
    band_cov, calibrated = cov, None
    if m2 is None and m1 is not None and m1.calibrated is not None:
        calibrated = _calibrated_summary(m1.calibrated, level)
        coeffs = m1.calibrated["coefficients"]
        band_cov = np.asarray(cov) * calibrated["band_covariance_factor"]
    n = degree + 1
    per_particle, errors = {}, {}
    for p in prepared:
        residual, used = residuals[p.data.name]
        entry = {"mean_X": p.data.mean_X, "pixels_used": int(used.sum()),
                 "integration_relative_residual": p.integration_residual}
        for model, r in residual.items():
            entry[f"model_error_{model}"] = model_error(r["e_xx"], r["e_yy"], r["e_xy"], used)
            entry[f"incompatibility_rms_{model}_um2"] = incompatibility_rms(
                r["e_xx"], r["e_yy"], r["e_xy"], used, p.data.pixel_size_nm)
            errors.setdefault(model, []).append((entry[f"model_error_{model}"], used.sum()))
        main = config.model if config.model in residual else "M0"
        entry["model_error"] = entry[f"model_error_{main}"]
        entry["residual_incompatibility_rms"] = entry[f"incompatibility_rms_{main}_um2"]
        if m1 is not None:
            entry["J"] = m1.fit.per_particle_cost.get(p.data.name)
        if m2 is not None:
            entry["mean_density_um2"] = m2.mean_density_um2.get(p.data.name)
        per_particle[p.data.name] = entry
    model_errors = {m: float(sum(e * w for e, w in v) / max(sum(w for _, w in v), 1))
                    for m, v in errors.items()}
    main = config.model if config.model in model_errors else "M0"
    summary = {
        "model": config.model,
        "legendre_degree": int(degree),
        "reference": "LiFePO4",
        "coefficients": {"a": list(map(float, coeffs[:n])), "c": list(map(float, coeffs[n:]))},
        "covariance": None if cov is None else np.asarray(cov).tolist(),
        "eigenstrain_curve": _curve(eigenstrain_band, coeffs, band_cov, X, level),
        "derivative_curve": _curve(derivative_band, coeffs, band_cov, X, level),
        "model_error": model_errors[main],
        "model_errors": model_errors,
        "residual_incompatibility_rms": float(np.nanmean(
            [e["residual_incompatibility_rms"] for e in per_particle.values()])),
        "per_particle": per_particle,
        "eigenstrain_at": {str(x): {"a": float(legendre.evaluate(coeffs[:n], x)),
                                    "c": float(legendre.evaluate(coeffs[n:], x))}
                           for x in (0.0, 0.5, 1.0)},
        "m0": {"legendre_degree": m0.degree,
               "coefficients": {"a": m0.coefficients_a.tolist(), "c": m0.coefficients_c.tolist()},
               "eigenstrain_curve": band_to_lists(m0_curve),
               "derivative_curve": band_to_lists(derivative_band(m0_coeffs, m0.covariance, X,
                                                                 level))},
        "units": {"eigenstrain": "dimensionless, relative to LiFePO4",
                  "incompatibility": "um^-2", "displacement": "nm"},
        "versions": versions(),
    }
    summary["identifiability"] = _identifiability(prepared, m0, m1, config.edge_exclusion_px)
    if m1 is not None:
        summary["fit"] = m1.fit.summary() | {"noise_sigma": float(np.sqrt(m1.sigma2)),
                                             "misfit": config.misfit,
                                             "covariance_method": m1.covariance_method}
        if m1.covariance_method == "integrated_noise":
            summary["fit"]["covariance_evaluation"] = config.uncertainty.evaluation
        if calibrated is not None:
            summary["uncertainty"] = calibrated
        if m1.gradient_check is not None:
            summary["gradient_check"] = m1.gradient_check
        if m2 is not None:
            summary["dislocations"] = m2.summary
        if m1.selection is not None:
            summary["degree_selection"] = {"scheme": m1.selection.scheme,
                                           "rule": m1.selection.rule,
                                           "table": m1.selection.table}
    return summary


def _calibrated_summary(calibrated: dict, level: float) -> dict:
    """The `uncertainty` block of a calibrated run: covariance parts, Student-t factor, bias,
    and each part's alone half-width (normal quantile) of the f_a, f_c band at X = 0.05, 0.5,
    0.95."""
    from chemomech.inverse.uncertainty import student_t_factor

    dof = int(calibrated["dof"])
    factor = student_t_factor(dof, level)
    X = np.array([0.05, 0.5, 0.95])
    parts = {"noise": calibrated["noise_covariance"]} | calibrated["parts"]
    std = {}
    for name, C in parts.items():
        band = eigenstrain_band(calibrated["coefficients"], C, X, level)
        std[name] = {d: (0.5 * (band[f"{d}_hi"] - band[f"{d}_lo"])).tolist() for d in "ac"}
    return {"method": "calibrated", "dof": dof, "blocks": int(calibrated["blocks"]),
            "band_covariance_factor": factor,
            "band_quantile": f"Student t on {dof} dof (the band uses covariance x factor)",
            "bias_removed": np.asarray(calibrated["bias"]).tolist(),
            "parts": {k: np.asarray(v).tolist() for k, v in parts.items()},
            "half_width_at": {"X": X.tolist(), **std},
            "timings_s": calibrated["timings_s"]}


def _curve(band, coeffs, cov, X, level) -> dict[str, list[float]]:
    """The curve with its band, or without band keys when there is no covariance."""
    if cov is None:
        values = band(coeffs, np.zeros((len(coeffs), len(coeffs))), X, level)
        return band_to_lists({k: values[k] for k in ("X", "a", "c")})
    return band_to_lists(band(coeffs, cov, X, level))


def _identifiability(prepared: list[PreparedParticle], m0: RegressionFit,
                     m1: M1Outcome | None, edge_px: int) -> dict:
    """The `identifiability` block (`chemomech.inverse.identifiability`) of the reported law:
    M1's Gauss-Newton matrix (also for M2, whose law starts from it), or M0's."""
    from chemomech.inverse.identifiability import identifiability, regression_normal_matrix

    if m1 is not None:
        return {"model": "M1"} | m1.fit.identifiability()
    X = np.concatenate([p.data.X[used_pixels(p.data.mask, p, edge_px)] for p in prepared])
    return {"model": "M0"} | identifiability(regression_normal_matrix(X, m0.degree),
                                             m0.degree, label="M0")


def _write_outputs(config: RunConfig, out: Path, prepared: list[PreparedParticle],
                   m1: M1Outcome | None, m2, residuals: dict, summary: dict
                   ) -> list[ResidualMapJob]:
    """Write config.yaml, fields.h5 and the figures but the residual maps, which it returns
    (drawn by every rank: `save_residual_maps`)."""
    from chemomech.analysis.report import (
        ResidualMapJob,
        plot_curves,
        plot_model_errors,
        write_pixel_fields,
    )

    figures = out / "figures"
    write_text_atomic(out / "config.yaml", dump_config(config))
    fields = {}
    residual_figures = []
    for p in prepared:
        name = p.data.name
        residual, used = residuals[name]
        main = config.model if config.model in residual else "M0"
        n = summary["legendre_degree"] + 1
        X = np.clip(p.data.X, 0.0, 1.0)
        f_a = legendre.evaluate(summary["coefficients"]["a"][:n], X)
        f_c = legendre.evaluate(summary["coefficients"]["c"][:n], X)
        maps = {"X": p.data.X, "mask": p.data.mask.astype(float), "used": used.astype(float),
                "eigenstrain_aa": np.where(p.data.mask, f_a, np.nan),
                "eigenstrain_cc": np.where(p.data.mask, f_c, np.nan)}
        maps |= {f"measured_{k[2:]}": v for k, v in p.strain_crystal.items()}
        if p.displacement is not None:
            maps |= {"d_x": p.displacement[..., 0], "d_y": p.displacement[..., 1]}
        crystal = {model: _crystal(r, p.data.rotation_rad) for model, r in residual.items()}
        for model, r in crystal.items():
            maps |= {f"residual_{model}_{k}": v for k, v in r.items()}
        if m1 is not None:
            model_maps = m1.images[name]
            maps |= {"u_x": model_maps["u_x"], "u_y": model_maps["u_y"]}
            elastic = strain_crystal_from_image(model_maps["e_xx"], model_maps["e_yy"],
                                                model_maps["e_xy"], p.data.rotation_rad)
            maps |= {"elastic_aa": elastic["e_aa"] - maps["eigenstrain_aa"],
                     "elastic_cc": elastic["e_cc"] - maps["eigenstrain_cc"],
                     "elastic_ac": elastic["e_ac"]}
        if m2 is not None:  # M2's fields in its lattice convention: measured lattice strain
            # = eigenstrain + elastic + residual; total strain = lattice + plastic
            from chemomech.analysis.report import plot_density_map

            m2_maps = m2.images[name]
            maps |= {"u_x": m2_maps["u_x"], "u_y": m2_maps["u_y"]}
            for kind, prefix in (("lattice", "e"), ("plastic", "plastic")):
                c = strain_crystal_from_image(m2_maps[f"{prefix}_xx"], m2_maps[f"{prefix}_yy"],
                                              m2_maps[f"{prefix}_xy"], p.data.rotation_rad)
                maps |= {f"{kind}_{k[2:]}": v for k, v in c.items()}
            maps |= {"elastic_aa": maps["lattice_aa"] - maps["eigenstrain_aa"],
                     "elastic_cc": maps["lattice_cc"] - maps["eigenstrain_cc"],
                     "elastic_ac": maps["lattice_ac"]}
            slip = {k: v for k, v in m2_maps.items() if k.startswith(("gamma_", "density_"))}
            maps |= slip
            plot_density_map(slip["density_total"], p.data.X, used, p.data.pixel_size_nm,
                             figures / f"density_{name}.png",
                             title=f"{name}: GND density, mean "
                                   f"{m2.mean_density_um2[name]:.3g} um^-2")
        fields[name] = {"pixel_size_nm": p.data.pixel_size_nm, "maps": maps}
        residual_figures.append(ResidualMapJob(
            crystal[main], used, p.data.pixel_size_nm, figures / f"residual_{name}.png",
            f"{name}: residual strain ({main}), mean X = {p.data.mean_X:.2f}"))
    write_pixel_fields(out / "fields.h5", fields)
    plot_curves(summary["eigenstrain_curve"], figures / "eigenstrain.png",
                baseline=summary["m0"]["eigenstrain_curve"] if m1 is not None else None,
                title=f"{summary['model']} (N = {summary['legendre_degree']}), M0 dashed"
                      + (", calibrated band" if "uncertainty" in summary else ""))
    plot_curves(summary["derivative_curve"], figures / "chemical_expansion.png",
                baseline=summary["m0"]["derivative_curve"] if m1 is not None else None,
                ylabel="df/dX (chemical expansion coefficient)")
    per_model = {name: {k[len("model_error_"):]: v for k, v in e.items()
                        if k.startswith("model_error_")}
                 for name, e in summary["per_particle"].items()}
    plot_model_errors(summary["model_errors"], figures / "model_error.png", per_model)
    return residual_figures
