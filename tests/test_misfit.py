"""Misfits: rigid-mode projection, exact quadratic expansion, strain observation, edge exclusion."""

from __future__ import annotations

import numpy as np
import pytest
from dolfinx import fem, mesh
from mpi4py import MPI

from chemomech.exceptions import InputError
from chemomech.inverse.misfit import (
    DisplacementMisfit,
    StrainMisfit,
    check_fragments,
    piecewise_rigid_basis,
    rigid_mode_basis,
    splitting_pixels,
    strain_observation_matrix,
)
from chemomech.io.stack import interior_pixels
from chemomech.mechanics.fields import PixelSampler

H = 10.0  # pixel size, nm
NX, NY = 16, 10


def _space(comm, degree=2):
    domain = mesh.create_rectangle(comm, [[-H / 2, -H / 2], [(NX - 0.5) * H, (NY - 0.5) * H]],
                                   [NX, NY], mesh.CellType.triangle)
    return fem.functionspace(domain, ("Lagrange", degree, (2,)))


def _points():
    return np.argwhere(np.ones((NX, NY), bool)).astype(float) * H


def _smooth(x):
    return np.vstack([1e-3 * x[0] ** 2 / 100 + 0.02 * x[1], np.sin(x[0] / 50.0) * 3.0])


def test_interior_pixels_counts_layers():
    mask = np.zeros((12, 9), bool)
    mask[1:11, 1:8] = True  # 10 x 7 block
    assert interior_pixels(mask, 0).sum() == 70
    assert interior_pixels(mask, 1).sum() == 8 * 5
    assert interior_pixels(mask, 2).sum() == 6 * 3
    full = np.ones((5, 5), bool)  # the image border counts as outside
    assert interior_pixels(full, 1).sum() == 9
    with pytest.raises(InputError):
        interior_pixels(mask, -1)


@pytest.mark.mpi
def test_rigid_basis_is_orthonormal_and_global():
    comm = MPI.COMM_WORLD
    pts = _points()
    mine = pts[comm.rank::comm.size]
    Q = rigid_mode_basis(mine, comm)
    gram = comm.allreduce(Q.T @ Q)
    assert np.allclose(gram, np.eye(3), atol=1e-12)
    serial = rigid_mode_basis(pts, MPI.COMM_SELF)
    assert np.allclose(Q, serial[np.repeat(np.arange(len(pts))[comm.rank::comm.size] * 2, 2)
                                 + np.tile([0, 1], len(mine))], atol=1e-12)


@pytest.mark.mpi
def test_displacement_misfit_ignores_rigid_motion_and_is_exactly_quadratic():
    V = _space(MPI.COMM_WORLD)
    sampler = PixelSampler(V, _points())
    u = fem.Function(V)
    u.interpolate(_smooth)
    centre = np.array([NX, NY]) * H / 2
    rigid = np.column_stack([3.0 - 0.01 * (_points()[:, 1] - centre[1]),
                             -2.0 + 0.01 * (_points()[:, 0] - centre[0])])
    full = np.zeros((len(_points()), 2))
    full[sampler.owned] = sampler(u)
    full = MPI.COMM_WORLD.allreduce(full)
    misfit = DisplacementMisfit.from_sampler(sampler, full + rigid)
    assert misfit.cost(u) < 1e-20 * misfit.comm.allreduce(float(misfit.d @ misfit.d))

    # J(u + t w) = J(u) + t <g, w> + t^2/2 |P B w|^2 exactly (quadratic), data now off-model
    noisy = DisplacementMisfit.from_sampler(sampler, full + rigid + np.sin(_points() / 17.0))
    w = fem.Function(V)
    w.interpolate(lambda x: np.vstack([np.cos(x[1] / 30.0), x[0] * x[1] / 1e4]))
    g = noisy.gradient(u)
    n_owned = V.dofmap.index_map.size_local * 2
    slope = V.mesh.comm.allreduce(float(g.array[:n_owned] @ w.x.array[:n_owned]))
    PBw = noisy.project(noisy.observe(w))
    curvature = V.mesh.comm.allreduce(float(PBw @ PBw))
    J0 = noisy.cost(u)
    for t in (0.3, -1.7):
        ut = fem.Function(V)
        ut.x.array[:] = u.x.array + t * w.x.array
        assert noisy.cost(ut) == pytest.approx(J0 + t * slope + 0.5 * t**2 * curvature,
                                               rel=1e-11)
    assert slope != 0.0 and curvature > 0.0


