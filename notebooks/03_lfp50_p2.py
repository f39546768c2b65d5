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
# # 3. The real particle LFP50_P2
#
# One particle of the study: 225 × 125 pixel maps of the strain (4D-STEM, crystal frame)
# and of the Li fraction (X-ray), 16.6 nm pixels. The file is the study's own `.mat`,
# read from `../shared/data/` beside the repository (it is not part of the repository).
#
# We check the frame, learn the law with the direct regression M0 and the
# elasticity-constrained M1 in both boundary settings, and look at what the law leaves
# unexplained: the residual strain $\varepsilon_\mathrm{meas} - \varepsilon(u(a))$ and its
# Saint-Venant incompatibility
#
# $$ \eta = \partial_{yy}\varepsilon_{xx} + \partial_{xx}\varepsilon_{yy}
#           - 2\,\partial_{xy}\varepsilon_{xy}, $$
#
# which vanishes for any strain that derives from a displacement: a non-zero $\eta$ is what
# no eigenstrain law $f(X)$ can produce elastically, the signature of plasticity (notebook 4).

# %%
import json
import tempfile
from pathlib import Path

import h5py
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np

from chemomech.analysis.residual import incompatibility
from chemomech.config import RunConfig
from chemomech.correlative.frames import frame_check, rotate_tensor_field
from chemomech.io.readers import read_particles
from chemomech.pipeline import run

root = Path.cwd() if (Path.cwd() / "chemomech").is_dir() else Path.cwd().parent
data = root.parent / "shared" / "data" / "LFP50_P2.mat"
out = Path(tempfile.mkdtemp())

# %% [markdown]
# ## Import
#
# The reader converts the `.mat` to the stack layout (DESIGN §3): $X$ = LFP/(LFP+FP),
# particle where FP + LFP > 0.10, strain in the crystal frame.

# %%
(particle,) = read_particles([data])
print(f"{particle.name}: {particle.mask.shape} px, {particle.mask.sum()} in the particle, "
      f"h = {particle.pixel_size_nm} nm, rotation {particle.rotation_rad:.4f} rad, "
      f"mean X {particle.mean_X:.2f}")

# %% [markdown]
# ## Frame check
#
# The measured displacement gradient in the image frame, $H = Q H_\mathrm{cr} Q^T$, must be
# curl-free if it is a gradient. The check scans the rotation (mod π), the sign of the
# lattice rotation θ and the handedness, and ranks the frames by the RMS curl of the
# smoothed $H$: the file's frame should be the most compatible one.

# %%
check = frame_check(particle)
print(check.format_table(rows=4))
assert check.stated_is_best()

# %% [markdown]
# ## M0 and M1 in both boundary settings
#
# `traction_free`: the particle boundary is free, rigid motions are the null space, and
# all coefficients of $f$ are identifiable. `dirichlet` (the study's setting): the
# measured displacement is imposed on the whole boundary; the constant parts of $f_a, f_c$
# then have no effect, and the gauge fixes $f(1) = 0$ (LiFePO4 is the reference). Each run
# is the full pipeline that `chemomech invert` runs (M0 regression, M1 with TAO,
# cross-checked against the linear fast path, bands, report); few Monte Carlo draws keep
# it fast.

# %%
summaries = {}
for bc in ("traction_free", "dirichlet"):
    config = RunConfig(data=[data], model="M1", legendre_degree=2, output=out / bc,
                       boundary_condition=bc, uncertainty={"n_draws": 20})
    summaries[bc] = run(config)
    s = summaries[bc]
    at = s["eigenstrain_at"]
    print(f"{bc:>13}: f_a(0, 0.5, 1) = {[round(at[x]['a'], 4) for x in at]}, "
          f"f_c = {[round(at[x]['c'], 4) for x in at]}; model error "
          f"{ {k: round(v, 4) for k, v in s['model_errors'].items()} }")

# %% [markdown]
# ## Residual strain and incompatibility maps
#
# `fields.h5` holds the pixel maps of the run: measured strain, model fields and the
# residual per model, in the crystal frame (rotated back to the image frame here, where the
# finite differences are taken). The incompatibility of the measured strain involves no
# model; that of the residual differs from it only by the model strain's, which vanishes
# up to the discretisation (a P1 displacement sampled at the pixel centres).

# %%
with h5py.File(out / "dirichlet" / "fields.h5") as f:
    g = f[particle.name]
    h = g.attrs["pixel_size_nm"]
    maps = {k: g[k][()] for k in g}
used = maps["used"] > 0


def image_frame(prefix):
    """e_xx, e_yy, e_xy of a crystal-frame map (aa, cc, ac): Q e Q^T, Q the frame rotation."""
    e = np.stack([np.stack([maps[prefix + "aa"], maps[prefix + "ac"]], -1),
                  np.stack([maps[prefix + "ac"], maps[prefix + "cc"]], -1)], -2)
    e = rotate_tensor_field(e, particle.rotation_rad)
    return e[..., 0, 0], e[..., 1, 1], e[..., 0, 1]


res = {k: maps[f"residual_M1_{k}"] for k in ("aa", "cc", "ac")}
eta_res = incompatibility(*image_frame("residual_M1_"), used, h)
eta_meas = incompatibility(*image_frame("measured_"), used, h)
both = np.isfinite(eta_res) & np.isfinite(eta_meas)
print(f"RMS incompatibility: measured {np.sqrt(np.mean(eta_meas[both] ** 2)):.4g}, "
      f"residual {np.sqrt(np.mean(eta_res[both] ** 2)):.4g} um^-2")

fig, axes = plt.subplots(1, 4, figsize=(13, 5))
for ax, (title, image, cmap) in zip(axes, [
        ("X", np.where(used, maps["X"], np.nan), "viridis"),
        (r"residual $e_{aa}$ (M1)", res["aa"], "RdBu_r"),
        (r"residual $e_{ac}$ (M1)", res["ac"], "RdBu_r"),
        (r"incompatibility of the residual (µm$^{-2}$)", eta_res, "PuOr")], strict=True):
    finite = image[np.isfinite(image)]
    lim = np.percentile(np.abs(finite), 98) if cmap != "viridis" else None
    im = ax.imshow(image, cmap=cmap, vmin=-lim if lim else None, vmax=lim)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.colorbar(im, ax=ax, shrink=0.6)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The study's figures, as `chemomech invert` writes them
#
# Fig. 2g: the learnt $f_a, f_c$ with 95 % bands (M0 dashed); Fig. 2h: the chemical
# expansion $df/dX$; Fig. 3b: the residual strain map; Fig. 3e: the model errors.

# %%
for bc in ("traction_free", "dirichlet"):
    figures = out / bc / "figures"
    names = ["eigenstrain.png", "chemical_expansion.png", f"residual_{particle.name}.png",
             "model_error.png"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, name in zip(axes, names, strict=True):
        ax.imshow(mpimg.imread(figures / name))
        ax.set_title(f"{bc}: {name}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    plt.show()

# %% [markdown]
# The summaries are plain JSON (stable keys, DESIGN §3):

# %%
print(json.dumps({bc: {"model_errors": s["model_errors"],
                       "residual_incompatibility_rms": s["residual_incompatibility_rms"]}
                  for bc, s in summaries.items()}, indent=1))
