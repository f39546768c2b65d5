"""Images <-> FE fields: exactness on polynomials, B^T = transpose of B, conservation."""

from __future__ import annotations

import numpy as np
import pytest
import ufl
from dolfinx import fem
from mpi4py import MPI

from chemomech.exceptions import InputError
from chemomech.mechanics.fields import PixelSampler, image_to_function, sample_expression
from chemomech.mechanics.mesh import mesh_from_mask

H = 3.0


@pytest.fixture(scope="module")
def particle():
    """A disc of radius 12 px with a hole of radius 4 px, off-centre (distributed)."""
    i, j = np.meshgrid(np.arange(34), np.arange(30), indexing="ij")
    mask = np.hypot(i - 16.2, j - 14.7) < 12.0
    mask &= np.hypot(i - 19.0, j - 13.0) >= 4.0
    return mesh_from_mask(mask, H, MPI.COMM_WORLD)


def _linear(points: np.ndarray) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    return np.column_stack([0.3 + 0.02 * x - 0.05 * y, -1.0 + 0.07 * x + 0.01 * y])


@pytest.mark.mpi
@pytest.mark.parametrize("degree", [1, 2])
def test_linear_field_is_reproduced_at_pixel_centres(particle, degree):
    V = fem.functionspace(particle.mesh, ("Lagrange", degree, (2,)))
    u = fem.Function(V)
    u.interpolate(lambda x: _linear(x.T).T)
    points = particle.pixel_points_nm()
    B = PixelSampler(V, points)
    assert np.abs(B(u) - _linear(points[B.owned])).max() < 1e-12
    # every pixel is owned by exactly one rank
    counts = MPI.COMM_WORLD.allreduce(np.bincount(B.owned, minlength=len(points)))
    assert np.all(counts == 1)
    full = B.gather(B(u))
    if MPI.COMM_WORLD.rank == 0:
        assert np.abs(full - _linear(points)).max() < 1e-12
    # a point outside the mesh is owned once, evaluated at the closest point of the mesh
    corner = particle.mask.nonzero()[0].min() * H - 2.0, 14.7 * H
    outside = PixelSampler(V, np.vstack([points[:3], corner]))
    assert outside.num_outside == 1
    assert MPI.COMM_WORLD.allreduce(int(np.sum(outside.owned == 3))) == 1
    values = outside(u)  # collective
    if 3 in outside.owned:
        value = values[list(outside.owned).index(3)]
        closest = np.array([corner[0] + 2.0 + 0.5 * H, corner[1]])  # boundary ~ there
        assert np.abs(value - _linear(closest[None])[0]).max() < 0.08 * H
    # the strain of a linear field is its constant symmetric gradient, at every pixel
    strain = sample_expression(ufl.sym(ufl.grad(u)), B)
    assert strain.shape == (len(B.owned), 2, 2)
    assert np.allclose(strain, [[0.02, 0.01], [0.01, 0.01]], atol=1e-13)


@pytest.mark.mpi
def test_transpose_apply_is_the_transpose(particle):
    """Dot-product test <B u, w> = <u, B^T w> with random u, w (also across ranks)."""
    V = fem.functionspace(particle.mesh, ("Lagrange", 2, (2,)))
    B = PixelSampler(V, particle.pixel_points_nm())
    rng = np.random.default_rng(7 + MPI.COMM_WORLD.rank)
    u = fem.Function(V)
    u.x.array[:] = rng.normal(size=u.x.array.size)
    u.x.scatter_forward()
    w = rng.normal(size=(len(B.owned), 2))
    lhs = MPI.COMM_WORLD.allreduce(float(np.sum(B(u) * w)))
    btw = B.transpose_apply(w)
    n = V.dofmap.index_map.size_local * V.dofmap.index_map_bs
    rhs = MPI.COMM_WORLD.allreduce(float(btw.array[:n] @ u.x.array[:n]))
    assert abs(lhs) > 1.0
    assert rhs == pytest.approx(lhs, rel=1e-12)


