"""A particle prepared for the inversion: frame checked, with its measured fields.

The measured strain in the image and crystal frames and, for the displacement misfit, the
displacement integrated from the measured gradient (`chemomech.correlative.displacement`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from chemomech.correlative.displacement import (
    GradientIntegrator,
    measured_displacement,
    measured_strain,
)
from chemomech.correlative.frames import crystal_strain, frame_check
from chemomech.exceptions import InputError
from chemomech.io.stack import ParticleData, interior_pixels


@dataclass
class PreparedParticle:
    """A particle with its measured fields on the pixel grid (image frame unless noted)."""

    data: ParticleData
    strain_image: dict[str, np.ndarray]  # e_xx, e_yy, e_xy
    strain_crystal: dict[str, np.ndarray]  # e_aa, e_cc, e_ac
    displacement: np.ndarray | None  # (nx, ny, 2) nm, or None for the strain misfit
    integration_residual: float | None
    #: the factorised integration that made `displacement` (reused by the integrated-noise
    #: covariance); not pickled: a gathered copy has None
    integrator: GradientIntegrator | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return self.__dict__ | {"integrator": None}


def prepare_particle(particle: ParticleData, *, misfit: str = "displacement",
                     check_frame: bool = True, adopt_frame: bool = False) -> PreparedParticle:
    """Frame check (warn, or adopt), then the measured fields; the displacement is
    integrated only for ``misfit="displacement"``; errors name the particle and its file."""
    try:
        return _prepare(particle, misfit, check_frame, adopt_frame)
    except InputError as err:
        if err.path is not None or particle.name in str(err):
            raise
        raise InputError(f"particle {particle.name!r}: {err}", path=particle.file) from None


def _prepare(particle: ParticleData, misfit: str, check_frame: bool, adopt_frame: bool
             ) -> PreparedParticle:
    if check_frame:
        particle = frame_check(particle, adopt=adopt_frame).particle
    displacement, residual, integrator = None, None, None
    if misfit == "displacement":
        integrated = measured_displacement(particle)
        displacement, residual = integrated.u, integrated.relative_residual
        integrator = integrated.integrator
    return PreparedParticle(particle, measured_strain(particle), crystal_strain(particle),
                            displacement, residual, integrator)


def used_pixels(mask: np.ndarray, prepared: PreparedParticle, edge_exclusion_px: int
                ) -> np.ndarray:
    """Pixels entering fits and errors: `edge_exclusion_px` inside `mask`, finite data."""
    finite = np.all([np.isfinite(v) for v in prepared.strain_image.values()], axis=0)
    finite &= np.isfinite(prepared.data.X)
    return interior_pixels(mask, edge_exclusion_px) & finite
