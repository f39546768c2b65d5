"""Misfits: rigid-mode projection, exact quadratic expansion, strain observation, edge exclusion."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

dolfinx = pytest.importorskip("dolfinx")

from dolfinx import fem, mesh  # noqa: E402

from chemomech.exceptions import InputError  # noqa: E402
from chemomech.inverse.misfit import (  # noqa: E402
    DisplacementMisfit,
    MultiParticleMisfit,
    StrainMisfit,
    rigid_mode_basis,
    strain_observation_matrix,
)
from chemomech.io.stack import interior_pixels  # noqa: E402
from chemomech.mechanics.fields import PixelSampler  # noqa: E402

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


def test_multi_particle_misfit_sums():
    V = _space(MPI.COMM_SELF, 1)
    sampler = PixelSampler(V, _points())
    u = fem.Function(V)
    u.interpolate(_smooth)
    d1 = np.ones((NX * NY, 2))
    used = np.zeros(NX * NY, bool)
    used[::3] = True
    m1 = DisplacementMisfit.from_sampler(sampler, d1 + np.sin(_points()), used)
    m2 = DisplacementMisfit.from_sampler(sampler, np.cos(_points()))
    multi = MultiParticleMisfit([m1, m2])
    assert multi.cost([u, u]) == pytest.approx(m1.cost(u) + m2.cost(u), rel=1e-14)
    assert m1.num_observations == 2 * used.sum()
    g1, g2 = multi.gradient([u, u])
    assert np.allclose(g1.array, m1.gradient(u).array)


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
