r"""Verification of the forward model against exact solutions (small problems, LU).

1. Uniform eigenstrain in a traction-free particle with a hole: zero stress, affine u.
2. Eshelby/Lame: dilatational inclusion in a finite traction-free isotropic disc;
   L2 error converges at rate 2 (P1) and 3 (P2, isoparametric geometry).
3. A strip with a sharp straight interface (bilayer): exact piecewise-quadratic solution,
   reproduced to round-off by P2 on an interface-conforming mesh.
4. Rotating the crystal frame and the geometry together rotates the solution.
5. The distributed solve on a gmsh particle mesh equals the serial one (mpirun -n 2).
Plus: Dirichlet data from a displacement image, composition-dependent stiffness.
"""

from __future__ import annotations

import numpy as np
import pytest
import ufl
from dolfinx import fem
from dolfinx import mesh as dmesh
from mpi4py import MPI

from chemomech.mechanics.fields import image_to_function
from chemomech.mechanics.forms import eigenstrain, epsilon, sigma, stiffness_tensor
from chemomech.mechanics.forward import ElasticityProblem, dirichlet_from_image, l2_norm
from chemomech.mechanics.materials import (
    Material,
    isotropic_plane_tensor,
    rotation_matrix,
)
from chemomech.mechanics.mesh import mesh_from_mask

H = 4.0  # nm per pixel


def _integrate(mesh, integrand, degree: int | None = None) -> float:
    dx = ufl.dx(domain=mesh, metadata={} if degree is None else {"quadrature_degree": degree})
    return mesh.comm.allreduce(fem.assemble_scalar(fem.form(integrand * dx)))


def l2_error_modulo_rigid(u_h, u_exact, degree: int = 8) -> float:
    """min over rigid motions r of ||u_h - u_exact - r||_L2 (the rigid modes L2-projected)."""
    mesh = u_h.function_space.mesh
    x = ufl.SpatialCoordinate(mesh)
    modes = [ufl.as_vector([1.0, 0.0]), ufl.as_vector([0.0, 1.0]),
             ufl.as_vector([-x[1], x[0]])]
    e = u_h - u_exact
    G = np.array([[_integrate(mesh, ufl.inner(p, q), degree) for q in modes] for p in modes])
    c = np.linalg.solve(G, [_integrate(mesh, ufl.inner(p, e), degree) for p in modes])
    r = sum(float(ci) * p for ci, p in zip(c, modes, strict=True))
    return float(np.sqrt(_integrate(mesh, ufl.inner(e - r, e - r), degree)))


def platelet_mask(n: int = 36, hole: bool = True) -> np.ndarray:
    """An asymmetric platelet (tilted ellipse) with an off-centre hole."""
    i, j = np.meshgrid(np.arange(n), np.arange(n - 6), indexing="ij")
    p, q = i - 17.3, j - 14.1
    mask = (p * np.cos(0.5) + q * np.sin(0.5)) ** 2 / 15**2 \
        + (-p * np.sin(0.5) + q * np.cos(0.5)) ** 2 / 9**2 < 1
    if hole:
        mask &= np.hypot(p - 4, q - 1) >= 3.2
    return mask


def test_uniform_eigenstrain_is_stress_free_with_affine_displacement():
    pm = mesh_from_mask(platelet_mask(), H, MPI.COMM_SELF)
    angle = 0.7
    C = stiffness_tensor(Material().image_tensor(angle))
    eps_star = np.array([[-0.03, 0.004], [0.004, 0.012]])
    problem = ElasticityProblem(pm.mesh, C, degree=1, solver="lu")
    u = problem.solve(ufl.as_matrix(eps_star.tolist()))
    x = ufl.SpatialCoordinate(pm.mesh)
    affine = ufl.as_matrix(eps_star.tolist()) * x
    scale = float(np.sqrt(_integrate(pm.mesh, ufl.inner(affine, affine))))
    assert l2_error_modulo_rigid(u, affine, degree=2) < 1e-10 * scale
    stress = sigma(epsilon(u) - ufl.as_matrix(eps_star.tolist()), C)
    reference = np.linalg.norm(np.einsum("ijkl,kl->ij", Material().image_tensor(angle),
                                         eps_star))
    stress_rms = np.sqrt(_integrate(pm.mesh, ufl.inner(stress, stress)) / pm.area_nm2)
    assert stress_rms < 1e-9 * reference


