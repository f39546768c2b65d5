r"""Synthetic twin particles with known truth: verification data and the bundled demo data.

A twin is made in four steps, each a function of this module:

1. **Shape** (`platelet_mask`): a convex platelet outline, the superellipse
   :math:`|\xi/A|^p + |\eta/B|^p \le 1` (p = 1 a diamond, 2 an ellipse, larger a rounded
   rectangle) with its long axis along crystal c (tilted by `outline_tilt_rad`), and 0-3
   elliptical voids kept away from the edge and from each other.
2. **Composition** (`composition_field`): phase-separated particles (the study's LxFP group,
   0.15 < mean X < 0.85) hold a Li-poor phase `x_poor` and a Li-rich phase `x_rich` split by a
   straight tanh interface :math:`X = x_p + (x_r - x_p)\,\tfrac12[1 + \tanh(2 s / w)]`, s the
   signed distance (nm) to the interface and w the interface width (X goes from 12 % to 88 %
   of the jump over w); the interface normal is near the (101) plane normal of LiFePO4 and
   its offset is solved so that the particle mean equals `mean_X`.  FP-like (mean X <= 0.15)
   and LFP-like (mean X >= 0.85) particles are single phase: X = mean_X plus an optional
   gentle linear gradient.
3. **Strain** (`simulate_particle`): the traction-free forward model
   (chemomech.mechanics.forward.ElasticityProblem, default Material()) with the eigenstrain
   :math:`R\,\mathrm{diag}(f_a(X), f_c(X))\,R^T` of known shifted-Legendre coefficients
   (default: Vegard, `vegard_coefficients`) plus, optionally, the plastic eigenstrain
   :math:`\gamma(x)\,\mathrm{sym}(\hat s \otimes \hat n)` of slip system D
   (b = [001], plane (100): s = crystal c, n = crystal a) with a Gaussian band of slip
   :math:`\gamma = \gamma_0 \exp(-s^2 / 2\ell^2)` along the phase boundary.  The clean X
   (and gamma) images are carried onto P1 as the inversion carries measured X
   (chemomech.mechanics.fields.image_to_function, L2 projection).  What 4D-STEM measures is
   the lattice distortion :math:`H = \nabla u - \gamma\,\hat s\otimes\hat n` (slip moves
   material without distorting the lattice; without slip :math:`H = \nabla u`), sampled at
   the pixel centres and stored in the crystal frame with theta_sign = +1, i.e.
   :math:`H_{cr} = R^T H\, R = [[e_{aa}, e_{ac} + \theta], [e_{ac} - \theta, e_{cc}]]`
   (DESIGN §2, chemomech.io.stack): :math:`\theta = (\partial_c u_a - \partial_a u_c)/2
   = -(\partial_x u_y - \partial_y u_x)/2`, the clockwise lattice rotation.  The frame check
   (chemomech.correlative.frames.frame_check) finds exactly this frame as the most compatible.
4. **Noise**: i.i.d. Gaussian noise (std `noise_strain`, default 1e-3) on e_xx, e_yy, e_xy and
   theta, and (std `noise_composition`, default 0.05) on X, clipped to [0, 1].  The truth
   keeps the clean fields.

The truth (``/particles/<name>/truth`` of the stack) holds: ``coefficients_a``,
``coefficients_c`` (Legendre a_n, c_n), ``X`` (clean), ``u_x``, ``u_y`` (nm, image frame,
rigid modes removed), clean ``e_xx e_yy e_xy theta`` (stored frame), ``noise_strain``,
``noise_composition``, ``seed`` and the generation parameters, and for slip ``gamma`` and
``gnd_density_um2`` :math:`\rho = |\nabla\gamma\cdot\hat s| / |b|` (um^-2).

MPI: `make_default_dataset` deals the particles round-robin over the ranks of `comm`; each
particle is meshed and solved on COMM_SELF (so the file does not depend on the number of
ranks), the particles are gathered on rank 0, which writes the stack.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage, optimize

from chemomech.correlative.frames import rotation_matrix
from chemomech.exceptions import InputError
from chemomech.io.progress import progress
from chemomech.mechanics import legendre
from chemomech.mechanics.materials import LATTICE_ANGSTROM, vegard_misfit

if TYPE_CHECKING:
    from mpi4py import MPI

    from chemomech.io.stack import ParticleData

logger = logging.getLogger(__name__)

#: Mean-X limits of the study's groups: FP (X < 0.15), LxFP, LFP (X > 0.85).
FP_MAX_X = 0.15
LFP_MIN_X = 0.85

#: Angle (rad, from crystal a towards c) of the (101) plane normal of LiFePO4, (1/a, 1/c).
INTERFACE_101_RAD = math.atan2(1.0 / LATTICE_ANGSTROM["LiFePO4"][2],
                               1.0 / LATTICE_ANGSTROM["LiFePO4"][0])

#: |b| of slip system D, b = [001]: the LiFePO4 c lattice parameter in nm.
SLIP_D_BURGERS_NM = LATTICE_ANGSTROM["LiFePO4"][2] / 10.0

#: Pixels of empty margin around the particle in the synthetic images.
MARGIN_PX = 4


def vegard_coefficients(quadratic_a: float = 0.0, quadratic_c: float = 0.0,
                        ) -> tuple[list[float], list[float]]:
    """Legendre coefficients (n = 0..2) of f_i(X) = m_i (1 - X) + q_i P_2(2X - 1), m from Vegard."""
    misfit = vegard_misfit("LiFePO4")
    a = [*legendre.from_linear(misfit["a"], 0.0), float(quadratic_a)]
    c = [*legendre.from_linear(misfit["c"], 0.0), float(quadratic_c)]
    return a, c


def group_of(mean_X: float) -> str:
    """The study's group of a particle by mean Li fraction: "FP", "LxFP" or "LFP"."""
    if mean_X <= FP_MAX_X:
        return "FP"
    if mean_X >= LFP_MIN_X:
        return "LFP"
    return "LxFP"


