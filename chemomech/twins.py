r"""Independent twin generator: a second discretisation of the forward problem, no inverse crime.

`chemomech.synth.simulate_particle` shares the inversion's mesher, mesh size, P1 composition
space, L2 projection and pixel-centre sampling, so twins made by it cannot reveal an error that
both sides make.  This module solves the same physics with none of those pieces:

* **Geometry**: the smooth platelet outline (superellipse) and elliptical voids of the spec
  (`chemomech.synth.platelet_geometry`), polygonised finely (``h / (4 k)``) and meshed by gmsh
  here, in the *crystal* frame :math:`\xi = R^T (x - x_0)`, with element size ``h / k`` (k =
  `supersample`), not from the pixel mask.
* **Physics in the crystal frame**: plane-stress stiffness reduced here from the 3-D Voigt
  data (:math:`C'_{ij} = C_{ij} - C_{i2}C_{j2}/C_{22}`, i, j in {a, c}, and :math:`C_{55}`), the
  eigenstrain :math:`\mathrm{diag}(f_a(X), f_c(X))` needs no rotation, the stress in Voigt
  form; f from numpy's Legendre-to-power conversion.  Optionally C(X) by the 3-D rule of
  mixtures (`stiffness="mixed"`).
* **P2 displacements** (`degree`), traction-free, rigid modes removed through a PETSc null
  space; MUMPS LU.
* **X pointwise** from the continuous field (`chemomech.synth.composition_function`) at the
  quadrature points (a UFL expression of the coordinates), never an image.
* **Detector model**: the stored strain of a pixel is the average of
  :math:`H_{cr} = \nabla_\xi u_\xi` over the pixel's area (``n_sub x n_sub`` midpoints, only
  those inside the particle; grad u interpolated exactly into DG1); the mask holds pixels
  more than half covered.  The observed X is the continuous field blurred by a Gaussian of
  std `blur_px` (ptychography resolution), sampled at the pixel centres shifted by
  `shift_px` (misregistration of X against strain), plus Gaussian noise `noise_composition`,
  clipped to [0, 1]; strain noise `noise_strain` on e_xx, e_yy, e_xy and theta.

Units: nm, GPa, dimensionless strain.  Stored frame: crystal, theta_sign = +1, as
`chemomech.synth`.  Everything is solved on COMM_SELF.  Slip is not modelled here.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from chemomech.exceptions import InputError
from chemomech.mechanics.materials import MAXISCH_CEDER_GPA
from chemomech.synth import ParticleSpec, composition_function, platelet_geometry

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TwinOptions:
    """Discretisation and observation model of the independent generator.

    `supersample` k: element size h / k; `degree`: Lagrange degree of u; `n_sub`: midpoints per
    pixel side for the area average; `blur_px`: Gaussian std of the X blur (px);
    `shift_px`: (di, dj) misregistration of X against the strain (px); `stiffness`:
    "average" (mean of the two phases' 3-D tensors) or "mixed" (C(X)).
    """

    supersample: float = 3.0
    degree: int = 2
    n_sub: int = 4
    blur_px: float = 0.0
    shift_px: tuple[float, float] = (0.0, 0.0)
    stiffness: str = "average"

    def __post_init__(self) -> None:
        checks = {"supersample": self.supersample >= 1.0, "degree": self.degree in (1, 2, 3),
                  "n_sub": self.n_sub >= 1, "blur_px": self.blur_px >= 0,
                  "shift_px": len(self.shift_px) == 2,
                  "stiffness": self.stiffness in ("average", "mixed")}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise InputError(f"invalid twin option(s) {bad} in {self!r}", field=bad[0])


# --------------------------------------------------------------------------- material


def _voigt6(phase: str) -> np.ndarray:
    c = MAXISCH_CEDER_GPA[phase]
    C = np.diag([c["C11"], c["C22"], c["C33"], c["C44"], c["C55"], c["C66"]])
    for (i, j), key in {(0, 1): "C12", (0, 2): "C13", (1, 2): "C23"}.items():
        C[i, j] = C[j, i] = c[key]
    return C


def plane_stress_voigt(C6) -> list[list]:
    r"""3x3 ac-plane stiffness (GPa) on (e_aa, e_cc, 2 e_ac) for sigma_bb = 0: numpy or UFL.

    :math:`C'_{ij} = C_{ij} - C_{i2} C_{j2} / C_{22}` (i, j in {1, 3}), shear :math:`C_{55}`.
    """
    ia, ib, ic = 0, 1, 2
    red = [[C6[i][j] - C6[i][ib] * C6[j][ib] / C6[ib][ib] for j in (ia, ic)] for i in (ia, ic)]
    return [[red[0][0], red[0][1], 0.0], [red[1][0], red[1][1], 0.0], [0.0, 0.0, C6[4][4]]]


def _stiffness(stiffness: str, X):
    """C6 (nested lists, numpy numbers or UFL) of the model: the phase mean or C(X)."""
    lfp, fp = _voigt6("LiFePO4"), _voigt6("FePO4")
    if stiffness == "average":
        return (0.5 * (lfp + fp)).tolist()
    return [[X * lfp[i, j] + (1 - X) * fp[i, j] for j in range(6)] for i in range(6)]


def legendre_power(coefficients) -> np.ndarray:
    """Power-series coefficients in t = 2X - 1 of sum_n c_n P_n(t) (numpy.polynomial)."""
    return np.polynomial.legendre.leg2poly(np.asarray(coefficients, dtype=float))


def horner(power: np.ndarray, t):
    """sum_k power[k] t^k (numpy or UFL)."""
    value = 0.0 * t + float(power[-1])
    for c in power[-2::-1]:
        value = value * t + float(c)
    return value


# --------------------------------------------------------------------------- geometry


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _outline_nm(spec: ParticleSpec, centre: np.ndarray, spacing: float) -> np.ndarray:
    """Closed superellipse outline (image frame, nm), points about `spacing` apart."""
    A, B, p = spec.length_nm / 2.0, spec.width_nm / 2.0, spec.outline_exponent
    long_axis = _rotation(spec.rotation_rad + spec.outline_tilt_rad) @ np.array([0.0, 1.0])
    short_axis = np.array([-long_axis[1], long_axis[0]])
    n = max(64, int(math.ceil(2.0 * math.pi * A / spacing)))
    t = np.linspace(0.0, 2.0 * np.pi, 8 * n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    pts = (np.outer(A * np.sign(c) * np.abs(c) ** (2.0 / p), long_axis)
           + np.outer(B * np.sign(s) * np.abs(s) ** (2.0 / p), short_axis))
    # resample at equal arc length so that the corners of p < 2 outlines are resolved
    seg = np.linalg.norm(np.diff(np.vstack([pts, pts[:1]]), axis=0), axis=1)
    arc = np.r_[0.0, np.cumsum(seg)]
    m = max(64, int(math.ceil(arc[-1] / spacing)))
    target = np.linspace(0.0, arc[-1], m, endpoint=False)
    closed = np.vstack([pts, pts[:1]])
    return centre + np.c_[np.interp(target, arc, closed[:, 0]),
                          np.interp(target, arc, closed[:, 1])]


def _ellipse_nm(void: tuple[float, ...], spacing: float) -> np.ndarray:
    cx, cy, rx, ry, angle = void
    n = max(24, int(math.ceil(2.0 * math.pi * rx / spacing)))
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    local = np.c_[rx * np.cos(t), ry * np.sin(t)]
    return np.array([cx, cy]) + local @ _rotation(angle).T


def crystal_mesh(loops_image_nm: list[np.ndarray], origin: np.ndarray, rotation_rad: float,
                 size_nm: float):
    """gmsh triangle mesh (COMM_SELF) of the outline minus the voids, in crystal coordinates
    xi = R^T (x - origin) (nm); loop 0 is the outline."""
    from dolfinx.io import gmsh as gmshio
    from mpi4py import MPI

    from chemomech.mechanics.mesh import gmsh_session

    R = _rotation(rotation_rad)
    with gmsh_session("independent_twin", MPI.COMM_SELF) as gmsh:
        gmsh.model.add("independent_twin")
        curve_loops = []
        for loop in loops_image_nm:
            xi = (loop - origin) @ R  # rows: R^T (x - origin)
            points = [gmsh.model.geo.addPoint(px, py, 0.0) for px, py in xi]
            lines = [gmsh.model.geo.addLine(points[k], points[(k + 1) % len(points)])
                     for k in range(len(points))]
            curve_loops.append(gmsh.model.geo.addCurveLoop(lines))
        surface = gmsh.model.geo.addPlaneSurface(curve_loops)
        gmsh.model.geo.synchronize()
        gmsh.model.addPhysicalGroup(2, [surface], 1)
        gmsh.option.setNumber("Mesh.MeshSizeMin", size_nm)
        gmsh.option.setNumber("Mesh.MeshSizeMax", size_nm)
        gmsh.option.setNumber("Mesh.MeshSizeFromPoints", 0)
        gmsh.option.setNumber("Mesh.MeshSizeExtendFromBoundary", 0)
        gmsh.option.setNumber("Mesh.Algorithm", 5)  # Delaunay
        gmsh.model.mesh.generate(2)
        data = gmshio.model_to_mesh(gmsh.model, MPI.COMM_SELF, 0, gdim=2)
    return data.mesh


# --------------------------------------------------------------------------- solve


def _solve(domain, eps_star_of_X, X, C6, degree: int):
    """P`degree` displacement of the traction-free problem, rigid modes removed (MUMPS)."""
    import ufl
    from dolfinx import fem, la
    from dolfinx.fem import petsc as fem_petsc
    from petsc4py import PETSc

    V = fem.functionspace(domain, ("Lagrange", degree, (2,)))
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    D = ufl.as_matrix(plane_stress_voigt(C6))

    def voigt(e):
        return ufl.as_vector([e[0, 0], e[1, 1], e[0, 1] + e[1, 0]])

    def strain(w):
        return ufl.sym(ufl.grad(w))

    eps_star = eps_star_of_X(X)
    dx = ufl.Measure("dx", domain=domain, metadata={"quadrature_degree": 2 * degree + 4})
    a = fem.form(ufl.inner(D * voigt(strain(u)), voigt(strain(v))) * dx)
    L = fem.form(ufl.inner(D * voigt(eps_star), voigt(strain(v))) * dx)
    A = fem_petsc.assemble_matrix(a)
    A.assemble()
    b = fem_petsc.assemble_vector(L)
    b.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)

    modes = [fem.Function(V) for _ in range(3)]
    modes[0].interpolate(lambda x: np.vstack([np.ones(x.shape[1]), np.zeros(x.shape[1])]))
    modes[1].interpolate(lambda x: np.vstack([np.zeros(x.shape[1]), np.ones(x.shape[1])]))
    modes[2].interpolate(lambda x: np.vstack([-x[1], x[0]]))
    basis = [m.x for m in modes]
    la.orthonormalize(basis)
    nullspace = PETSc.NullSpace().create(vectors=[m.x.petsc_vec for m in modes],
                                         comm=domain.comm)
    A.setNullSpace(nullspace)
    nullspace.remove(b)
    ksp = PETSc.KSP().create(domain.comm)
    ksp.setOperators(A)
    ksp.setType("preonly")
    pc = ksp.getPC()
    pc.setType("lu")
    pc.setFactorSolverType("mumps")
    pc.setFactorSetUpSolverType()
    F = pc.getFactorMatrix()
    F.setMumpsIcntl(24, 1)  # detect the three null pivots
    F.setMumpsIcntl(25, 0)
    uh = fem.Function(V, name="u")
    ksp.solve(b, uh.x.petsc_vec)
    if ksp.getConvergedReason() < 0:
        raise RuntimeError(f"independent twin solve failed: {ksp.getConvergedReason()}")
    nullspace.remove(uh.x.petsc_vec)
    uh.x.scatter_forward()
    residual = A.createVecLeft()
    A.mult(uh.x.petsc_vec, residual)
    residual.axpy(-1.0, b)
    if residual.norm() > 1e-8 * b.norm():
        raise RuntimeError(f"independent twin solve inaccurate: |Au - b| / |b| = "
                           f"{residual.norm() / b.norm():.2e}")
    ksp.destroy()
    return uh


def _evaluate(function, points_xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of `function` at points (n, 2) of its mesh and a mask of the points found."""
    from dolfinx import geometry

    domain = function.function_space.mesh
    pts = np.c_[points_xi, np.zeros(len(points_xi))]
    tree = geometry.bb_tree(domain, domain.topology.dim)
    candidates = geometry.compute_collisions_points(tree, pts)
    colliding = geometry.compute_colliding_cells(domain, candidates, pts)
    found = np.array([len(colliding.links(k)) > 0 for k in range(len(pts))], dtype=bool)
    cells = np.array([colliding.links(k)[0] for k in np.flatnonzero(found)], dtype=np.int32)
    values = np.full((len(pts), function.function_space.value_size), np.nan)
    if cells.size:
        values[found] = function.eval(pts[found], cells)
    return values, found


def simulate_independent(spec: ParticleSpec, options: TwinOptions | None = None):
    """An independent twin (`chemomech.io.stack.ParticleData` with `truth`) of `spec`.

    The geometry, composition law, Legendre coefficients and noise levels come from `spec`
    (its `fe_degree` and `mesh_size_px` are ignored: `options` sets the discretisation).
    """
    import ufl
    from dolfinx import fem

    from chemomech import __version__
    from chemomech.io.stack import ParticleData
    from chemomech.synth import _generators

    options = options or TwinOptions()
    started = time.perf_counter()
    geometry_rng, rng = _generators(spec)
    h = spec.pixel_size_nm
    pixel_mask, centre, voids = platelet_geometry(spec, geometry_rng)
    X_law = composition_function(pixel_mask, spec)  # X(x, y), image frame, nm
    spacing = h / (4.0 * options.supersample)
    loops = [_outline_nm(spec, centre, spacing)] + [_ellipse_nm(v, spacing) for v in voids]
    R = _rotation(spec.rotation_rad)
    domain = crystal_mesh(loops, centre, spec.rotation_rad, h / options.supersample)

    xi = ufl.SpatialCoordinate(domain)
    x_img = [centre[0] + R[0, 0] * xi[0] + R[0, 1] * xi[1],
             centre[1] + R[1, 0] * xi[0] + R[1, 1] * xi[1]]
    X = X_law(x_img[0], x_img[1], tanh=ufl.tanh)
    pa, pc = legendre_power(spec.coefficients_a), legendre_power(spec.coefficients_c)

    def eps_star_of_X(Xe):
        t = 2.0 * Xe - 1.0
        return ufl.as_matrix([[horner(pa, t), 0.0], [0.0, horner(pc, t)]])

    u = _solve(domain, eps_star_of_X, X, _stiffness(options.stiffness, X), options.degree)
    W = fem.functionspace(domain, ("Discontinuous Lagrange", max(options.degree - 1, 0),
                                   (2, 2)))
    grad_u = fem.Function(W)
    grad_u.interpolate(fem.Expression(ufl.grad(u), W.element.interpolation_points))

    # detector: average H_cr over each pixel's area (n_sub x n_sub midpoints inside)
    shape = pixel_mask.shape
    k = options.n_sub
    offsets = ((np.arange(k) + 0.5) / k - 0.5) * h
    oi, oj = (a.ravel() for a in np.meshgrid(offsets, offsets, indexing="ij"))
    candidate = ndimage.binary_dilation(pixel_mask, iterations=2)
    ij = np.argwhere(candidate)
    sub = (ij[:, None, :] * h + np.stack([oi, oj], axis=-1)[None]).reshape(-1, 2)
    H_sub, inside = _evaluate(grad_u, (sub - centre) @ R)
    inside = inside.reshape(len(ij), k * k)
    H_sub = np.where(inside.reshape(-1, 1), H_sub, 0.0).reshape(len(ij), k * k, 4)
    covered = inside.mean(axis=1)
    keep = covered > 0.5
    H_px = H_sub[keep].sum(axis=1) / inside[keep].sum(axis=1)[:, None]
    mask = np.zeros(shape, dtype=bool)
    mask[ij[keep, 0], ij[keep, 1]] = True
    centres = ij[keep] * h
    u_px, found = _evaluate(u, (centres - centre) @ R)
    u_img = np.where(found[:, None], u_px @ R.T, np.nan)  # u_x = R u_xi

    def image(values):
        out = np.full(shape, np.nan)
        out[ij[keep, 0], ij[keep, 1]] = values
        return out

    H = H_px.reshape(-1, 2, 2)
    clean = {"e_xx": image(H[:, 0, 0]), "e_yy": image(H[:, 1, 1]),
             "e_xy": image(0.5 * (H[:, 0, 1] + H[:, 1, 0])),
             "theta": image(0.5 * (H[:, 0, 1] - H[:, 1, 0]))}
    noisy = {name: value + rng.normal(0.0, spec.noise_strain, shape)
             if spec.noise_strain > 0 else value.copy() for name, value in clean.items()}

    X_observed = observed_composition(X_law, shape, h, options.blur_px, options.shift_px)
    X_noise = rng.normal(0.0, spec.noise_composition, shape)
    X_stored = np.where(mask, np.clip(X_observed + X_noise, 0.0, 1.0), np.nan)
    gi, gj = np.meshgrid(np.arange(shape[0]) * h, np.arange(shape[1]) * h, indexing="ij")
    X_truth = np.where(mask, X_law(gi, gj), np.nan)

    truth = {
        "coefficients_a": np.asarray(spec.coefficients_a, dtype=float),
        "coefficients_c": np.asarray(spec.coefficients_c, dtype=float),
        "X": X_truth, "u_x": image(u_img[:, 0]), "u_y": image(u_img[:, 1]), **clean,
        "noise_strain": float(spec.noise_strain),
        "noise_composition": float(spec.noise_composition),
        "seed": int(spec.seed), "group": spec.group,
        "mean_X": float(np.nanmean(X_truth)),
        "legendre": "f_i(X) = sum_n c_n P_n(2X - 1), crystal frame, reference LiFePO4",
        "generator": "independent", "fe_degree": int(options.degree),
        "num_cells": int(domain.topology.index_map(2).size_global),
        "spec": {k_: (list(v) if isinstance(v, tuple) else v) for k_, v in asdict(spec).items()},
        "options": {k_: (list(v) if isinstance(v, tuple) else v)
                    for k_, v in asdict(options).items()},
    }
    particle = ParticleData(
        name=spec.name, X=X_stored, **noisy, mask=mask, pixel_size_nm=h,
        rotation_rad=spec.rotation_rad, strain_frame="crystal", theta_sign=1,
        reference="LiFePO4",
        source=f"chemomech {__version__} independent twin (seed {spec.seed}, {spec.group}, "
               f"P{options.degree}, h/{options.supersample}, blur {options.blur_px} px, "
               f"shift {tuple(options.shift_px)} px)",
        truth=truth)
    logger.info("independent twin %s: %d px, %d cells, P%d, %.2f s", spec.name,
                int(mask.sum()), truth["num_cells"], options.degree,
                time.perf_counter() - started)
    return particle


def observed_composition(X_law, shape: tuple[int, int], h: float, blur_px: float,
                         shift_px: tuple[float, float], supersample: int = 4) -> np.ndarray:
    """X as the X-ray map sees it: the continuous field blurred (Gaussian, std `blur_px`) and
    sampled at the pixel centres shifted by `shift_px` (px), whole image."""
    di, dj = (float(s) for s in shift_px)
    if blur_px == 0.0:
        gi, gj = np.meshgrid((np.arange(shape[0]) + di) * h, (np.arange(shape[1]) + dj) * h,
                             indexing="ij")
        return X_law(gi, gj)
    s, pad = supersample, int(math.ceil(4 * blur_px + abs(di) + abs(dj))) + 1
    fine_i = (np.arange(-pad * s, (shape[0] + pad) * s) / s) * h
    fine_j = (np.arange(-pad * s, (shape[1] + pad) * s) / s) * h
    fine = X_law(*np.meshgrid(fine_i, fine_j, indexing="ij"))
    blurred = ndimage.gaussian_filter(fine, sigma=blur_px * s, mode="nearest")
    gi, gj = np.meshgrid((np.arange(shape[0]) + di + pad) * s, (np.arange(shape[1]) + dj + pad)
                         * s, indexing="ij")
    return ndimage.map_coordinates(blurred, [gi, gj], order=3, mode="nearest")


# --------------------------------------------------------------------------- verification helpers

#: X range over which the law is checked (the study's particles hold 0.03 ... 0.97).
CHECK_X = np.linspace(0.05, 0.95, 19)


def verification_spec(seed: int, noise_composition: float = 0.0, **kw) -> ParticleSpec:
    """A small two-phase twin (900 x 550 nm, 16.6 nm px) with a quadratic law, drawn by seed:
    rotation U(-pi/2, pi/2), mean X U(0.35, 0.65), interface normal (101) + U(-0.25, 0.25)."""
    from chemomech.synth import INTERFACE_101_RAD, vegard_coefficients

    rng = np.random.default_rng([seed, 15])
    a, c = vegard_coefficients(quadratic_a=0.004, quadratic_c=-0.002)
    args = dict(rotation_rad=float(rng.uniform(-np.pi / 2, np.pi / 2)), length_nm=900.0,
                width_nm=550.0, noise_strain=1e-3, noise_composition=noise_composition,
                interface_normal_rad=float(INTERFACE_101_RAD + rng.uniform(-0.25, 0.25)),
                coefficients_a=tuple(a), coefficients_c=tuple(c), seed=seed) | kw
    return ParticleSpec(f"twin{seed}", float(rng.uniform(0.35, 0.65)), **args)


def strain_model_builder(particle, fe_degree: int = 1, edge_exclusion_px: int = 2):
    """build(X_image, mesh_size_px) -> M1Model (degree 2, strain misfit, COMM_SELF) of `particle`
    as the pipeline builds it (mesh of the pixel mask, measured image-frame strain)."""
    from mpi4py import MPI

    from chemomech.correlative.displacement import measured_strain
    from chemomech.inverse.particle import particle_setup
    from chemomech.inverse.problem import M1Model
    from chemomech.mechanics.mesh import mesh_from_mask

    e = measured_strain(particle)
    strain = np.stack([e["e_xx"], e["e_yy"], e["e_xy"]], axis=-1)
    meshes: dict[float, object] = {}

    def build(X_image: np.ndarray, mesh_size_px: float):
        if mesh_size_px not in meshes:
            meshes[mesh_size_px] = mesh_from_mask(particle.mask, particle.pixel_size_nm,
                                                  MPI.COMM_SELF, mesh_size_px=mesh_size_px)
        setup = particle_setup(particle.name, meshes[mesh_size_px], X_image,
                               particle.rotation_rad, edge_exclusion_px=edge_exclusion_px,
                               fe_degree=fe_degree, strain=strain)
        return M1Model([setup], degree=2, comm=MPI.COMM_SELF)
    return build


def law_error(coefficients, truth: dict, X: np.ndarray = CHECK_X) -> tuple[float, float]:
    """max_X |f - f_true| / range(f_true) for f_a and f_c (numpy Legendre, not the package's)."""
    leg = np.polynomial.legendre.legval
    a, c = np.split(np.asarray(coefficients, dtype=float), 2)
    out = []
    for est, key in ((a, "coefficients_a"), (c, "coefficients_c")):
        true = leg(2 * X - 1, truth[key])
        out.append(float(np.abs(leg(2 * X - 1, est) - true).max() / np.ptp(true)))
    return out[0], out[1]


def band_covers(band: dict, truth: dict) -> np.ndarray:
    """Boolean (2, len(X)): does the band of f_a (row 0) and f_c (row 1) hold the true law?"""
    leg = np.polynomial.legendre.legval
    X = np.asarray(band["X"])
    rows = []
    for d, key in (("a", "coefficients_a"), ("c", "coefficients_c")):
        true = leg(2 * X - 1, truth[key])
        rows.append((band[f"{d}_lo"] <= true) & (true <= band[f"{d}_hi"]))
    return np.array(rows)