def _disc_with_inclusion(comm, a: float, b: float, size: float, order: int):
    """gmsh disc of radius b with the circle r = a as a mesh curve; cell tag 1 = inclusion."""
    import gmsh
    from dolfinx.io import gmsh as gmshio

    gmsh.initialize()
    gmsh.option.setNumber("General.Terminal", 0)
    try:
        if comm.rank == 0:
            gmsh.model.add("eshelby")
            outer = gmsh.model.occ.addDisk(0, 0, 0, b, b)
            inner = gmsh.model.occ.addDisk(0, 0, 0, a, a)
            gmsh.model.occ.fragment([(2, outer)], [(2, inner)])
            gmsh.model.occ.synchronize()
            for dim, tag in gmsh.model.getEntities(2):
                com = gmsh.model.occ.getMass(dim, tag)
                # the inclusion has area pi a^2
                gmsh.model.addPhysicalGroup(2, [tag], 1 if abs(com - np.pi * a * a) < 1e-6
                                            else 2)
            gmsh.option.setNumber("Mesh.MeshSizeMax", size)
            gmsh.option.setNumber("Mesh.MeshSizeMin", size)
            gmsh.model.mesh.generate(2)
            gmsh.model.mesh.setOrder(order)
        data = gmshio.model_to_mesh(gmsh.model, comm, 0, gdim=2)
    finally:
        gmsh.finalize()
    return data.mesh, data.cell_tags


def eshelby_disc_solution(x, a: float, b: float, nu: float, e0: float, chi):
    r"""Exact u for a dilatational inclusion :math:`\varepsilon^* = e_0 I` in r < a of a
    traction-free isotropic plane-stress disc r < b (chi = 1 in the inclusion).

    :math:`u = u_r(r) e_r`, :math:`u_r = A_1 r` (r < a), :math:`u_r = A_2 r + B_2 / r` (r > a),
    from continuity of :math:`u_r` and :math:`\sigma_{rr}` at a and :math:`\sigma_{rr}(b) = 0`
    with :math:`\sigma_{rr} = E/(1-\nu^2)[(1+\nu)(A - e_0\chi) - (1-\nu) B/r^2]`:
    :math:`B_2 = (1+\nu) e_0 a^2 / 2`, :math:`A_2 = (1-\nu) e_0 a^2 / (2 b^2)`,
    :math:`A_1 = A_2 + B_2 / a^2`; as b -> inf, :math:`A_1 \to (1+\nu) e_0/2` (Eshelby).
    """
    B2 = (1 + nu) * e0 * a**2 / 2
    A2 = (1 - nu) * e0 * a**2 / (2 * b**2)
    A1 = A2 + B2 / a**2
    r2 = ufl.inner(x, x)
    return chi * A1 * x + (1 - chi) * (A2 + B2 / r2) * x