_DEFAULT_A, _DEFAULT_C = vegard_coefficients()


@dataclass(frozen=True, slots=True)
class ParticleSpec:
    """Everything that defines one synthetic particle (lengths in nm, angles in rad).

    `rotation_rad`: image x to crystal a (ccw); `outline_exponent` p of the superellipse;
    `outline_tilt_rad`: long axis relative to crystal c; `interface_normal_rad`: interface
    normal from crystal a; `single_phase_gradient`: half range of the linear X variation of a
    single-phase particle; `slip_amplitude` gamma_0 (0: no slip) and `slip_width_nm` l;
    `seed` drives the voids and the noise.
    """

    name: str
    mean_X: float
    rotation_rad: float = 0.0
    length_nm: float = 3000.0
    width_nm: float = 1500.0
    pixel_size_nm: float = 16.6
    outline_exponent: float = 2.0
    outline_tilt_rad: float = 0.0
    n_voids: int = 0
    void_radius_nm: tuple[float, float] = (50.0, 110.0)
    interface_width_nm: float = 120.0
    interface_normal_rad: float = INTERFACE_101_RAD
    x_poor: float = 0.03
    x_rich: float = 0.97
    single_phase_gradient: float = 0.0
    coefficients_a: tuple[float, ...] = tuple(_DEFAULT_A)
    coefficients_c: tuple[float, ...] = tuple(_DEFAULT_C)
    slip_amplitude: float = 0.0
    slip_width_nm: float = 100.0
    noise_strain: float = 1e-3
    noise_composition: float = 0.05
    fe_degree: int = 1
    mesh_size_px: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "mean_X": 0.0 <= self.mean_X <= 1.0,
            "length_nm": self.length_nm > 0 and self.width_nm > 0,
            "width_nm": 0 < self.width_nm <= self.length_nm,
            "pixel_size_nm": self.pixel_size_nm > 0,
            "outline_exponent": self.outline_exponent >= 1.0,
            "n_voids": 0 <= self.n_voids <= 3,
            "interface_width_nm": self.interface_width_nm > 0,
            "x_poor": 0.0 <= self.x_poor < self.x_rich <= 1.0,
            "noise_strain": self.noise_strain >= 0,
            "noise_composition": self.noise_composition >= 0,
            "fe_degree": self.fe_degree in (1, 2),
            "slip_width_nm": self.slip_width_nm > 0,
            "coefficients_c": len(self.coefficients_a) == len(self.coefficients_c) >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InputError(f"invalid synthetic particle parameter(s) {bad} in {self!r}",
                             field=bad[0])

    @property
    def group(self) -> str:
        """The study's group of this particle ("FP", "LxFP" or "LFP")."""
        return group_of(self.mean_X)

    @property
    def phase_separated(self) -> bool:
        """True for the LxFP group (two phases with a tanh interface)."""
        return self.group == "LxFP"


# --------------------------------------------------------------------------- geometry