@pytest.mark.mpi
@pytest.mark.parametrize("method", ["l2", "bilinear"])
def test_constant_image_gives_that_constant(particle, method):
    V = fem.functionspace(particle.mesh, ("Lagrange", 2))
    image = np.where(particle.mask, 0.37, np.nan)  # NaN outside must not leak in
    f = image_to_function(image, H, V, method)
    assert np.all(np.isfinite(f.x.array))
    assert np.allclose(f.x.array, 0.37, rtol=0, atol=1e-10)


@pytest.mark.mpi
def test_l2_projection_conserves_the_pixel_mean_and_bilinear_is_exact_on_affine(particle):
    """(f, 1) = (I_h, 1): the projection of the pixel field keeps its integral."""
    mesh = particle.mesh
    V = fem.functionspace(mesh, ("Lagrange", 1))
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 1, particle.mask.shape)
    f = image_to_function(image, H, V, "l2", quadrature_degree=12)
    integral = mesh.comm.allreduce(fem.assemble_scalar(fem.form(f * ufl.dx)))
    # the same integral by the projection's own quadrature, independent of V
    g = image_to_function(image, H, fem.functionspace(mesh, ("DG", 0)), "l2",
                          quadrature_degree=12)
    reference = mesh.comm.allreduce(fem.assemble_scalar(fem.form(g * ufl.dx)))
    assert integral == pytest.approx(reference, rel=1e-10)
    # and it is close to the sum over pixels (the boundary cuts pixel corners)
    assert integral == pytest.approx(np.sum(image[particle.mask]) * H**2, rel=0.02)

    i, j = np.meshgrid(np.arange(image.shape[0]), np.arange(image.shape[1]), indexing="ij")
    affine = 0.1 + 0.01 * i - 0.02 * j
    V2 = fem.functionspace(mesh, ("Lagrange", 2))
    f2 = image_to_function(affine, H, V2, "bilinear")
    exact = fem.Function(V2)
    exact.interpolate(lambda x: 0.1 + 0.01 * x[0] / H - 0.02 * x[1] / H)
    assert np.abs(f2.x.array - exact.x.array).max() < 1e-12


def test_vector_image_shape_must_match_the_space(particle):
    V = fem.functionspace(particle.mesh, ("Lagrange", 1, (2,)))
    with pytest.raises(InputError, match="component"):
        image_to_function(np.zeros(particle.mask.shape), H, V)
    with pytest.raises(InputError, match="method"):
        image_to_function(np.zeros((*particle.mask.shape, 2)), H, V, method="cubic")


def test_linear_fill_extrapolates_affine_images_exactly_near_the_mask(particle):
    from scipy import ndimage

    from chemomech.mechanics.fields import fill_linear

    i, j = np.meshgrid(*(np.arange(n) for n in particle.mask.shape), indexing="ij")
    affine = np.stack([0.5 + 0.1 * i - 0.03 * j, -2.0 + 0.2 * j], axis=-1)
    masked = np.where(particle.mask[..., None], affine, np.nan)
    filled = fill_linear(masked, particle.mask)
    near = ndimage.distance_transform_edt(~particle.mask) <= 2.0
    assert np.abs(filled[near] - affine[near]).max() < 1e-12
    assert np.all(np.isfinite(filled))


def test_pixel_lookup_on_a_pixel_edge_does_not_depend_on_rounding():
    """A point on the edge between pixels i and i+1 (x = (i + 1/2) h) takes pixel i+1, also
    when rounding moved it by 1e-12 px either way; inside a pixel the lookup is the nearest
    centre."""
    from chemomech.mechanics.fields import pixel_lookup

    h = 16.6
    image = np.arange(20.0).reshape(5, 4)  # value 4 i + j
    for noise in (-1e-12, 0.0, 1e-12):
        edge = np.array([[(2.5 + noise) * h, (1.5 - noise) * h]])
        assert pixel_lookup(image, edge, h)[0] == 4 * 3 + 2
    inside = np.array([[2.49 * h, 1.51 * h], [0.2 * h, 3.4 * h]])
    assert pixel_lookup(image, inside, h).tolist() == [4 * 2 + 2, 4 * 0 + 3]