@pytest.mark.parametrize("degree, rate", [(1, 2.0), (2, 3.0)])
def test_eshelby_inclusion_in_a_finite_disc_converges(degree, rate):
    """L2 error (modulo rigid motion) against the Lame solution: rate p + 1 in the mesh size
    h ~ (cells)^(-1/2), and within 25 % of the error of the nodal interpolant (the FE
    solution is quasi-optimal).  Degree-p geometry: the interface r = a is a mesh curve."""
    a, b, E, nu, e0 = 0.5, 1.0, 100.0, 0.3, 0.01
    C = stiffness_tensor(isotropic_plane_tensor(E, nu, "plane_stress"))
    errors, cells = [], []
    for size in (0.25, 0.125, 0.0625, 0.03125):
        mesh, cell_tags = _disc_with_inclusion(MPI.COMM_SELF, a, b, size, order=degree)
        chi = fem.Function(fem.functionspace(mesh, ("DG", 0)))
        chi.x.array[cell_tags.indices[cell_tags.values == 1]] = 1.0
        problem = ElasticityProblem(mesh, C, degree=degree, solver="lu")
        u = problem.solve(e0 * chi * ufl.Identity(2))
        exact = eshelby_disc_solution(ufl.SpatialCoordinate(mesh), a, b, nu, e0, chi)
        errors.append(l2_error_modulo_rigid(u, exact) / e0)
        cells.append(mesh.topology.index_map(2).size_global)
    interpolant = fem.Function(problem.V)
    interpolant.interpolate(fem.Expression(exact, problem.V.element.interpolation_points))
    slope = np.polyfit(np.log(cells), np.log(errors), 1)[0]
    assert -2 * slope == pytest.approx(rate, abs=0.25), (errors, cells)
    optimality = 4.0 if degree == 1 else 1.25  # Galerkin is L2-optimal up to a constant
    assert errors[-1] < optimality * l2_error_modulo_rigid(interpolant, exact) / e0
    assert errors[-1] < (1e-3 if degree == 1 else 1e-5)


def test_bilayer_strip_with_sharp_interface_is_exact():
    r"""Strip [0, L] x [0, W], eigenstrain diag(e_a, e_c) for y > W/2, crystal a = x.

    Pure bending is exact: :math:`\varepsilon_{xx} = c_0 + \kappa y`,
    :math:`\sigma_{yy} = \sigma_{xy} = 0`, so :math:`\varepsilon_{yy} = e^*_{yy}
    - (Q_{ac}/Q_{cc})(c_0 + \kappa y - e^*_{xx})` and
    :math:`u = ((c_0 + \kappa y) x,\ G(y) - \kappa x^2/2)`, G' = eps_yy (piecewise linear).
    c0 and kappa make the end force and moment vanish (Timoshenko's bimetal); the ends carry
    the exact displacement.  u is piecewise quadratic, so P2 is exact on a conforming mesh.
    """
    L, W, e_a, e_c = 4.0, 1.0, -0.049, 0.02
    C_cr = Material().crystal_tensor()
    Qcc, Qac = C_cr[1, 1, 1, 1], C_cr[0, 0, 1, 1]
    # zero force and moment of sigma_xx ~ c0 + kappa y - e_a chi over y in [0, W]
    Mmat = np.array([[W, W**2 / 2], [W**2 / 2, W**3 / 3]])
    rhs = e_a * np.array([W / 2, (W**2 - W**2 / 4) / 2])
    c0, kappa = np.linalg.solve(Mmat, rhs)
    assert kappa == pytest.approx(1.5 * e_a / W)  # Timoshenko, equal layers and moduli
    r = Qac / Qcc

    domain = dmesh.create_rectangle(MPI.COMM_SELF, [[0, 0], [L, W]], [16, 8],
                                    dmesh.CellType.triangle)
    x = ufl.SpatialCoordinate(domain)
    chi = ufl.conditional(ufl.gt(x[1], W / 2), 1.0, 0.0)
    G = -r * (c0 * x[1] + kappa * x[1] ** 2 / 2) + (e_c + r * e_a) * ufl.max_value(
        x[1] - W / 2, 0.0)
    exact = ufl.as_vector([(c0 + kappa * x[1]) * x[0], G - kappa * x[0] ** 2 / 2])
    V = fem.functionspace(domain, ("Lagrange", 2, (2,)))
    u_exact = fem.Function(V)
    u_exact.interpolate(fem.Expression(exact, V.element.interpolation_points))
    ends = dmesh.locate_entities_boundary(domain, 1, lambda p: np.isclose(p[0], 0.0)
                                          | np.isclose(p[0], L))
    bc = fem.dirichletbc(u_exact, fem.locate_dofs_topological(V, 1, ends))
    problem = ElasticityProblem(domain, stiffness_tensor(C_cr), degree=2, solver="lu",
                                bcs=[bc], V=V)
    u = problem.solve(ufl.as_matrix([[e_a * chi, 0], [0, e_c * chi]]))
    assert np.abs(u.x.array - u_exact.x.array).max() < 1e-12 * np.abs(u_exact.x.array).max()


