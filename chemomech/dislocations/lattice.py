r"""What 4D-STEM measures in M2: the lattice distortion, and the misfit of M2 on it.

Slip moves material without distorting the lattice.  With the plastic distortion
:math:`\beta_p = \sum_s \gamma_s\,\hat s\otimes\hat n` (image frame) the lattice distortion is
:math:`H_\mathrm{lat} = \nabla u - \beta_p`, its strain
:math:`\varepsilon_\mathrm{lat} = \varepsilon(u) - \mathrm{sym}\,\beta_p` and its rotation
:math:`\theta_\mathrm{lat} = \tfrac12(H_{xy} - H_{yx})` (the convention of the stored theta
with theta_sign = +1, DESIGN §2; in 2-D the rotation is frame-invariant).  A uniform slip
changes neither (the body shears stress-free, :math:`\nabla u = \beta_p` + a rigid rotation).

The M2 misfit of one particle compares the model's lattice distortion with the measured one
at the used pixel centres,

.. math::

    J = \tfrac12 \sum_p \big[\,\|\varepsilon_{\mathrm{lat}} - \varepsilon_p\|_F^2
        + 2 w_\theta\,(\theta_\mathrm{lat} - \theta_p - \bar\theta)^2\big],

with :math:`\bar\theta` the uniform rotation that fits best (the traction-free model leaves
the rigid rotation free, so it is projected out, as the displacement misfit projects out the
rigid modes; with Dirichlet data the boundary fixes the rotation and :math:`\bar\theta = 0`).
With :math:`w_\theta = 1` (default) this is the Frobenius norm of the distortion residual
:math:`|H_\mathrm{lat} - H_p|_F^2`; :math:`w_\theta = 0` fits the lattice strain alone.  A
displacement misfit is not used: it would integrate the measured lattice distortion, which is
no gradient where dislocations are (its curl is the Nye tensor).

The observation is linear: the weighted rows :math:`r = P(B u - \sum_s G_s\gamma_s - d)`,
component-major (e_xx, e_yy, e_xy, theta blocks over the used pixels), B the gradient
observation of u (`chemomech.inverse.misfit.strain_observation_matrix`; the rotation row is the
e_xy row of :math:`(u_x, -u_y)`), :math:`G_s` the P1 pixel sampling of :math:`\gamma_s` times
the components of :math:`\hat s\otimes\hat n`, P the projector removing the mean of the theta
block.  Dimensionless.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import dolfinx_adjoint as dxa
import numpy as np
import scipy.sparse
import ufl
from dolfinx import fem, la

from chemomech.correlative.frames import gradient_image, rotation_matrix
from chemomech.exceptions import InputError
from chemomech.inverse.misfit import strain_observation_matrix
from chemomech.io.stack import interior_pixels
from chemomech.mechanics.fields import PixelSampler, sample_expression
from chemomech.mechanics.forms import epsilon
from chemomech.mechanics.slip import InPlaneSlipSystem

logger = logging.getLogger(__name__)

def distortion_tensor(system: InPlaneSlipSystem, rotation_rad: float) -> np.ndarray:
    r""":math:`\hat s\otimes\hat n` in the image frame (R s, R n; 2x2, dimensionless)."""
    R = rotation_matrix(rotation_rad)
    return np.outer(R @ np.asarray(system.slip_direction), R @ np.asarray(system.plane_normal))


def lattice_components(beta: np.ndarray) -> np.ndarray:
    """(e_xx, e_yy, e_xy, theta) of a 2x2 distortion: sym part and (H_xy - H_yx)/2."""
    beta = np.asarray(beta, float)
    return np.array([beta[0, 0], beta[1, 1], 0.5 * (beta[0, 1] + beta[1, 0]),
                     0.5 * (beta[0, 1] - beta[1, 0])])


@dataclass
class LatticeData:
    """Measured lattice distortion of one particle at its meshed pixels (every rank: all).

    `points_nm` (n, 2) pixel centres; `values` (n, 4) = (e_xx, e_yy, e_xy, theta), image frame;
    `used` (n,) pixels entering the misfit; `indices` (n, 2) their (i, j)."""

    name: str
    points_nm: np.ndarray
    values: np.ndarray
    used: np.ndarray
    indices: np.ndarray


def lattice_data(prepared, particle_mesh, edge_exclusion_px: int) -> LatticeData:
    """`LatticeData` of a `chemomech.correlative.prepared.PreparedParticle` on the pixels of
    its `chemomech.mechanics.mesh.ParticleMesh`: H_img of the maps (frame of the particle),
    used = `edge_exclusion_px` inside the meshed mask, finite data and X."""
    H = gradient_image(prepared.data)
    values = np.stack([H[..., 0, 0], H[..., 1, 1], 0.5 * (H[..., 0, 1] + H[..., 1, 0]),
                       0.5 * (H[..., 0, 1] - H[..., 1, 0])], axis=-1)
    idx = particle_mesh.pixel_indices()
    v = values[idx[:, 0], idx[:, 1]]
    used = interior_pixels(particle_mesh.mask, edge_exclusion_px)[idx[:, 0], idx[:, 1]]
    used &= np.all(np.isfinite(v), axis=1) & np.isfinite(prepared.data.X[idx[:, 0], idx[:, 1]])
    if not used.any():
        raise InputError(f"particle {prepared.data.name!r}: no used pixel with finite strain",
                         field="e_xx")
    return LatticeData(prepared.data.name, particle_mesh.pixel_points_nm(), np.nan_to_num(v),
                       used, idx)


def _scatter_add(space, values: np.ndarray):
    """A ghost-consistent dolfinx vector on `space` from local (owned + ghost) contributions."""
    out = dxa.Function(space).x  # a dolfinx_adjoint dual vector (supports +=)
    out.array[:] = values
    out.scatter_reverse(la.InsertMode.add)
    out.scatter_forward()
    return out


class LatticeMisfit:
    """The M2 misfit of one particle on the lattice distortion (see the module docstring).

    `V`: vector Lagrange space of u; `Q`: scalar P1 space of the slip fields (same mesh);
    `data`: its `LatticeData`; `tensors`: per slip system the image-frame s (x) n (2x2);
    `theta_weight`: w_theta >= 0; `rigid_rotation`: project out the uniform rotation
    (traction-free), or keep it (Dirichlet data fix the rotation: P = I).
    """

    def __init__(self, V, Q, data: LatticeData, tensors: Sequence[np.ndarray],
                 theta_weight: float = 1.0, rigid_rotation: bool = True):
        if theta_weight < 0:
            raise InputError(f"must be >= 0, got {theta_weight}", field="theta_weight")
        self.V, self.Q, self.name = V, Q, data.name
        self.comm = V.mesh.comm
        sampler = PixelSampler(V, data.points_nm)
        owned = np.asarray(sampler.owned)
        used = np.asarray(data.used, bool)[owned]
        E = strain_observation_matrix(sampler)
        bs = V.dofmap.index_map_bs
        flip = scipy.sparse.diags(np.where(np.arange(E.shape[1]) % bs == 0, 1.0, -1.0))
        rows = [E[0::3], E[1::3], E[2::3], E[2::3] @ flip]  # e_xx, e_yy, e_xy, theta of u
        weights = [1.0, 1.0, np.sqrt(2.0), np.sqrt(2.0 * theta_weight)]
        self.blocks = [k for k in range(4) if weights[k] > 0]
        sample_q = sampler.for_space(Q).matrix[used]
        self.B = scipy.sparse.vstack([weights[k] * rows[k][used] for k in self.blocks]).tocsr()
        self.G = [scipy.sparse.vstack([weights[k] * lattice_components(T)[k] * sample_q
                                       for k in self.blocks]).tocsr() for T in tensors]
        values = np.asarray(data.values, float)[owned][used]
        self.d = np.concatenate([weights[k] * values[:, k] for k in self.blocks])
        self.n_pixels = self.comm.allreduce(int(used.sum()))
        self.n_local = int(used.sum())
        self.weights_sq = [weights[k] ** 2 for k in self.blocks]
        self.point_indices = owned[used]
        # unit vector of a uniform theta over the used pixels (projected out)
        self._theta = None
        if 3 in self.blocks and rigid_rotation:
            q = np.zeros(self.d.size)
            q[-self.n_local:] = 1.0 / np.sqrt(self.n_pixels)
            self._theta = q

    @property
    def num_observations(self) -> int:
        """Rows of the misfit over the particle (pixels times components)."""
        return self.n_pixels * len(self.blocks)

    def project(self, r: np.ndarray) -> np.ndarray:
        """P r: the best uniform rotation removed from the theta block (summed over ranks); r
        local rows, or local rows x columns."""
        if self._theta is None:
            return r
        return r - np.multiply.outer(self._theta, self.comm.allreduce(self._theta @ r))

    def observe(self, u: fem.Function, gammas: Sequence | None = None) -> np.ndarray:
        """Weighted model rows B u - sum_s G_s gamma_s (local, not projected)."""
        out = self.B @ u.x.array
        for G, g in zip(self.G, gammas or [None] * len(self.G), strict=True):
            if g is not None:
                out = out - G @ g.x.array
        return out

    def residual(self, u: fem.Function, gammas: Sequence | None = None) -> np.ndarray:
        """r = P(B u - sum_s G_s gamma_s - d)."""
        return self.project(self.observe(u, gammas) - self.d)

    def cost(self, u: fem.Function, gammas: Sequence | None = None) -> float:
        """J = 1/2 |r|^2 over the particle (dimensionless)."""
        r = self.residual(u, gammas)
        return 0.5 * self.comm.allreduce(float(r @ r))

    def gradient_u(self, r: np.ndarray):
        """dJ/du = B^T r for a projected residual r (dual vector on V)."""
        return _scatter_add(self.V, self.B.T @ r)

    def gradient_gamma(self, k: int, r: np.ndarray):
        """dJ/dgamma_k = -G_k^T r (dual vector on Q)."""
        return _scatter_add(self.Q, -(self.G[k].T @ r))

    def expected_noise_misfit(self, sigma: float) -> float:
        r"""E J of white noise of std sigma on e_aa, e_cc, e_ac and theta (crystal frame; the
        image-frame Frobenius norm is invariant): :math:`\tfrac12\sigma^2(\sum_k w_k^2\,n -
        w_\theta^2)`, the last term the projected uniform rotation."""
        total = sum(self.weights_sq) * self.n_pixels
        if self._theta is not None:
            total -= self.weights_sq[-1]
        return 0.5 * sigma**2 * total

    def uniform_slip_curvature(self, k: int) -> float:
        """|G_k 1|^2: the direct (sampling) data curvature of a uniform slip of system k."""
        ones = np.ones(self.G[k].shape[1])
        return self.comm.allreduce(float(np.sum((self.G[k] @ ones) ** 2)))


def lattice_expressions(u, gammas: Sequence, tensors: Sequence[np.ndarray]) -> dict:
    """UFL lattice strain, lattice rotation and plastic strain sym(beta_p) of (u, gamma_s)."""
    beta = sum(g * ufl.as_matrix(np.asarray(T).tolist())
               for g, T in zip(gammas, tensors, strict=True))
    H = ufl.grad(u) - beta
    return {"lattice": epsilon(u) - ufl.sym(beta), "theta": 0.5 * (H[0, 1] - H[1, 0]),
            "plastic": ufl.sym(beta)}


def lattice_maps(u, gammas: Sequence, tensors: Sequence[np.ndarray], particle_mesh,
                 shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Images (group rank 0; empty elsewhere) of M2's u_x, u_y, lattice strain e_xx, e_yy, e_xy,
    lattice rotation theta (rigid rotation not removed), plastic strain plastic_xx, _yy, _xy and
    the meshed mask, at the meshed pixels.  Sampled through DG(max(k - 1, 1)) (exact for P1
    slip and P_k displacement on affine cells).  Collective on the particle's communicator."""
    V = u.function_space
    sampler = PixelSampler(V, particle_mesh.pixel_points_nm())
    degree = max(V.ufl_element().embedded_superdegree - 1, 1)
    expr = lattice_expressions(u, gammas, tensors)
    columns = {"u": sampler.gather(sampler(u)),
               "lattice": sampler.gather(sample_expression(expr["lattice"], sampler, degree)
                                         .reshape(-1, 4)),
               "plastic": sampler.gather(sample_expression(expr["plastic"], sampler, degree)
                                         .reshape(-1, 4)),
               "theta": sampler.gather(sample_expression(expr["theta"], sampler, degree)
                                       .reshape(-1, 1))}
    if columns["u"] is None:
        return {}
    idx = particle_mesh.pixel_indices()
    out = {}
    for key, values in (("u_x", columns["u"][:, 0]), ("u_y", columns["u"][:, 1]),
                        ("e_xx", columns["lattice"][:, 0]), ("e_yy", columns["lattice"][:, 3]),
                        ("e_xy", columns["lattice"][:, 1]), ("theta", columns["theta"][:, 0]),
                        ("plastic_xx", columns["plastic"][:, 0]),
                        ("plastic_yy", columns["plastic"][:, 3]),
                        ("plastic_xy", columns["plastic"][:, 1]), ("meshed_mask", 1.0)):
        image = np.full(shape, np.nan) if key != "meshed_mask" else np.zeros(shape)
        image[idx[:, 0], idx[:, 1]] = values
        out[key] = image
    return out
