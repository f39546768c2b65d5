r"""Data misfits of the inverse problem (hIPPYlib vocabulary: a misfit holds B, d and P).

Displacement misfit of one particle (DESIGN §4, "Inverse problem (M1)"):

.. math::

    J(u) = \tfrac12 \sum_{p} |P_\mathrm{rigid}(d_p - (B u)_p)|^2 ,

with B the pixel observation operator (displacement of the FE field at the owned pixel
centres), d the measured displacement (integrated from the measured gradient; defined only
up to a rigid motion) and :math:`P_\mathrm{rigid} = I - Q Q^T` the orthogonal projector that
removes the three rigid modes (x-, y-translation, rotation about the pixel centroid) from a
pixel field.  Q is an orthonormal basis of the rigid modes over the *used* pixels of the
whole particle: the Gram matrix and every projection are summed over the particle's
communicator, so J does not depend on how the pixels are distributed over ranks.

The strain misfit compares the FE strain at the pixel centres with the measured image-frame
strain, :math:`J = \tfrac12 \sum_p \|\varepsilon_p - \varepsilon(u)(x_p)\|_F^2` (the shear
component counts twice, as in the Frobenius norm); no rigid modes are needed.

Every misfit offers `cost(u)` (J, reduced over the communicator), `gradient(u)` (the adjoint
right-hand side :math:`B^T P^T P (B u - d)` as a ghost-consistent dolfinx vector) and the
linear pieces `observe` / `project` / `weighted_data` used by the linear fast path.
Observation rows are pixel-major, component-minor; columns are local DOFs (incl. ghosts)
times the block size, the layout of `chemomech.mechanics.fields.PixelSampler.matrix`.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse
from dolfinx import fem, la
from mpi4py import MPI
from scipy import ndimage

from chemomech.exceptions import InputError

logger = logging.getLogger(__name__)


def rigid_mode_basis(points: np.ndarray, comm: MPI.Comm) -> np.ndarray:
    r"""Orthonormal rigid modes Q (n_local*2, 3) over pixels `points` (n_local, 2) in nm.

    Modes :math:`(1,0)`, :math:`(0,1)`, :math:`(-(y-y_c), x-x_c)` about the global centroid,
    orthonormalised with the global Gram matrix :math:`G = \sum_\mathrm{ranks} Q^T Q = L L^T`,
    :math:`Q \leftarrow Q L^{-T}`.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    n_total = comm.allreduce(points.shape[0])
    if n_total < 2:
        raise InputError(f"need at least 2 used pixels for the rigid modes, got {n_total}")
    centroid = comm.allreduce(points.sum(axis=0)) / n_total
    dx = points - centroid
    Q = np.zeros((2 * points.shape[0], 3))
    Q[0::2, 0] = 1.0
    Q[1::2, 1] = 1.0
    Q[0::2, 2] = -dx[:, 1]
    Q[1::2, 2] = dx[:, 0]
    gram = comm.allreduce(Q.T @ Q)
    L = np.linalg.cholesky(gram)
    return np.linalg.solve(L, Q.T).T


def piecewise_rigid_basis(points: np.ndarray, pieces: np.ndarray, comm: MPI.Comm
                          ) -> np.ndarray:
    r"""Orthonormal rigid modes of every connected piece: Q (n_local*2, 3 n_pieces).

    `pieces` (n_local,) labels the pixels' pieces (the same labels on every rank); the modes of
    piece k (`rigid_mode_basis` over its pixels) vanish on the other pieces, so the blocks are
    mutually orthogonal.  Each piece needs at least 2 pixels.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    pieces = np.asarray(pieces).ravel()
    labels = sorted({int(k) for part in comm.allgather(np.unique(pieces).tolist())
                     for k in part})
    Q = np.zeros((2 * points.shape[0], 3 * len(labels)))
    for j, k in enumerate(labels):
        sel = np.flatnonzero(pieces == k)
        rows = np.repeat(2 * sel, 2) + np.tile([0, 1], sel.size)
        Q[rows, 3 * j: 3 * j + 3] = rigid_mode_basis(points[sel], comm)
    return Q


def connected_pieces(valid: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected pieces of the valid pixels (those the gradient integration joins): labels
    (0 off `valid`, 1..n) and n."""
    labels, n = ndimage.label(np.asarray(valid, bool))
    return labels, int(n)