def test_rotating_crystal_and_geometry_together_rotates_the_solution():
    mask = platelet_mask()
    pm = mesh_from_mask(mask, H, MPI.COMM_SELF)
    i, j = np.meshgrid(np.arange(mask.shape[0]), np.arange(mask.shape[1]), indexing="ij")
    Q = fem.functionspace(pm.mesh, ("Lagrange", 1))
    X = image_to_function(0.5 * (1 + np.tanh((i - 0.4 * j - 12) / 3.0)), H, Q)
    coefficients = ([-0.02, 0.025, 0.004], [0.01, -0.01, 0.002])
    phi, psi = 0.3, 0.9

    def solve(angle: float) -> np.ndarray:
        C = stiffness_tensor(Material().image_tensor(angle))
        problem = ElasticityProblem(pm.mesh, C, degree=2, solver="lu")
        return problem.solve(eigenstrain(X, *coefficients, angle)).x.array.reshape(-1, 2)

    u1 = solve(phi)
    R = rotation_matrix(psi)
    pm.mesh.geometry.x[:, :2] = pm.mesh.geometry.x[:, :2] @ R.T  # X moves with the mesh
    u2 = solve(phi + psi)
    assert np.abs(u1).max() > 1.0  # nm: a real displacement
    assert np.abs(u2 - u1 @ R.T).max() < 1e-9 * np.abs(u1).max()


@pytest.mark.mpi
@pytest.mark.mpi_only  # serial vs COMM_WORLD: meaningful on >= 2 ranks only
def test_distributed_solve_on_a_particle_mesh_equals_serial():
    mask = platelet_mask()
    i, j = np.meshgrid(np.arange(mask.shape[0]), np.arange(mask.shape[1]), indexing="ij")
    image = np.where(mask, 0.5 * (1 + np.tanh((i + 0.3 * j - 21) / 2.5)), np.nan)

    def norm(comm) -> tuple[float, int]:
        pm = mesh_from_mask(mask, H, comm)
        X = image_to_function(image, H, fem.functionspace(pm.mesh, ("Lagrange", 1)))
        angle = -1.2
        problem = ElasticityProblem(pm.mesh, stiffness_tensor(Material().image_tensor(angle)),
                                    degree=2, solver="lu")
        u = problem.solve(eigenstrain(X, [-0.02, 0.025, 0.003], [0.01, -0.01], angle))
        return l2_norm(u), problem.num_dofs

    distributed, n_dist = norm(MPI.COMM_WORLD)
    serial, n_serial = norm(MPI.COMM_SELF)
    assert n_dist == n_serial
    assert distributed > 1.0
    assert distributed == pytest.approx(serial, rel=1e-10)


def test_dirichlet_from_a_displacement_image_reproduces_affine_data():
    """Zero eigenstrain, u = G x on the boundary: the solution is u = G x everywhere.

    Exact with data on the whole image, and with data only on the particle's pixels (NaN
    outside) under the default linear extrapolation to the boundary, half a pixel beyond
    the last pixel centres; copying the nearest pixel instead errs by up to |G| h / sqrt(2).
    """
    mask = platelet_mask()
    pm = mesh_from_mask(mask, H, MPI.COMM_SELF)
    G = np.array([[0.012, -0.03], [0.02, -0.004]])
    i, j = np.meshgrid(np.arange(mask.shape[0]), np.arange(mask.shape[1]), indexing="ij")
    image = np.stack([i * H, j * H], axis=-1) @ G.T
    C = stiffness_tensor(Material().image_tensor(0.4))
    V = fem.functionspace(pm.mesh, ("Lagrange", 2, (2,)))
    x = V.tabulate_dof_coordinates()[:, :2]
    zero = fem.Constant(pm.mesh, np.zeros((2, 2)))
    exact = 1e-10 * np.abs(x @ G.T).max()
    masked = np.where(mask[..., None], image, np.nan)
    for data, fill, tol in ((image, "linear", exact), (masked, "linear", exact),
                            (masked, "nearest", np.linalg.norm(G, 2) * H / np.sqrt(2))):
        bc = dirichlet_from_image(V, data, H, fill=fill)
        problem = ElasticityProblem(pm.mesh, C, degree=2, solver="lu", bcs=[bc], V=V)
        assert problem.nullspace is None
        error = np.abs(problem.solve(zero).x.array.reshape(-1, 2) - x @ G.T).max()
        assert error < tol
    with pytest.raises(ValueError, match="another function space"):
        ElasticityProblem(pm.mesh, C, degree=2, bcs=[bc])


