r"""Geometrically necessary dislocation density of the M2 slip fields:
:math:`\rho = |\nabla\gamma_s\cdot\hat s| / |b|` (um^-2), sampled at the pixel centres."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import ufl
from dolfinx import fem

from chemomech.dislocations.settings import UM2_PER_NM2
from chemomech.mechanics.slip import InPlaneSlipSystem

if TYPE_CHECKING:
    from chemomech.dislocations.model import M2Model

logger = logging.getLogger(__name__)


def density_expression(gamma: fem.Function, system: InPlaneSlipSystem, rotation_rad: float):
    r"""UFL :math:`\rho = 10^6\,|\nabla\gamma\cdot\hat s| / |b|` (um^-2; gamma P1, mesh in nm)."""
    s = ufl.as_vector(system.slip_direction_image(rotation_rad).tolist())
    return UM2_PER_NM2 * abs(ufl.dot(ufl.grad(gamma), s)) / system.burgers_nm


def slip_maps(model: M2Model, particle: int, particle_mesh, shape: tuple[int, int]
              ) -> dict[str, np.ndarray]:
    """Images (group rank 0) of gamma_<s> and density_<s> (um^-2) at the meshed pixels, and
    density_total (sum over systems).  Collective on the particle's communicator."""
    from chemomech.mechanics.fields import PixelSampler, sample_expression

    p = model.particles[particle]
    sampler = PixelSampler(p.Q, particle_mesh.pixel_points_nm())
    idx = particle_mesh.pixel_indices()
    out: dict[str, np.ndarray] = {}
    total = None
    for s, g in zip(model.systems, model.gammas[particle], strict=True):
        gv = sampler.gather(sampler(g))
        rho = sampler.gather(sample_expression(density_expression(g, s, p.rotation_rad),
                                               sampler).reshape(-1, 1))
        if gv is None:
            continue
        for key, values in ((f"gamma_{s.label}", gv[:, 0]), (f"density_{s.label}", rho[:, 0])):
            image = np.full(shape, np.nan)
            image[idx[:, 0], idx[:, 1]] = values
            out[key] = image
        total = out[f"density_{s.label}"] if total is None else total + out[
            f"density_{s.label}"]
    if total is not None:
        out["density_total"] = total
    return out


def mean_density(density_image: np.ndarray, meshed_mask: np.ndarray) -> float:
    """Particle mean of a density map over the meshed pixels (um^-2)."""
    values = density_image[np.asarray(meshed_mask, bool) & np.isfinite(density_image)]
    return float(values.mean()) if values.size else float("nan")
