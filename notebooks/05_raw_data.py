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
# # 5. From raw data to a stack file
#
# The inversion needs, on one pixel grid, the 4D-STEM strain maps and the Li fraction $X$.
# $X$ comes from X-ray spectro-ptychography on another microscope, as an *optical density*
# stack $\mathrm{OD}(E_k, q)$ at a few energies $E_k$ around the Fe L3 edge. This notebook
# walks the three steps on synthetic data with a known answer:
#
# 1. **composition**: per pixel, the two-phase Beer–Lambert fit
#    $\mathrm{OD}(E_k) = t_L\,\mu_L(E_k) + t_F\,\mu_F(E_k)$ (L: LiFePO4, F: FePO4)
#    with $t \ge 0$ (non-negative least squares), then $X = t_L / (t_L + t_F)$;
# 2. **registration**: the affine map $u = A q + t$ from 4D-STEM pixels $q$ to X-ray pixels
#    that best explains the strain $e_{aa}$ by $X$ (Vegard: $e_{aa}$ rises with $X$);
# 3. **stack**: $X$ resampled on the 4D-STEM grid and written with the strain maps.

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from chemomech.correlative.composition import (
    DEFAULT_ENERGIES_EV,
    fit_composition,
    model_reference_spectra,
)
from chemomech.correlative.registration import (
    particle_from_correlative,
    pixel_rms_distance,
    register_affine,
    simulate_xray_map,
    synthetic_particle_maps,
)
from chemomech.io.py4dstem import StrainMaps
from chemomech.io.readers import CompositionMap
from chemomech.io.stack import read_stack, write_stack

rng = np.random.default_rng(1)

# %% [markdown]
# ## The ground truth
#
# A particle on the 4D-STEM grid with two-phase domains and $e_{aa} = -0.0495\,(1 - X)$
# plus noise. The X-ray image sees the same particle rotated by 6°, scaled by 3 % and
# shifted: the *true* affine map, which registration must recover.

# %%
X_stem, mask, e_aa = synthetic_particle_maps((100, 70), seed=1)
angle = np.deg2rad(6.0)
A_true = 1.03 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
centre = np.array([50.0, 35.0])
M_true = np.column_stack([A_true, centre + [14.0, 10.0] - A_true @ centre])
X_xray, inside = simulate_xray_map(X_stem, mask, M_true, (130, 100))

# %% [markdown]
# ## An optical-density stack
#
# A 250 nm thick particle on a thin carbon support (OD offset 0.02), the reference
# absorption of the two phases at the study's five energies, and noise of 0.01 OD.

# %%
energies = np.asarray(DEFAULT_ENERGIES_EV)
mu = np.column_stack(model_reference_spectra(energies))  # OD per nm, (energies, 2)
t = np.where(inside, 250.0, 0.0)
t_lfp, t_fp = t * np.nan_to_num(X_xray), t * (1 - np.nan_to_num(X_xray))
od = mu[:, 0, None, None] * t_lfp + mu[:, 1, None, None] * t_fp
od = od + 0.01 * rng.standard_normal(od.shape)
print(f"OD stack {od.shape} at {energies.tolist()} eV, OD range {od.min():.2f}..{od.max():.2f}")

# %% [markdown]
# ## Step 1: composition
#
# `fit_composition` solves the two-component NNLS in closed form for every pixel (the
# four active sets), thresholds the thickness (Otsu) for the mask and keeps its largest
# connected part.

# %%
comp = fit_composition(od, mu)
error = np.nanmax(np.abs(comp.X - X_xray)[comp.mask & inside])
print(f"mask {comp.mask.sum()} px (true {inside.sum()}), max |X - X_true| = {error:.3f}")

# %% [markdown]
# ## Step 2: registration
#
# `register_affine` finds the map from the 4D-STEM grid to the X-ray grid, coarse to fine
# from 15 starts. Its default metric matches the particle's *outline*: the 4D-STEM mask,
# blurred to the X-ray resolution, against the X-ray thickness, independent of the
# composition–strain law we want to learn. An ellipse's outline cannot fix an affine map
# (it maps onto itself under a family of them); the `auto` metric detects that and adds
# the correlation of $e_{aa}$ with $X$ (`joint`). The error is the RMS distance, over the
# particle, between the pixels the true and the found maps send to.

# %%
result = register_affine(e_aa, mask, comp.X, comp.mask, thickness=comp.thickness)
rms_px = pixel_rms_distance(result.matrix, M_true, mask)
print(f"Pearson r {result.score:.3f}, {result.iterations} iterations, "
      f"RMS error {rms_px:.3f} px")
assert rms_px < 0.5

# %% [markdown]
# ## Step 3: the stack file
#
# `particle_from_correlative` resamples $X$ onto the 4D-STEM grid with the found map and
# pairs it with the strain maps (crystal frame, here $e_{cc} = 0.0205 (1 - X)$, no
# shear), and `write_stack` writes the HDF5 stack every later step reads (DESIGN §3).

# %%
strain = StrainMaps(e_aa, 0.0205 * (1 - X_stem), 0 * X_stem, 0 * X_stem, mask)
particle = particle_from_correlative("P1", strain, CompositionMap(comp.X, comp.mask), result,
                                     pixel_size_nm=16.6)
folder = Path(tempfile.mkdtemp())
write_stack(folder / "p1.h5", particle)
(back,) = read_stack(folder / "p1.h5")
print(back.name, back.X.shape, f"h = {back.pixel_size_nm} nm, {back.mask.sum()} px; "
      f"max |X - X_true| on the 4D-STEM grid: {np.nanmax(np.abs(back.X - X_stem)[back.mask]):.3f}")

# %%
fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
for ax, (title, image) in zip(axes, [("OD at 706.8 eV (X-ray grid)", od[2]),
                                     ("X from NNLS (X-ray grid)", comp.X),
                                     (r"$e_{aa}$ (4D-STEM grid)", e_aa),
                                     ("registered X (4D-STEM grid)", back.X)], strict=True):
    im = ax.imshow(image)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.colorbar(im, ax=ax, shrink=0.7)
fig.tight_layout()
plt.show()
