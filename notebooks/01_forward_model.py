# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. The forward model from the UFL forms
#
# A LixFePO4 platelet whose Li fraction $X(x)$ varies in space wants to take the lattice
# of its local composition: an *eigenstrain* $\varepsilon^*(X)$. Compatibility with its
# neighbours forces an elastic (coherency) strain on top of it. With small strain
# $\varepsilon(u) = \mathrm{sym}\,\nabla u$ and anisotropic stiffness $C$ (rotated to the
# image frame), the displacement $u$ of a traction-free particle $\Omega$ solves
#
# $$ \int_\Omega C : \varepsilon(u) : \varepsilon(v)\,dx
#    = \int_\Omega C : \varepsilon^*(X) : \varepsilon(v)\,dx \quad \forall v, $$
#
# up to a rigid motion (the rigid modes are the PETSc null space). The eigenstrain is
# diagonal in the crystal frame (a, c), each component a shifted-Legendre series:
#
# $$ \varepsilon^* = R\,\mathrm{diag}(f_a(X), f_c(X))\,R^T, \qquad
#    f_i(X) = \sum_n a_{n,i} P_n(2X - 1). $$
#
# Every piece of this is a function of `chemomech.mechanics.forms`; this notebook writes
# the model with them, on a small synthetic two-phase particle.

# %%
import matplotlib.pyplot as plt
import numpy as np
import ufl
from dolfinx import fem
from mpi4py import MPI

from chemomech.mechanics import forms, legendre
from chemomech.mechanics.fields import image_to_function, model_maps
from chemomech.mechanics.forward import ElasticityProblem
from chemomech.mechanics.materials import Material, isotropic_plane_tensor, vegard_misfit
from chemomech.mechanics.mesh import mesh_from_mask

comm = MPI.COMM_WORLD

# %% [markdown]
# ## A particle mask and its composition
#
# An elliptical platelet, $h = 16.6$ nm per pixel, long axis along the crystal c axis,
# split into an FePO4-rich and a LiFePO4-rich half by a diffuse interface
# $X = \tfrac12 (1 + \tanh(2 s / w))$, $w = 120$ nm. Images are indexed `[i, j]` with
# $x = i h$ (axis 0) and $y = j h$ (axis 1).

# %%
h = 16.6  # nm per pixel
nx, ny = 48, 80
i, j = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
p, q = (i - (nx - 1) / 2) * h, (j - (ny - 1) / 2) * h
mask = (p / 330.0) ** 2 + (q / 600.0) ** 2 < 1.0
X_image = np.where(mask, 0.5 * (1 + np.tanh(2 * (q - 0.3 * p) / 120.0)), np.nan)
angle = 0.2  # rad, from image x to crystal a (ccw): c is near y, the long axis

# %% [markdown]
# ## Mesh
#
# `mesh_from_mask` traces the mask's boundary, simplifies it by a fraction of a pixel and
# meshes the polygon with gmsh; coordinates are in nm.

# %%
pm = mesh_from_mask(mask, h, comm, mesh_size_px=1.5)
n_cells = pm.mesh.topology.index_map(2).size_global
print(f"{n_cells} cells, area {pm.area_nm2 * 1e-6:.3f} um^2 "
      f"(mask: {mask.sum() * h * h * 1e-6:.3f})")

# %% [markdown]
# ## Eigenstrain from the composition
#
# The composition image becomes a P1 function by $L^2$ projection of the pixel field;
# Vegard's law is the degree-1 series through $f(1) = 0$ (LiFePO4 is the reference) and
# $f(0) = $ the FePO4 misfit, about $-4.9$ % along a and $+2.0$ % along c.

# %%
Q = fem.functionspace(pm.mesh, ("Lagrange", 1))
X = image_to_function(X_image, h, Q, mask=mask, name="X")
vegard = vegard_misfit()
coef_a = legendre.from_linear(vegard["a"], 0.0)
coef_c = legendre.from_linear(vegard["c"], 0.0)
eps_star = forms.eigenstrain(X, coef_a, coef_c, angle)
print("Vegard misfit:", {k: round(v, 4) for k, v in vegard.items()})

# %% [markdown]
# ## Solve
#
# $C$ is the Maxisch–Ceder LiFePO4/FePO4 average in plane stress, rotated to the image
# frame. `ElasticityProblem` assembles $a(u, v)$ = `forms.elastic_energy_form` and
# $L(v)$ = `forms.eigenstrain_load_form`, and solves with MUMPS (rigid modes removed).
# The coherency strain is $\varepsilon(u) - \varepsilon^*$.

# %%
C = forms.stiffness_tensor(Material().image_tensor(angle))
problem = ElasticityProblem(pm.mesh, C, degree=1, solver="lu")
u = problem.solve(eps_star)
elastic = forms.epsilon(u) - eps_star
maps = model_maps(u, forms.epsilon(u), pm, mask.shape)
coherency = model_maps(u, elastic, pm, mask.shape)