@pytest.mark.parametrize("degree", [1, 2])
def test_rigid_modes_are_the_null_space_of_the_traction_free_operator(degree):
    """PETSc's NullSpace.test(A): A n = 0 for the three rigid modes of the assembled matrix;
    a non-rigid affine mode (pure shear) is not in the kernel: u^T A u is its exact strain
    energy, area * C:e:e."""
    from chemomech.mechanics.forward import rigid_body_modes

    pm = mesh_from_mask(platelet_mask(), H, MPI.COMM_SELF)
    problem = ElasticityProblem(pm.mesh, stiffness_tensor(Material().image_tensor(0.7)),
                                degree=degree, solver="lu")
    nullspace = rigid_body_modes(problem.V)
    assert nullspace.test(problem.A)
    assert len(nullspace.getVecs()) == 3
    shear = fem.Function(problem.V)
    shear.interpolate(lambda x: np.vstack([x[1], x[0]]))  # symmetric gradient: strained
    Ashear = problem.A.createVecLeft()
    problem.A.mult(shear.x.petsc_vec, Ashear)
    e = np.array([[0.0, 1.0], [1.0, 0.0]])
    energy = pm.area_nm2 * np.einsum("ijkl,kl,ij", Material().image_tensor(0.7), e, e)
    assert Ashear.dot(shear.x.petsc_vec) == pytest.approx(energy, rel=1e-10)


def _plane_stress_reference(X: float, angle: float) -> np.ndarray:
    """Image-frame 2x2x2x2 stiffness of C(X) = X C_LFP + (1 - X) C_FP by another route: invert
    the 6x6 tensor, keep the in-plane compliance (a, c, ac), invert back (plane stress)."""
    from chemomech.mechanics.materials import voigt_stiffness

    C6 = X * voigt_stiffness("LiFePO4") + (1 - X) * voigt_stiffness("FePO4")
    S = np.linalg.inv(C6)[np.ix_([0, 2, 4], [0, 2, 4])]  # e_aa, e_cc, 2 e_ac
    D = np.linalg.inv(S)
    index = {(0, 0): 0, (1, 1): 1, (0, 1): 2, (1, 0): 2}
    C = np.zeros((2, 2, 2, 2))
    for (i, j), m in index.items():
        for (k, l), n in index.items():
            C[i, j, k, l] = D[m, n]
    c, s = np.cos(angle), np.sin(angle)
    R = np.array([[c, -s], [s, c]])
    return np.einsum("ip,jq,kr,ls,pqrs->ijkl", R, R, R, R, C)