def splitting_pixels(valid: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(k, 2) indices of the invalid pixels inside `mask` whose 8-connected invalid region
    touches two or more pieces of `valid` (the pixels that split the particle's data)."""
    labels, n = connected_pieces(valid)
    gaps, n_gaps = ndimage.label(np.asarray(mask, bool) & ~np.asarray(valid, bool),
                                 structure=np.ones((3, 3)))
    out = []
    for g in range(1, n_gaps + 1):
        region = gaps == g
        touched = np.unique(labels[ndimage.binary_dilation(region, np.ones((3, 3)))])
        if np.count_nonzero(touched) >= 2:
            out.append(np.argwhere(region))
    return np.concatenate(out) if out else np.zeros((0, 2), int)


def check_fragments(valid: np.ndarray, mask: np.ndarray, name: str, policy: str = "per_piece",
                    boundary_condition: str = "traction_free") -> int:
    """The number of pieces of `valid`; raises when they cannot be used as configured.

    `policy` "refuse" (key ``fragmented_data``) refuses more than one piece; a Dirichlet run
    always does, since the pieces' integration constants are arbitrary and the boundary data
    would jump between them.  The message names the splitting pixels."""
    labels, n = connected_pieces(valid)
    if n <= 1:
        return n
    key = "boundary_condition" if boundary_condition == "dirichlet" else "fragmented_data"
    if policy == "refuse" or boundary_condition == "dirichlet":
        split = splitting_pixels(valid, mask)
        shown = ", ".join(f"({i}, {j})" for i, j in split[:12])
        more = f" and {len(split) - 12} more" if len(split) > 12 else ""
        why = ("each piece has its own integration constant, so the Dirichlet data would "
               "jump between pieces" if key == "boundary_condition" else
               "fragmented_data: refuse")
        sizes = sorted(np.bincount(labels.ravel())[1:].tolist(), reverse=True)
        raise InputError(f"particle {name!r}: its valid pixels form {n} separate pieces "
                         f"(sizes {sizes}), "
                         f"split by {len(split)} NaN pixel(s) (i, j) {shown}{more}; {why}. "
                         f"Use fragmented_data: per_piece with boundary_condition: "
                         f"traction_free, or the strain misfit", field=key)
    return n


class PixelMisfit:
    r"""Least-squares misfit :math:`J = \tfrac12 |P(B u - d)|^2` with an optional projector.

    `observation`: CSR (n_rows_local, n_dofs_local_with_ghosts*bs) restricted to the used
    pixels; `data`: (n_rows_local,) vector; `rigid_basis`: orthonormal Q (n_rows_local, k)
    of the modes projected out (None: P = I); `comm`: the particle's communicator.
    """

    def __init__(self, V: fem.FunctionSpace, observation: scipy.sparse.csr_matrix,
                 data: np.ndarray, rigid_basis: np.ndarray | None = None,
                 name: str = "particle"):
        self.V = V
        self.comm = V.mesh.comm
        self.B = scipy.sparse.csr_matrix(observation)
        self.d = np.asarray(data, dtype=float).ravel()
        self.Q = rigid_basis
        self.name = name
        n_cols = (V.dofmap.index_map.size_local + V.dofmap.index_map.num_ghosts) \
            * V.dofmap.index_map_bs
        if self.B.shape[1] != n_cols:
            raise InputError(f"observation matrix has {self.B.shape[1]} columns, the space "
                             f"{n_cols} local DOFs", field="observation")
        if self.B.shape[0] != self.d.size:
            raise InputError(f"{self.d.size} data values for {self.B.shape[0]} observed rows",
                             field="data")
        if self.Q is not None and self.Q.shape[0] != self.d.size:
            raise InputError("rigid-mode basis and data differ in length", field="rigid_basis")
        self.num_observations = self.comm.allreduce(self.d.size)

    def project(self, r: np.ndarray) -> np.ndarray:
        r"""P r = r - Q (Q^T r), with Q^T r summed over the communicator (P = I without Q)."""
        if self.Q is None:
            return r
        coefficients = self.comm.allreduce(self.Q.T @ r)
        return r - self.Q @ coefficients

    def observe(self, u: fem.Function) -> np.ndarray:
        """B u on the local used pixels (rows pixel-major, component-minor)."""
        return self.B @ u.x.array

    def weighted_data(self) -> np.ndarray:
        """P d, the data seen by the projected least-squares problem."""
        return self.project(self.d)

    def residual(self, u: fem.Function) -> np.ndarray:
        """r = P (B u - d) on the local used pixels."""
        return self.project(self.observe(u) - self.d)

    def cost(self, u: fem.Function) -> float:
        """J = 1/2 sum_p |P(B u - d)|^2 over all pixels of the particle (units of d^2)."""
        r = self.residual(u)
        return 0.5 * self.comm.allreduce(float(r @ r))

    def gradient(self, u: fem.Function, scale: float = 1.0) -> la.Vector:
        """dJ/du = scale * B^T P (B u - d) (P^T P = P) as a ghost-consistent dolfinx vector."""
        return self.apply_transpose(scale * self.residual(u))

    def apply_transpose(self, values: np.ndarray) -> la.Vector:
        """B^T values, assembled over ranks (ghost contributions added to their owners)."""
        index_map, bs = self.V.dofmap.index_map, self.V.dofmap.index_map_bs
        vector = la.vector(index_map, bs=bs)
        vector.array[:] = self.B.T @ values
        vector.scatter_reverse(la.InsertMode.add)
        vector.scatter_forward()
        return vector


class DisplacementMisfit(PixelMisfit):
    r"""Displacement misfit modulo rigid motion, :math:`\tfrac12|P_\mathrm{rigid}(d - Bu)|^2`.

    `observation` samples (u_x, u_y) at the local pixels (2 rows per pixel); `points` are the
    pixel centres (n_local, 2) in nm, `displacement` the data (n_local, 2) in nm and `used`
    (n_local,) marks the pixels kept (inside and away from the edge).  `point_indices`
    (n_local,): the pixels' indices in the caller's full point list (kept, for the used
    pixels, as `self.point_indices`, e.g. to map residuals back to images).  `pieces`
    (n_local,): connected-piece labels; each piece then gets its own rigid modes
    (`piecewise_rigid_basis`).  ``rigid_modes=False``: no projection (Dirichlet data).
    """

    def __init__(self, V: fem.FunctionSpace, observation: scipy.sparse.csr_matrix,
                 points: np.ndarray, displacement: np.ndarray, used: np.ndarray | None = None,
                 name: str = "particle", point_indices: np.ndarray | None = None,
                 pieces: np.ndarray | None = None, rigid_modes: bool = True):
        points = np.asarray(points, dtype=float).reshape(-1, 2)
        displacement = np.asarray(displacement, dtype=float).reshape(-1, 2)
        used = np.ones(points.shape[0], bool) if used is None else np.asarray(used, bool)
        if not (points.shape[0] == displacement.shape[0] == used.size):
            raise InputError("points, displacement and used differ in length",
                             field="displacement")
        if np.any(~np.isfinite(displacement[used])):
            raise InputError("non-finite displacement at a used pixel", field="displacement")
        rows = np.repeat(np.flatnonzero(used) * 2, 2) + np.tile([0, 1], int(used.sum()))
        B = scipy.sparse.csr_matrix(observation)[rows]
        self.points = points[used]
        self.point_indices = (np.arange(used.size) if point_indices is None
                              else np.asarray(point_indices))[used]
        if not rigid_modes:  # Dirichlet data fix the rigid motion: P = I
            Q = None
        elif pieces is None:
            Q = rigid_mode_basis(self.points, V.mesh.comm)
        else:
            Q = piecewise_rigid_basis(self.points, np.asarray(pieces)[used], V.mesh.comm)
        super().__init__(V, B, displacement[used].ravel(), Q, name=name)
        logger.debug("%s: %d used pixels", name, self.num_observations // 2)

    @classmethod
    def from_sampler(cls, sampler, displacement: np.ndarray, used: np.ndarray | None = None,
                     name: str = "particle", pieces: np.ndarray | None = None,
                     rigid_modes: bool = True) -> DisplacementMisfit:
        """From a `chemomech.mechanics.fields.PixelSampler`: data (n_points, 2) nm, `used` and
        `pieces` (n_points,) aligned with `sampler.points_nm` (every rank passes the full
        arrays)."""
        owned = np.asarray(sampler.owned)
        keep = None if used is None else np.asarray(used, bool).ravel()[owned]
        d = np.asarray(displacement, float).reshape(-1, 2)[owned]
        labels = None if pieces is None else np.asarray(pieces).ravel()[owned]
        return cls(sampler.V, sampler.matrix, sampler.points_nm[owned], d, keep, name=name,
                   point_indices=owned, pieces=labels, rigid_modes=rigid_modes)


class StrainMisfit(PixelMisfit):
    r"""Strain misfit :math:`\tfrac12\sum_p \|\varepsilon_p - \varepsilon(u)(x_p)\|_F^2`.

    `strain_observation` maps u to (e_xx, e_yy, e_xy) at the local pixels (3 rows per pixel);
    `strain` the measured image-frame strain (n_local, 3); `used` (n_local,) the pixels kept.
    The shear rows are weighted by sqrt(2) so that the sum is the Frobenius norm.
    `points`, `point_indices`: as for `DisplacementMisfit` (optional).
    """

    def __init__(self, V: fem.FunctionSpace, strain_observation: scipy.sparse.csr_matrix,
                 strain: np.ndarray, used: np.ndarray | None = None, name: str = "particle",
                 points: np.ndarray | None = None, point_indices: np.ndarray | None = None):
        strain = np.asarray(strain, dtype=float).reshape(-1, 3)
        used = np.ones(strain.shape[0], bool) if used is None else np.asarray(used, bool)
        if np.any(~np.isfinite(strain[used])):
            raise InputError("non-finite strain at a used pixel", field="strain")
        rows = np.repeat(np.flatnonzero(used) * 3, 3) + np.tile([0, 1, 2], int(used.sum()))
        weights = np.tile([1.0, 1.0, np.sqrt(2.0)], int(used.sum()))
        B = scipy.sparse.diags(weights) @ scipy.sparse.csr_matrix(strain_observation)[rows]
        super().__init__(V, B.tocsr(), weights * strain[used].ravel(), None, name=name)
        self.points = None if points is None else np.asarray(points, float)[used]
        self.point_indices = (np.arange(used.size) if point_indices is None
                              else np.asarray(point_indices))[used]

    @classmethod
    def from_sampler(cls, sampler, strain: np.ndarray, used: np.ndarray | None = None,
                     name: str = "particle") -> StrainMisfit:
        """From a `chemomech.mechanics.fields.PixelSampler`: image-frame strain (n_points, 3) =
        (e_xx, e_yy, e_xy) and `used` (n_points,) aligned with `sampler.points_nm`."""
        owned = np.asarray(sampler.owned)
        keep = None if used is None else np.asarray(used, bool).ravel()[owned]
        e = np.asarray(strain, float).reshape(-1, 3)[owned]
        return cls(sampler.V, strain_observation_matrix(sampler), e, keep, name=name,
                   points=sampler.points_nm[owned], point_indices=owned)


def strain_observation_matrix(sampler) -> scipy.sparse.csr_matrix:
    r"""Matrix E with (E u)_p = (\varepsilon_{xx}, \varepsilon_{yy}, \varepsilon_{xy})(u)(x_p).

    Rows pixel-major (3 per owned point of the `PixelSampler`), columns local DOFs * 2.
    Basis gradients :math:`\nabla\phi = J^{-T}\hat\nabla\hat\phi` at the sampler's reference
    points; affine triangles only.
    """
    V = sampler.V
    mesh = V.mesh
    if mesh.geometry.cmaps[0].degree != 1:
        raise NotImplementedError("strain observation needs an affine (degree-1) geometry")
    bs = V.dofmap.index_map_bs
    index_map = V.dofmap.index_map
    n_cols = (index_map.size_local + index_map.num_ghosts) * bs
    cells = np.asarray(sampler.cells)
    n = len(cells)
    if n == 0:
        return scipy.sparse.csr_matrix((0, n_cols))
    element = V.ufl_element().sub_elements[0].basix_element
    tab = element.tabulate(1, np.asarray(sampler.reference, float))  # (3, n, ndofs, 1)
    gx = mesh.geometry.x[:, :2]
    tri = gx[mesh.geometry.dofmap[cells][:, :3]]
    J = np.stack([tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]], axis=2)  # x = x0 + J X
    ref_grad = np.stack([tab[1, :, :, 0], tab[2, :, :, 0]], axis=2)  # (n, ndofs, 2)
    grad = np.einsum("nik,nai->nak", np.linalg.inv(J), ref_grad)  # J^{-T} grad_ref
    dofs = V.dofmap.list[cells]  # (n, ndofs)
    gx_, gy_ = grad[..., 0], grad[..., 1]
    row = np.arange(n)[:, None]
    entries = [(0, 0, gx_), (1, 1, gy_), (2, 0, 0.5 * gy_), (2, 1, 0.5 * gx_)]
    rows = np.concatenate([np.broadcast_to(3 * row + r, dofs.shape).ravel()
                           for r, _, _ in entries])
    cols = np.concatenate([(dofs * bs + c).ravel() for _, c, _ in entries])
    vals = np.concatenate([v.ravel() for _, _, v in entries])
    return scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(3 * n, n_cols)).tocsr()