# %% [markdown]
# The total strain follows the composition, reduced where the two phases are held
# together; the coherency strain is largest across the interface and changes sign there.

# %%
if comm.rank == 0:
    fig, axes = plt.subplots(1, 4, figsize=(13, 4.2))
    for ax, (title, image, cmap) in zip(axes, [
            ("X", X_image, "viridis"),
            (r"total $\varepsilon_{yy}$", maps["e_yy"], "RdBu_r"),
            (r"coherency $\varepsilon_{yy}$", coherency["e_yy"], "RdBu_r"),
            (r"coherency $\varepsilon_{xy}$", coherency["e_xy"], "RdBu_r")], strict=True):
        im = ax.imshow(image, cmap=cmap)
        ax.set_title(title)
        ax.axis("off")
        fig.colorbar(im, ax=ax, shrink=0.7)
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## Analytic check: the Eshelby inclusion in a finite disc
#
# A dilatational inclusion $\varepsilon^* = e_0 I$ in $r < a$ of a traction-free isotropic
# plane-stress disc $r < b$ has a radial displacement $u_r = A_1 r$ inside and
# $A_2 r + B_2 / r$ outside, with
#
# $$ B_2 = \frac{(1+\nu)\,e_0 a^2}{2}, \qquad A_2 = \frac{(1-\nu)\,e_0 a^2}{2 b^2},
#    \qquad A_1 = A_2 + \frac{B_2}{a^2}, $$
#
# from continuity of $u_r$ and $\sigma_{rr}$ at $r = a$ and $\sigma_{rr}(b) = 0$; as
# $b \to \infty$, $A_1 \to (1+\nu) e_0 / 2$, Eshelby's result. We mesh the disc with the
# circle $r = a$ as a mesh curve and compare the same forms' solution with it.

# %%
import gmsh  # noqa: E402
from dolfinx.io import gmsh as gmshio  # noqa: E402

a_in, b_out, E, nu, e0 = 0.5, 1.0, 100.0, 0.3, 0.01
gmsh.initialize()
gmsh.option.setNumber("General.Terminal", 0)
if comm.rank == 0:
    outer = gmsh.model.occ.addDisk(0, 0, 0, b_out, b_out)
    inner = gmsh.model.occ.addDisk(0, 0, 0, a_in, a_in)
    gmsh.model.occ.fragment([(2, outer)], [(2, inner)])
    gmsh.model.occ.synchronize()
    for dim, tag in gmsh.model.getEntities(2):
        inside = abs(gmsh.model.occ.getMass(dim, tag) - np.pi * a_in**2) < 1e-6
        gmsh.model.addPhysicalGroup(2, [tag], 1 if inside else 2)
    gmsh.option.setNumber("Mesh.MeshSizeMax", 0.04)
    gmsh.model.mesh.generate(2)
    gmsh.model.mesh.setOrder(2)
disc = gmshio.model_to_mesh(gmsh.model, comm, 0, gdim=2)
gmsh.finalize()

chi = fem.Function(fem.functionspace(disc.mesh, ("DG", 0)))
chi.x.array[disc.cell_tags.indices[disc.cell_tags.values == 1]] = 1.0
C_iso = forms.stiffness_tensor(isotropic_plane_tensor(E, nu, "plane_stress"))
u_disc = ElasticityProblem(disc.mesh, C_iso, degree=2, solver="lu").solve(
    e0 * chi * ufl.Identity(2))

x = ufl.SpatialCoordinate(disc.mesh)
B2 = (1 + nu) * e0 * a_in**2 / 2
A2 = (1 - nu) * e0 * a_in**2 / (2 * b_out**2)
A1 = A2 + B2 / a_in**2
u_exact = chi * A1 * x + (1 - chi) * (A2 + B2 / ufl.inner(x, x)) * x

# %% [markdown]
# The solver fixes the rigid motion only up to the null space, so we compare modulo the
# three rigid modes: subtract the $L^2$ projection of the error onto them.

# %%
def integral(expr):
    form = fem.form(expr * ufl.dx(domain=disc.mesh, metadata={"quadrature_degree": 8}))
    return comm.allreduce(fem.assemble_scalar(form))


modes = [ufl.as_vector([1.0, 0.0]), ufl.as_vector([0.0, 1.0]), ufl.as_vector([-x[1], x[0]])]
err = u_disc - u_exact
G = np.array([[integral(ufl.inner(m, n)) for n in modes] for m in modes])
c = np.linalg.solve(G, [integral(ufl.inner(m, err)) for m in modes])
err = err - sum(float(ci) * m for ci, m in zip(c, modes, strict=True))
relative = np.sqrt(integral(ufl.inner(err, err)) / integral(ufl.inner(u_exact, u_exact)))
print(f"Eshelby disc, P2: relative L2 error {relative:.2e}; A1 = {A1:.5f} "
      f"(infinite matrix: {(1 + nu) * e0 / 2:.5f})")
assert relative < 1e-4