def test_composition_dependent_stiffness():
    """C(X) of Material("mixed") equals an independent plane-stress reduction at X = 0.3, 0.8
    (the reduced moduli are rational in X, so not the average of the phases); at X = 1 the
    displacement equals LiFePO4's."""
    pm = mesh_from_mask(platelet_mask(hole=False), H, MPI.COMM_SELF)
    Q = fem.functionspace(pm.mesh, ("Lagrange", 1))
    X = fem.Function(Q)
    angle = 0.5
    eps_star = ufl.as_matrix([[0.01, 0.0], [0.0, -0.02]]) * (1 + 0.0 * X)
    x = ufl.SpatialCoordinate(pm.mesh)
    load = eps_star * ufl.sin(x[0] / (3 * H)) * ufl.cos(x[1] / (4 * H))  # incompatible

    def solve(C) -> np.ndarray:
        return ElasticityProblem(pm.mesh, C, degree=1, solver="lu").solve(load).x.array.copy()

    mixed = Material("mixed")
    for value in (0.3, 0.8):
        X.x.array[:] = value
        expr = fem.Expression(mixed.ufl_tensor(angle, X), np.array([[1 / 3, 1 / 3]]))
        C_at = expr.eval(pm.mesh, np.array([0], dtype=np.int32)).reshape(2, 2, 2, 2)
        reference = _plane_stress_reference(value, angle)
        assert np.allclose(C_at, reference, rtol=1e-12, atol=1e-10 * np.abs(reference).max())
    u_avg = solve(stiffness_tensor(Material("average").image_tensor(angle)))
    X.x.array[:] = 1.0
    u_lfp = solve(stiffness_tensor(Material("LiFePO4").image_tensor(angle)))
    assert np.abs(solve(mixed.ufl_tensor(angle, X)) - u_lfp).max() < 1e-10 * np.abs(
        u_lfp).max()
    assert np.abs(u_lfp - u_avg).max() > 1e-2 * np.abs(u_avg).max()
    with pytest.raises(ValueError, match="composition"):
        mixed.ufl_tensor(angle)


def test_plane_strain_uniform_eigenstrain_with_bb_is_stress_free_in_plane():
    """Plane strain (eps_bb = 0) with a uniform eps* = (aa, bb, cc, ac): the in-plane stress
    of the full 3-D orthorhombic law (6x6 Voigt, independent of the 2-D reduction) vanishes,
    sigma_bb does not, and the in-plane strain is eps*_in + Q^-1 B eps*_bb (not eps*_in)."""
    from chemomech.mechanics.forms import in_plane_stress, out_of_plane_load_form

    pm = mesh_from_mask(platelet_mask(), H, MPI.COMM_SELF)
    angle = 0.7
    material = Material("LiFePO4", "plane_strain", b_law=(-0.03,))
    C = material.ufl_tensor(angle)
    f_a, f_b, f_c, f_ac = -0.02, -0.03, 0.015, 0.0
    R = rotation_matrix(angle)
    eps_star = R @ np.array([[f_a, f_ac], [f_ac, f_c]]) @ R.T
    problem = ElasticityProblem(pm.mesh, C, degree=1, solver="lu")
    b = problem.load_vector(ufl.as_matrix(eps_star.tolist()))
    B = material.b_coupling(angle)
    b.axpy(1.0, problem.assemble_load(out_of_plane_load_form(f_b, B, problem.test_function)))
    u = problem.solve_vector(b)
    area = pm.area_nm2
    e_img = np.array([[_integrate(pm.mesh, epsilon(u)[i, j]) / area for j in range(2)]
                      for i in range(2)])
    e_cr = R.T @ e_img @ R
    C6 = material.voigt()
    strain = np.array([e_cr[0, 0], 0.0, e_cr[1, 1], 0.0, 2 * e_cr[0, 1], 0.0])
    stress = C6 @ (strain - np.array([f_a, f_b, f_c, 0.0, 0.0, 0.0]))
    scale = np.abs(C6 @ np.array([f_a, f_b, f_c, 0, 0, 0])).max()
    assert np.abs(stress[[0, 2, 4]]).max() < 1e-9 * scale  # sigma_aa, sigma_cc, sigma_ac
    assert abs(stress[1]) > 0.1 * scale  # sigma_bb: the constraint eps_bb = 0
    assert abs(e_cr[0, 0] - f_a) > 1e-3  # f_b changed the in-plane strain
    s = in_plane_stress(u, ufl.as_matrix(eps_star.tolist()), C, f_b, B)
    rms = np.sqrt(_integrate(pm.mesh, ufl.inner(s, s)) / area)
    assert rms < 1e-9 * scale