@pytest.mark.mpi
@pytest.mark.parametrize("degree", [1, 2])
def test_strain_observation_of_affine_field_is_exact(degree):
    V = _space(MPI.COMM_WORLD, degree)
    sampler = PixelSampler(V, _points())
    grad = np.array([[2e-3, -1e-3], [4e-3, -3e-3]])  # du_i/dx_j
    u = fem.Function(V)
    u.interpolate(lambda x: grad @ x[:2] + np.array([[1.0], [2.0]]))
    E = strain_observation_matrix(sampler)
    e = (E @ u.x.array).reshape(-1, 3)
    expected = [grad[0, 0], grad[1, 1], 0.5 * (grad[0, 1] + grad[1, 0])]
    assert np.allclose(e, expected, rtol=0, atol=1e-14)
    n = len(sampler.owned)
    assert MPI.COMM_WORLD.allreduce(n) == NX * NY

    full = np.tile(expected, (NX * NY, 1))
    misfit = StrainMisfit.from_sampler(sampler, full)
    assert misfit.cost(u) < 1e-28
    shifted = StrainMisfit.from_sampler(sampler, full + [0.0, 0.0, 1e-3])
    # Frobenius norm: the shear mismatch counts twice
    assert shifted.cost(u) == pytest.approx(0.5 * NX * NY * 2 * 1e-6, rel=1e-10)


def test_used_pixels_equal_a_misfit_built_on_those_pixels_only():
    """Selecting pixels with `used` is the same misfit as sampling only those pixels."""
    V = _space(MPI.COMM_SELF, 1)
    u = fem.Function(V)
    u.interpolate(_smooth)
    points = _points()
    used = np.zeros(NX * NY, bool)
    used[::3] = True
    d = 1.0 + np.sin(points)
    selected = DisplacementMisfit.from_sampler(PixelSampler(V, points), d, used)
    subset = DisplacementMisfit.from_sampler(PixelSampler(V, points[used]), d[used])
    assert selected.num_observations == subset.num_observations == 2 * used.sum()
    assert selected.cost(u) > 1e-3
    assert selected.cost(u) == pytest.approx(subset.cost(u), rel=1e-12)
    assert np.allclose(selected.gradient(u).array, subset.gradient(u).array, rtol=1e-12,
                       atol=1e-14)


def test_bad_data_is_rejected():
    V = _space(MPI.COMM_SELF, 1)
    sampler = PixelSampler(V, _points())
    d = np.zeros((NX * NY, 2))
    d[5] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        DisplacementMisfit.from_sampler(sampler, d)
    used = np.ones(NX * NY, bool)
    used[5] = False
    DisplacementMisfit.from_sampler(sampler, d, used)  # the NaN pixel is not used: fine


@pytest.mark.mpi
def test_piecewise_rigid_basis_removes_each_pieces_rigid_motion():
    """Two pieces: Q is orthonormal over the world, and a different rigid motion on each
    piece is removed exactly (one set of modes could not)."""
    comm = MPI.COMM_WORLD
    pts = _points()
    pieces = (pts[:, 0] > 7.5 * H).astype(int) + 1
    own = np.arange(len(pts))[comm.rank::comm.size]
    Q = piecewise_rigid_basis(pts[own], pieces[own], comm)
    assert Q.shape[1] == 6
    assert np.allclose(comm.allreduce(Q.T @ Q), np.eye(6), atol=1e-12)
    motion = np.where(pieces[:, None] == 1, [3.0, -1.0] + 0.01 * pts[:, ::-1] * [-1, 1],
                      [-2.0, 5.0] - 0.02 * pts[:, ::-1] * [-1, 1])[own].ravel()
    removed = motion - Q @ comm.allreduce(Q.T @ motion)
    assert np.abs(removed).max() < 1e-10 * np.abs(motion).max()
    Q1 = rigid_mode_basis(pts[own], comm)
    assert np.abs(motion - Q1 @ comm.allreduce(Q1.T @ motion)).max() > 0.1


def test_fragment_check_names_the_splitting_pixels():
    mask = np.zeros((10, 12), bool)
    mask[1:9, 1:11] = True
    valid = mask.copy()
    valid[:, 6] = False  # a NaN column splits the particle in two
    valid[3, 2] = False  # an isolated hole splits nothing
    assert splitting_pixels(valid, mask).tolist() == [[i, 6] for i in range(1, 9)]
    assert check_fragments(valid, mask, "p") == 2  # per_piece: accepted
    assert check_fragments(mask, mask, "p", "refuse", "dirichlet") == 1
    for policy, bc, key in (("refuse", "traction_free", "fragmented_data"),
                            ("per_piece", "dirichlet", "boundary_condition")):
        with pytest.raises(InputError, match=r"2 separate pieces \(sizes \[39, 32\]\), split "
                                             r"by 8 NaN pixel\(s\) \(i, j\) \(1, 6\)") as err:
            check_fragments(valid, mask, "p", policy, bc)
        assert err.value.field == key
