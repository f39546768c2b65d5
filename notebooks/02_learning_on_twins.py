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
# # 2. Learning a law on a twin
#
# A *twin* is a synthetic particle whose law we know: we make its strain maps with the
# forward model and a chosen $f(X)$, add measurement noise, and ask the inversion to find
# $f$ again. Model M1 fits the Legendre coefficients $a = (a_{n,a}, a_{n,c})$ of
# $f_a, f_c$ to the displacement $d$ integrated from the measured displacement gradient:
#
# $$ J(a) = \tfrac12 \sum_{\text{pixels } p} \big| P\,(u(a)(x_p) - d_p) \big|^2, $$
#
# where $u(a)$ solves the elasticity problem of notebook 1 and $P$ removes the rigid motion
# (the data's integration constant and rotation are unknown). The gradient $dJ/da$ comes
# from the adjoint: pyadjoint records the forward solve on a *tape* and replays it
# backwards, one adjoint solve for all coefficients. $J$ is quadratic in $a$, so the
# normal equations $N a = r$ give the same minimiser: the *linear fast path*, an
# independent check of TAO.
#
# This notebook also runs as a script under MPI (`mpirun -n 2 python3
# notebooks/02_learning_on_twins.py`): the mesh is distributed, the answer is the same.

# %%
import matplotlib.pyplot as plt
import numpy as np
from mpi4py import MPI
from pyadjoint import AdjFloat, taylor_test

from chemomech.correlative.displacement import measured_displacement
from chemomech.inverse.particle import particle_setup
from chemomech.inverse.problem import M1Model
from chemomech.inverse.uncertainty import (
    eigenstrain_band,
    integrated_noise_covariance,
    strain_noise_sampler,
)
from chemomech.mechanics import forms, legendre
from chemomech.mechanics.mesh import mesh_from_mask
from chemomech.synth import ParticleSpec, simulate_particle, vegard_coefficients

comm = MPI.COMM_WORLD

# %% [markdown]
# ## The twin
#
# Vegard's law plus a quadratic term, $f_i(X) = m_i (1 - X) + q_i P_2(2X - 1)$, on a
# two-phase platelet of about $0.9 \times 0.55\ \mu$m (16.6 nm pixels), strain noise
# $10^{-3}$. `simulate_particle` solves the forward model with `chemomech.mechanics.forms`
# and returns the maps as the readers would (crystal frame, NaN outside the particle).

# %%
true_a, true_c = vegard_coefficients(quadratic_a=0.004, quadratic_c=-0.002)
truth = np.r_[true_a, true_c]
twin = simulate_particle(ParticleSpec("twin", 0.5, rotation_rad=0.3, length_nm=900,
                                      width_nm=550, noise_strain=1e-3, noise_composition=0.0,
                                      coefficients_a=tuple(true_a),
                                      coefficients_c=tuple(true_c), seed=3))
print(f"{twin.name}: {twin.mask.sum()} pixels, mean X {np.nanmean(twin.X):.2f}")

# %% [markdown]
# ## The data and the model
#
# The measured gradient is integrated to $d$ (least squares over the mask), the mask is
# meshed (distributed over `comm`), and `particle_setup` pairs the mesh with the data;
# pixels within 2 px of the edge are left out.

# %%
pm = mesh_from_mask(twin.mask, twin.pixel_size_nm, comm)
setup = particle_setup(twin.name, pm, twin.X, twin.rotation_rad, edge_exclusion_px=2,
                       displacement=measured_displacement(twin).u)
model = M1Model([setup], degree=2, comm=comm)
print(f"{model.num_coefficients} coefficients, "
      f"{pm.mesh.topology.index_map(2).size_global} cells on {comm.size} rank(s)")

# %% [markdown]
# ## The tape and a Taylor test
#
# `model.reduced_functional(a)` records one evaluation of $J$ on the tape and returns
# $\hat J(a)$. If the adjoint gradient is exact, the first-order remainder
#
# $$ \big| \hat J(a + \epsilon h) - \hat J(a) - \epsilon\, dJ \cdot h \big| = O(\epsilon^2), $$
#
# so halving $\epsilon$ divides it by 4: `taylor_test` returns the observed rate, 2.

# %%
a0 = 0.6 * truth
h = comm.bcast(0.01 * np.random.default_rng(7).standard_normal(a0.size))
rf = model.reduced_functional(a0)
rate = taylor_test(rf, [AdjFloat(v) for v in a0], [AdjFloat(v) for v in h])
print(f"Taylor rate {rate:.3f}")
assert rate > 1.98

# %% [markdown]
# ## TAO against the linear fast path
#
# TAO's bound-constrained quasi-Newton method (BLMVM) uses only $J$ and $dJ/da$; the fast
# path assembles $N = G^T P G$ from the responses to each basis eigenstrain and solves
# $N a = r$. Both must give the same coefficients.

# %%
tao = model.fit("tao", tao_type="blmvm")
linear = model.fit("linear")
scale = np.abs(linear.coefficients).max()
difference = np.abs(tao.coefficients - linear.coefficients).max() / scale
print(f"TAO: {tao.iterations} iterations, J = {tao.cost:.6g}; linear: J = {linear.cost:.6g}; "
      f"max |a_TAO - a_lin| / |a| = {difference:.1e}")
assert difference < 1e-6

# %% [markdown]
# ## Bands
#
# The integration correlates the noise of $d$, so the i.i.d. least-squares covariance is
# wrong. Instead we push unit strain noise through the same integration and the same
# projection, $n_k \mapsto \hat a_k = N^{-1} G^T P n_k$, and scale by the noise level
# estimated from the residual: $\mathrm{Cov}(a) = \hat\sigma^2\, \overline{\hat a_k \hat a_k^T}$.
# The pointwise 95 % band of $f(X) = V(X)\,a$ is $f \pm 1.96 \sqrt{V \mathrm{Cov} V^T}$.
# (Few draws here to stay fast; the pipeline uses 100.)

# %%
samplers = {twin.name: strain_noise_sampler(twin, pm.pixel_indices(), setup.misfit)}
cov, sigma2 = integrated_noise_covariance(model, linear, samplers, n_draws=30)
X = np.linspace(0, 1, 101)
band = eigenstrain_band(linear.coefficients, cov, X)
inside = {d: float(np.mean(np.abs(legendre.evaluate(t, X) - band[d])
                           <= (band[d + "_hi"] - band[d + "_lo"]) / 2))
          for d, t in (("a", true_a), ("c", true_c))}
print(f"noise sigma {np.sqrt(sigma2):.2e} (true 1e-3); truth inside the band: {inside}")

# %%
if comm.rank == 0:
    fig, ax = plt.subplots(figsize=(6, 4))
    for d, t, colour in (("a", true_a, "C0"), ("c", true_c, "C3")):
        ax.fill_between(X, band[d + "_lo"], band[d + "_hi"], color=colour, alpha=0.3,
                        label=f"$f_{d}$ 95 % band")
        ax.plot(X, band[d], color=colour, label=f"$f_{d}$ learnt")
        ax.plot(X, forms.shifted_legendre_series(X, t), "k--", lw=1)
    ax.set_xlabel("Li fraction X")
    ax.set_ylabel("eigenstrain")
    ax.set_title("learnt law (truth dashed)")
    ax.legend()
    fig.tight_layout()
    plt.show()