def _platelet_problems(*solvers: tuple[str, dict], comm=MPI.COMM_SELF):
    """ElasticityProblems (solver, petsc_options) on one platelet mesh and five eigenstrains
    linear in four Legendre coefficients (the fifth a combination of the first four)."""
    mask = platelet_mask()
    i, j = np.meshgrid(np.arange(mask.shape[0]), np.arange(mask.shape[1]), indexing="ij")
    image = np.where(mask, 0.5 * (1 + np.tanh((i + 0.3 * j - 21) / 2.5)), np.nan)
    pm = mesh_from_mask(mask, H, comm)
    X = image_to_function(image, H, fem.functionspace(pm.mesh, ("Lagrange", 1)))
    angle = 0.4
    C = stiffness_tensor(Material().image_tensor(angle))
    loads = [eigenstrain(X, a, c, angle) for a, c in (
        ([-0.02, 0.01], [0.0, 0.0]), ([0.0, 0.0], [0.01, -0.02]), ([0.0, 0.03], [0.0, 0.0]),
        ([0.0, 0.0], [0.01, 0.0]), ([-0.01, 0.02], [0.015, 0.005]))]
    return [ElasticityProblem(pm.mesh, C, solver=s, petsc_options=o) for s, o in solvers], loads


def test_mumps_options_reach_the_factorisation():
    """The mat_mumps_* options are read when the factorisation is set up (they used to be
    removed from the options database before it, so null-pivot detection was never on)."""
    (problem,), _ = _platelet_problems(("lu", {"mat_mumps_icntl_14": 55}))
    factor = problem.ksp.getPC().getFactorMatrix()
    assert factor.getMumpsIcntl(24) == 1  # null pivots of the traction-free operator
    assert factor.getMumpsIcntl(14) == 55


def test_gamg_resolve_in_the_span_of_earlier_solutions_needs_no_iteration():
    """Fischer's guess: once the solves span the loads (an eigenstrain linear in four
    coefficients), a fifth load combining them converges at once, to the LU solution;
    without the guess (option None removes a default) it takes as long as from zero."""
    (gamg, lu, plain), loads = _platelet_problems(("gamg", {}), ("lu", {}),
                                                  ("gamg", {"ksp_guess_type": None}))
    iterations, plain_iterations = [], []
    for eps in loads:
        u = gamg.solve(eps)
        iterations.append(gamg.ksp.getIterationNumber())
        plain.solve(eps)
        plain_iterations.append(plain.ksp.getIterationNumber())
    assert min(iterations[:4]) > 5 and iterations[4] <= 1
    exact = lu.solve(loads[4]).x.array
    assert np.abs(u.x.array - exact).max() < 1e-8 * np.abs(exact).max()
    assert min(plain_iterations) > 5


@pytest.mark.mpi
def test_solve_columns_equals_one_solve_per_column():
    """`solve_columns` (one KSPMatSolve: a MUMPS multi-RHS back-substitution with LU, column
    by column with GAMG) gives the displacements of the single solves, orthogonal to the
    rigid modes, on 1 and 2 ranks (MUMPS gathers the distributed dense right-hand sides)."""
    (lu, gamg), loads = _platelet_problems(("lu", {}), ("gamg", {"ksp_guess_type": None}),
                                           comm=MPI.COMM_WORLD)
    vectors = [lu.load_vector(eps) for eps in loads]
    B = np.stack([b.array for b in vectors], axis=1)
    single = np.stack([lu.solve_vector(b.copy()).x.array[: B.shape[0]].copy()
                       for b in vectors], axis=1)
    scale = MPI.COMM_WORLD.allreduce(np.abs(single).max(), op=MPI.MAX)
    assert scale > 1.0
    for problem, tol in ((lu, 1e-10), (gamg, 1e-8)):
        U = problem.solve_columns(B)
        assert U.shape == B.shape
        error = MPI.COMM_WORLD.allreduce(np.abs(U - single).max(), op=MPI.MAX)
        assert error < tol * scale
        for mode in problem.nullspace.getVecs():
            dots = MPI.COMM_WORLD.allreduce(mode.getArray(readonly=True) @ U)
            assert np.abs(dots).max() < 1e-10 * scale