def _generators(spec: ParticleSpec) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent random streams (geometry, noise) of a particle, both from `spec.seed`."""
    geometry, noise = np.random.SeedSequence(spec.seed).spawn(2)
    return np.random.default_rng(geometry), np.random.default_rng(noise)


def _image_coordinates(shape: tuple[int, int], h: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates x = i h, y = j h (nm), each of `shape`."""
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return i * h, j * h


def _long_axis(spec: ParticleSpec) -> np.ndarray:
    """Unit vector (image frame) of the outline's long axis: crystal c tilted by the tilt."""
    R = rotation_matrix(spec.rotation_rad + spec.outline_tilt_rad)
    return R @ np.array([0.0, 1.0])


def platelet_mask(spec: ParticleSpec, rng: np.random.Generator | None = None,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mask [i, j] of the platelet |xi/A|^p + |eta/B|^p <= 1 minus voids, and its centre (nm)."""
    mask, centre, _ = platelet_geometry(spec, rng)
    return mask, centre


def platelet_geometry(spec: ParticleSpec, rng: np.random.Generator | None = None,
                      ) -> tuple[np.ndarray, np.ndarray, list[tuple[float, ...]]]:
    """`platelet_mask` plus the voids as ellipses (cx, cy, rx, ry, angle) (nm, rad, image frame)."""
    h = spec.pixel_size_nm
    A, B, p = spec.length_nm / 2.0, spec.width_nm / 2.0, spec.outline_exponent
    long_axis = _long_axis(spec)
    short_axis = np.array([-long_axis[1], long_axis[0]])
    # extent of the rotated outline from its parametric boundary
    t = np.linspace(0.0, 2.0 * np.pi, 2001)
    c, s = np.cos(t), np.sin(t)
    xi = A * np.sign(c) * np.abs(c) ** (2.0 / p)
    eta = B * np.sign(s) * np.abs(s) ** (2.0 / p)
    boundary = np.outer(xi, long_axis) + np.outer(eta, short_axis)
    half = np.abs(boundary).max(axis=0)
    shape = tuple(int(math.ceil(2.0 * e / h)) + 2 * MARGIN_PX + 1 for e in half)
    centre = np.array([(n - 1) * h / 2.0 for n in shape])
    x, y = _image_coordinates(shape, h)
    dx, dy = x - centre[0], y - centre[1]
    xi_p = dx * long_axis[0] + dy * long_axis[1]
    eta_p = dx * short_axis[0] + dy * short_axis[1]
    mask = np.abs(xi_p / A) ** p + np.abs(eta_p / B) ** p <= 1.0
    voids: list[tuple[float, ...]] = []
    if spec.n_voids:
        rng = rng if rng is not None else _generators(spec)[0]
        mask, voids = _carve_voids(mask, spec, rng)
    return mask, centre, voids


def _carve_voids(mask: np.ndarray, spec: ParticleSpec, rng: np.random.Generator,
                 ) -> tuple[np.ndarray, list[tuple[float, ...]]]:
    """Cut `spec.n_voids` elliptical holes, each >= 3 px from the edge and from each other."""
    h = spec.pixel_size_nm
    x, y = _image_coordinates(mask.shape, h)
    out = mask.copy()
    clearance = 3.0 * h
    voids = []
    for k in range(spec.n_voids):
        radius = rng.uniform(*spec.void_radius_nm)
        aspect = rng.uniform(1.0, 1.5)
        angle = rng.uniform(0.0, np.pi)
        # distance (nm) of every inside pixel to the outside and to the voids cut so far
        room = ndimage.distance_transform_edt(out) * h
        candidates = np.flatnonzero(room.ravel() > aspect * radius + clearance)
        if candidates.size == 0:
            raise InputError(f"no room for void {k + 1} of radius {radius:.0f} nm in particle "
                             f"{spec.name!r}", field="n_voids")
        centre = np.unravel_index(candidates[rng.integers(candidates.size)], mask.shape)
        cx, cy = centre[0] * h, centre[1] * h
        ca, sa = math.cos(angle), math.sin(angle)
        u = (x - cx) * ca + (y - cy) * sa
        v = -(x - cx) * sa + (y - cy) * ca
        out &= (u / (aspect * radius)) ** 2 + (v / radius) ** 2 > 1.0
        voids.append((cx, cy, aspect * radius, radius, angle))
    return out, voids


# --------------------------------------------------------------------------- composition


def _interface_normal(spec: ParticleSpec) -> np.ndarray:
    """Unit normal (image frame) of the phase boundary, pointing into the Li-rich phase."""
    return rotation_matrix(spec.rotation_rad) @ np.array(
        [math.cos(spec.interface_normal_rad), math.sin(spec.interface_normal_rad)])


def _mask_centroid(mask: np.ndarray, h: float) -> np.ndarray:
    """Centroid (nm) of the mask's pixel centres."""
    i, j = np.nonzero(mask)
    return np.array([i.mean() * h, j.mean() * h])


def interface_distance(mask: np.ndarray, spec: ParticleSpec) -> np.ndarray:
    """Signed distance s (nm, > 0 on the Li-rich side) of each pixel centre to the interface."""
    x, y = _image_coordinates(mask.shape, spec.pixel_size_nm)
    return signed_distance(x, y, *interface_plane(mask, spec))


def signed_distance(x, y, point: np.ndarray, normal: np.ndarray):
    """s = n . ((x, y) - point) (nm): signed distance to the plane through `point` (numpy, UFL)."""
    return (x - point[0]) * normal[0] + (y - point[1]) * normal[1]


def interface_plane(mask: np.ndarray, spec: ParticleSpec) -> tuple[np.ndarray, np.ndarray]:
    """A point (nm, image frame) of the phase boundary and its unit normal (into the Li-rich
    phase), placed so that the mean of X over the pixel centres of `mask` equals `mean_X`."""
    if not spec.phase_separated:
        raise InputError(f"particle {spec.name!r} (mean X {spec.mean_X}) is single phase: "
                         "it has no interface", field="mean_X")
    h = spec.pixel_size_nm
    x, y = _image_coordinates(mask.shape, h)
    centroid = _mask_centroid(mask, h)
    n = _interface_normal(spec)
    along = (x - centroid[0]) * n[0] + (y - centroid[1]) * n[1]
    w = spec.interface_width_nm
    jump = spec.x_rich - spec.x_poor

    def mean_minus_target(offset: float) -> float:
        X = spec.x_poor + jump * 0.5 * (1.0 + np.tanh(2.0 * (along[mask] - offset) / w))
        return float(X.mean()) - spec.mean_X

    reach = float(np.abs(along[mask]).max()) + 10.0 * w
    if not spec.x_poor < spec.mean_X < spec.x_rich:
        raise InputError(f"mean X {spec.mean_X} of particle {spec.name!r} is not between the "
                         f"phases {spec.x_poor} and {spec.x_rich}", field="mean_X")
    offset = optimize.brentq(mean_minus_target, -reach, reach, xtol=1e-9 * w)
    return centroid + offset * n, n


def composition_function(mask: np.ndarray, spec: ParticleSpec) -> Callable:
    """Clean Li fraction as a function X(x, y, tanh=np.tanh) of image coordinates (nm).

    Works on numpy arrays and, with ``tanh=ufl.tanh``, on UFL expressions (the independent
    twin generator, chemomech.twins, evaluates it at quadrature points).  Its mean over the
    pixel centres of `mask` is `spec.mean_X`.
    """
    if spec.phase_separated:
        point, n = interface_plane(mask, spec)
        jump, w = spec.x_rich - spec.x_poor, spec.interface_width_nm

        def two_phase(x, y, tanh=np.tanh):
            return spec.x_poor + jump * 0.5 * (1.0 + tanh(2.0 * signed_distance(x, y, point, n)
                                                          / w))
        return two_phase
    x, y = _image_coordinates(mask.shape, spec.pixel_size_nm)
    centroid = _mask_centroid(mask, spec.pixel_size_nm)
    n = _interface_normal(spec)
    reach = float(np.abs(signed_distance(x, y, centroid, n)[mask]).max())
    amplitude = min(spec.single_phase_gradient, spec.mean_X, 1.0 - spec.mean_X)

    def single_phase(x, y, tanh=None):
        return spec.mean_X + amplitude * signed_distance(x, y, centroid, n) / reach
    return single_phase


def composition_field(mask: np.ndarray, spec: ParticleSpec) -> np.ndarray:
    """Clean Li fraction X [i, j] (whole image), its mean over the mask equal to `spec.mean_X`."""
    return composition_function(mask, spec)(*_image_coordinates(mask.shape, spec.pixel_size_nm))


def slip_field(mask: np.ndarray, spec: ParticleSpec) -> tuple[np.ndarray, np.ndarray]:
    r"""Slip gamma = gamma_0 exp(-s^2 / 2 l^2) and GND density |grad(gamma).s| / |b| (um^-2)."""
    if spec.slip_amplitude == 0.0 or not spec.phase_separated:
        zero = np.zeros(mask.shape)
        return zero, zero.copy()
    s = interface_distance(mask, spec)
    ell = spec.slip_width_nm
    gamma = spec.slip_amplitude * np.exp(-0.5 * (s / ell) ** 2)
    dgamma_ds = -s / ell**2 * gamma  # 1/nm, gradient along the interface normal
    slip_direction = rotation_matrix(spec.rotation_rad) @ np.array([0.0, 1.0])  # crystal c
    rho_nm2 = np.abs(dgamma_ds * float(_interface_normal(spec) @ slip_direction))
    return gamma, rho_nm2 / SLIP_D_BURGERS_NM * 1e6


# --------------------------------------------------------------------------- forward model


def _decompose_crystal(H_img: np.ndarray, rotation_rad: float, theta_sign: int = 1,
                       ) -> dict[str, np.ndarray]:
    """Maps of H_cr = R^T H_img R = [[e_aa, e_ac + s theta], [e_ac - s theta, e_cc]] (s = sign)."""
    from chemomech.correlative.frames import rotate_tensor_field

    H = rotate_tensor_field(H_img, -rotation_rad)  # Q = R(-phi) = R^T: Q H Q^T = R^T H R
    return {"e_xx": H[..., 0, 0], "e_yy": H[..., 1, 1],
            "e_xy": 0.5 * (H[..., 0, 1] + H[..., 1, 0]),
            "theta": theta_sign * 0.5 * (H[..., 0, 1] - H[..., 1, 0])}


def _to_image(values: np.ndarray, indices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Scatter per-pixel values into an image [i, j], NaN where no value is given."""
    image = np.full(shape, np.nan)
    image[indices[:, 0], indices[:, 1]] = values
    return image


def _slip_distortion(rotation_rad: float) -> np.ndarray:
    """beta_p / gamma = s (x) n in the image frame for system D: s = crystal c, n = crystal a."""
    R = rotation_matrix(rotation_rad)
    return np.outer(R[:, 1], R[:, 0])


def _slip_tensor(rotation_rad: float) -> np.ndarray:
    """sym(s (x) n) in the image frame for system D (the plastic strain per unit slip)."""
    beta = _slip_distortion(rotation_rad)
    return 0.5 * (beta + beta.T)


def simulate_particle(spec: ParticleSpec, comm: MPI.Comm | None = None) -> ParticleData:
    """A synthetic twin (chemomech.io.stack.ParticleData with `truth`) of `spec`; collective on
    comm.

    Mesh the mask, carry the clean X onto P1, solve the traction-free forward model with the
    Legendre (plus slip) eigenstrain, sample u and grad u at the pixel centres, rotate to the
    crystal frame and add noise.  Default comm: COMM_SELF.
    """
    import ufl
    from dolfinx import fem
    from mpi4py import MPI

    from chemomech.io.stack import ParticleData
    from chemomech.mechanics.fields import PixelSampler, image_to_function, sample_expression
    from chemomech.mechanics.forms import eigenstrain, stiffness_tensor
    from chemomech.mechanics.forward import ElasticityProblem
    from chemomech.mechanics.materials import Material
    from chemomech.mechanics.mesh import mesh_from_mask

    comm = MPI.COMM_SELF if comm is None else comm
    started = time.perf_counter()
    geometry_rng, rng = _generators(spec)
    h = spec.pixel_size_nm
    outline, _ = platelet_mask(spec, geometry_rng)
    particle_mesh = mesh_from_mask(outline, h, comm, mesh_size_px=spec.mesh_size_px)
    mask = particle_mesh.mask  # the mask actually meshed (repaired)
    X_clean = composition_field(mask, spec)
    gamma, gnd_density = slip_field(mask, spec)

    domain = particle_mesh.mesh
    P1 = fem.functionspace(domain, ("Lagrange", 1))
    X_fn = image_to_function(X_clean, h, P1, mask=mask, name="X")
    C = stiffness_tensor(Material().image_tensor(spec.rotation_rad))
    problem = ElasticityProblem(domain, C, degree=spec.fe_degree)
    eps_star = eigenstrain(X_fn, spec.coefficients_a, spec.coefficients_c, spec.rotation_rad)
    has_slip = bool(np.any(gamma != 0.0))
    if has_slip:
        gamma_fn = image_to_function(gamma, h, P1, mask=mask, name="gamma")
        eps_star = eps_star + gamma_fn * ufl.as_matrix(_slip_tensor(spec.rotation_rad).tolist())
    u = problem.solve(eps_star)

    indices = particle_mesh.pixel_indices()
    sampler = PixelSampler(problem.V, particle_mesh.pixel_points_nm())
    u_px = sampler.gather(sampler(u))
    lattice = ufl.grad(u)
    if has_slip:  # what 4D-STEM measures: the lattice distortion grad u - gamma s (x) n
        lattice = lattice - gamma_fn * ufl.as_matrix(_slip_distortion(spec.rotation_rad).tolist())
    degree = max(spec.fe_degree - 1, 1) if has_slip else None  # exact for P1 gamma
    grad_px = sampler.gather(sample_expression(lattice, sampler, degree).reshape(-1, 4))
    u_px, grad_px = comm.bcast((u_px, grad_px), root=0)
    clean = _decompose_crystal(grad_px.reshape(-1, 2, 2), spec.rotation_rad, theta_sign=1)
    clean = {name: _to_image(values, indices, mask.shape) for name, values in clean.items()}

    noisy = {name: clean[name] + rng.normal(0.0, spec.noise_strain, mask.shape)
             if spec.noise_strain > 0 else clean[name].copy() for name in clean}
    X_noise = rng.normal(0.0, spec.noise_composition, mask.shape)
    X_stored = np.where(mask, np.clip(X_clean + X_noise, 0.0, 1.0), np.nan)
    X_truth = np.where(mask, X_clean, np.nan)

    truth = {
        "coefficients_a": np.asarray(spec.coefficients_a, dtype=float),
        "coefficients_c": np.asarray(spec.coefficients_c, dtype=float),
        "X": X_truth,
        "u_x": _to_image(u_px[:, 0], indices, mask.shape),
        "u_y": _to_image(u_px[:, 1], indices, mask.shape),
        **clean,
        "noise_strain": float(spec.noise_strain),
        "noise_composition": float(spec.noise_composition),
        "seed": int(spec.seed),
        "group": spec.group,
        "mean_X": float(np.mean(X_clean[mask])),
        "legendre": "f_i(X) = sum_n c_n P_n(2X - 1), crystal frame, reference LiFePO4",
        "fe_degree": int(spec.fe_degree),
        "num_cells": int(domain.topology.index_map(2).size_global),
        "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()},
    }
    if has_slip:
        truth |= {"gamma": np.where(mask, gamma, np.nan),
                  "gnd_density_um2": np.where(mask, gnd_density, np.nan),
                  "slip_system": "D: b = [001], plane (100), line [010]",
                  "burgers_nm": SLIP_D_BURGERS_NM}
    from chemomech import __version__

    particle = ParticleData(
        name=spec.name, X=X_stored, **noisy, mask=mask, pixel_size_nm=h,
        rotation_rad=spec.rotation_rad, strain_frame="crystal", theta_sign=1,
        reference="LiFePO4",
        source=f"chemomech {__version__} synth (seed {spec.seed}, {spec.group}, "
               f"mean X {spec.mean_X:.3f}{', slip D' if has_slip else ''})",
        truth=truth)
    logger.info("synthesised %s: %s, mean X %.3f, %d px, %d voids, %d cells, %d DOFs, %.2f s",
                spec.name, spec.group, truth["mean_X"], int(mask.sum()), spec.n_voids,
                truth["num_cells"], problem.num_dofs, time.perf_counter() - started)
    return particle


# --------------------------------------------------------------------------- datasets


def particle_seed(seed: int, index: int) -> int:
    """Seed of particle `index` of a dataset: a 32-bit word of SeedSequence([seed, index])."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def default_specs(seed: int = 0, n_particles: int = 10, *, noise_strain: float = 1e-3,
                  noise_composition: float = 0.05, interface_width_nm: float = 120.0,
                  slip_amplitude: float = 0.0, quadratic: tuple[float, float] = (0.0, 0.0),
                  length_nm: float = 3000.0, width_nm: float = 1500.0,
                  pixel_size_nm: float = 16.6, fe_degree: int = 1,
                  mesh_size_px: float = 1.0) -> list[ParticleSpec]:
    """Specs of `n_particles` twins with mean X = linspace(0.03, 0.97): FP, LxFP and LFP groups.

    Random per particle (from `seed`): rotation in [-pi/2, pi/2), size x U(0.85, 1.15),
    aspect x U(0.9, 1.1), outline exponent U(1.4, 2.6), outline tilt N(0, 0.1) rad,
    0-3 voids, interface normal (101) + U(-0.25, 0.25) rad (either side Li-rich), single-phase
    gradient U(0, 0.02).  `slip_amplitude` gamma_0 > 0 adds slip to the LxFP particles.
    """
    if n_particles < 1:
        raise InputError(f"need at least one particle, got {n_particles}", field="particles")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    coefficients_a, coefficients_c = vegard_coefficients(*quadratic)
    means = np.linspace(0.03, 0.97, n_particles) if n_particles > 1 else np.array([0.5])
    specs = []
    for k, mean_X in enumerate(means):
        scale = rng.uniform(0.85, 1.15)
        aspect = rng.uniform(0.9, 1.1)
        specs.append(ParticleSpec(
            name=f"twin{k:02d}_X{round(100 * mean_X):02d}",
            mean_X=float(round(mean_X, 6)),
            rotation_rad=float(rng.uniform(-np.pi / 2, np.pi / 2)),
            length_nm=length_nm * scale,
            width_nm=min(width_nm * scale * aspect, length_nm * scale),
            pixel_size_nm=pixel_size_nm,
            outline_exponent=float(rng.uniform(1.4, 2.6)),
            outline_tilt_rad=float(rng.normal(0.0, 0.1)),
            n_voids=int(rng.integers(0, 4)),
            interface_width_nm=interface_width_nm,
            interface_normal_rad=float(INTERFACE_101_RAD + rng.uniform(-0.25, 0.25)
                                       + np.pi * rng.integers(0, 2)),
            single_phase_gradient=float(rng.uniform(0.0, 0.02)),
            coefficients_a=tuple(coefficients_a), coefficients_c=tuple(coefficients_c),
            slip_amplitude=slip_amplitude,
            noise_strain=noise_strain, noise_composition=noise_composition,
            fe_degree=fe_degree, mesh_size_px=mesh_size_px,
            seed=particle_seed(seed, k)))
    return specs


def simulate_dataset(specs: Sequence[ParticleSpec], comm: MPI.Comm | None = None,
                     independent=None) -> list[ParticleData] | None:
    """Twins of `specs`, dealt round-robin over the ranks (each solved on COMM_SELF).

    `independent`: None for this module's generator (the inversion's own discretisation), or
    a `chemomech.twins.TwinOptions` for the independent generator.
    Returns the particles in the order of `specs` on rank 0, None on the other ranks.
    A failure on any rank is raised on every rank.
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD if comm is None else comm
    mine, error = [], None
    for index in progress(range(comm.rank, len(specs), comm.size), "synthesis (rank 0's share)",
                          rank=comm.rank, log=logger):
        try:
            if independent is None:
                particle = simulate_particle(specs[index], MPI.COMM_SELF)
            else:
                from chemomech.twins import simulate_independent

                particle = simulate_independent(specs[index], independent)
            mine.append((index, particle))
        except Exception as exc:  # re-raised collectively below
            error = f"particle {specs[index].name}: {type(exc).__name__}: {exc}"
            logger.error("synthesis failed on rank %d: %s", comm.rank, error)
            break
    errors = [e for e in comm.allgather(error) if e is not None]
    if errors:
        raise InputError("synthesis failed: " + "; ".join(errors), field="particles")
    gathered = comm.gather(mine, root=0)
    if comm.rank != 0:
        return None
    return [particle for _, particle in sorted((p for part in gathered for p in part),
                                               key=lambda item: item[0])]


def make_default_dataset(path: str | Path, seed: int = 0, n_particles: int = 10,
                         comm: MPI.Comm | None = None, independent=None, **options) -> Path:
    """Write the default twin dataset (`default_specs(seed, n_particles, **options)`) to `path`.

    `independent`: a `chemomech.twins.TwinOptions` to use the independent generator.

    Deterministic: the same seed and package version give the same particles whatever the
    number of MPI ranks (each is solved on COMM_SELF, dealt round-robin; rank 0 writes): mask,
    X, truth X and the noise are bitwise equal; the solved fields (u, strain) agree to the
    roundoff of the sparse direct solver (~1e-14 absolute; MUMPS is not bitwise reproducible
    run to run).
    Collective on `comm` (default COMM_WORLD).
    """
    from mpi4py import MPI

    from chemomech.io.stack import write_stack

    comm = MPI.COMM_WORLD if comm is None else comm
    started = time.perf_counter()
    specs = default_specs(seed, n_particles, **options)
    if comm.rank == 0:
        logger.info("synthesising %d twin particles (seed %d) on %d rank(s)", len(specs), seed,
                    comm.size)
    particles = simulate_dataset(specs, comm, independent)
    error = None
    if comm.rank == 0:
        for p in particles:
            logger.info("  %-14s %-4s mean X %.3f, %3dx%-3d px, %d cells", p.name,
                        p.truth["group"], p.truth["mean_X"], *p.shape, p.truth["num_cells"])
        try:
            write_stack(path, particles)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        logger.info("default dataset: %d particles in %.1f s -> %s", len(particles),
                    time.perf_counter() - started, path)
    error = comm.bcast(error, root=0)
    if error is not None:
        raise InputError(f"could not write the dataset: {error}", path=str(path))
    return Path(path)


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `chemomech synth`."""
    parser.add_argument("--output", required=True, help="stack file to write (HDF5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--particles", type=int, default=10,
                        help="number of particles, mean X spread over [0.03, 0.97] (default 10)")
    parser.add_argument("--noise-strain", type=float, default=1e-3,
                        help="std of the Gaussian noise on e_xx, e_yy, e_xy, theta (default 1e-3)")
    parser.add_argument("--noise-composition", type=float, default=0.05,
                        help="std of the Gaussian noise on X, then clipped to [0, 1] "
                             "(default 0.05)")
    parser.add_argument("--interface-width", type=float, default=120.0,
                        help="phase-boundary width w in nm, X ~ tanh(2 s / w) (default 120)")
    parser.add_argument("--slip", action="store_true",
                        help="add slip of system D [001](100) along the phase boundaries")
    parser.add_argument("--slip-amplitude", type=float, default=0.01,
                        help="peak slip gamma_0 with --slip (default 0.01)")
    parser.add_argument("--quadratic", type=float, nargs=2, default=(0.0, 0.0),
                        metavar=("A2", "C2"),
                        help="P_2 coefficients added to Vegard's f_a, f_c (default 0 0)")
    parser.add_argument("--pixel-size", type=float, default=16.6, help="nm (default 16.6)")
    parser.add_argument("--length", type=float, default=3000.0,
                        help="particle length in nm, along crystal c (default 3000)")
    parser.add_argument("--width", type=float, default=1500.0,
                        help="particle width in nm (default 1500)")
    parser.add_argument("--fe-degree", type=int, choices=(1, 2), default=1,
                        help="Lagrange degree of the displacement (default 1)")
    parser.add_argument("--mesh-size", type=float, default=1.0,
                        help="target element size in pixels (default 1)")
    parser.add_argument("--generator", choices=("model", "independent"), default="model",
                        help="'model': the inversion's own discretisation (mesh of the pixel "
                             "mask, P1 X); 'independent': chemomech.twins (smooth outline, "
                             "P2 on h/k, pointwise X, pixel-averaged strain) (default model)")
    parser.add_argument("--supersample", type=float, default=3.0,
                        help="independent: element size pixel/k (default 3)")
    parser.add_argument("--blur", type=float, default=0.0,
                        help="independent: Gaussian std of the X blur in px (default 0)")
    parser.add_argument("--shift", type=float, nargs=2, default=(0.0, 0.0), metavar=("DI", "DJ"),
                        help="independent: misregistration of X against strain, px (default 0 0)")
    parser.add_argument("--stiffness", choices=("average", "mixed"), default="average",
                        help="independent: constant mean stiffness or C(X) (default average)")


def run_synth(args: argparse.Namespace) -> int:
    """`chemomech synth`: write the twin dataset described by `args` (see add_arguments)."""
    independent = None
    if args.generator == "independent":
        from chemomech.twins import TwinOptions

        if args.slip:
            raise InputError("--slip is not modelled by --generator independent",
                             field="generator")
        independent = TwinOptions(supersample=args.supersample, degree=max(args.fe_degree, 2),
                                  blur_px=args.blur, shift_px=tuple(args.shift),
                                  stiffness=args.stiffness)
    elif (args.blur, tuple(args.shift), args.stiffness, args.supersample) != (
            0.0, (0.0, 0.0), "average", 3.0):
        raise InputError("--blur, --shift, --stiffness and --supersample need --generator "
                         "independent", field="generator")
    if args.slip_amplitude != 0.01 and not args.slip:  # it was ignored without --slip
        raise InputError("--slip-amplitude needs --slip", field="slip_amplitude")
    make_default_dataset(
        args.output, seed=args.seed, n_particles=args.particles, independent=independent,
        noise_strain=args.noise_strain, noise_composition=args.noise_composition,
        interface_width_nm=args.interface_width,
        slip_amplitude=args.slip_amplitude if args.slip else 0.0,
        quadratic=tuple(args.quadratic), length_nm=args.length, width_nm=args.width,
        pixel_size_nm=args.pixel_size, fe_degree=args.fe_degree, mesh_size_px=args.mesh_size)
    return 0
