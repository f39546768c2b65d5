"""Settings of the dislocation model M2, defined once: the ``dislocations`` config block.

`DislocationsConfig` is the pydantic model that `chemomech.config.RunConfig` uses as its
``dislocations`` field (unknown keys are errors, every value validated, the message names the
key); `run_m2` reads it from the RunConfig.  `Regularisation` is the numeric state of the slip
regulariser of an `M2Model` (alpha a number, changed by `M2Model.set_alpha`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from chemomech.exceptions import InputError
from chemomech.mechanics.slip import IN_PLANE_SYSTEMS

logger = logging.getLogger(__name__)


RegularisationKind = Literal["h1", "tv"]
AlphaRule = Literal["discrepancy", "lcurve"]
M2_TAO_TYPES = ("blmvm", "bqnls", "cg")
#: Typical slip amplitude and length (nm) that set the scale alpha_0 of the alpha scan.
TYPICAL_SLIP = 0.01
TYPICAL_SLIP_LENGTH_NM = 100.0
UM2_PER_NM2 = 1e6


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegularisationConfig(_Strict):
    """Regularisation of the M2 slip fields."""

    kind: RegularisationKind = Field("h1", description="H1 seminorm or smoothed TV")
    alpha: float | Literal["auto"] = Field("auto", description="weight (dimensionless for h1, "
                                           "1/nm for tv), or chosen by `rule`")
    rule: AlphaRule = Field("discrepancy", description="alpha rule for alpha: auto")
    tv_epsilon_per_nm: float = Field(1e-6, gt=0, description="TV smoothing (1/nm)")

    @field_validator("alpha")
    @classmethod
    def _non_negative(cls, value):
        if value != "auto" and not value >= 0:
            raise ValueError("alpha must be >= 0 or 'auto'")
        return value


class DislocationsConfig(_Strict):
    """Model M2 (chemomech.dislocations.model): slip fields of in-plane systems.

    The M2 misfit is the lattice-distortion misfit (`chemomech.dislocations.lattice`) whatever
    the run's ``misfit`` is; `theta_weight` weights its rotation term (1: the Frobenius norm
    of the distortion residual, 0: lattice strain only).
    """

    slip_systems: list[str] = Field(["D"], min_length=1,
                                    description="labels of chemomech.mechanics.slip systems")
    regularisation: RegularisationConfig = RegularisationConfig()
    theta_weight: float = Field(1.0, ge=0, description="weight of the lattice rotation in the "
                                "M2 misfit, relative to the Frobenius norm of the distortion")
    noise_strain: float | Literal["auto", "m1"] = Field(
        "auto", description="strain noise for the discrepancy rule: estimated from the maps, "
        "the M1 residual, or a number")
    discrepancy_tau: float = Field(1.0, gt=0, description="discrepancy target: tau x noise")
    alpha_decades: tuple[int, int] = Field((2, -3), description="alpha scan alpha_0 10^k")
    tao_type: Literal["blmvm", "bqnls", "cg"] = Field(
        "blmvm", description="method of the M2 fit: TAO blmvm or bqnls (quasi-Newton with the "
        "preconditioned initial Hessian), or cg: preconditioned conjugate gradients with exact "
        "Hessian actions and exact steps (no line search; the h1 objective is quadratic, so "
        "this is Newton's method; regularisation kind h1 only)")
    max_it: int = Field(2000, ge=1, description="most TAO iterations per alpha")
    grtol: float = Field(1e-7, ge=0, description="gradient tolerance relative to J")
    stagnation_rtol: float = Field(
        1e-9, ge=0, lt=1, description="stop a fit as converged by stagnation once J fell by "
        "less than stagnation_rtol x J over the last stagnation_window TAO iterations (0: "
        "never)")
    stagnation_window: int = Field(10, ge=1, description="TAO iterations over which the "
                                   "stagnation test compares J")
    bands: bool = Field(True, description="joint Gauss-Newton covariance of the law over "
                        "(a, gamma), marginalised on a (chemomech.dislocations.bands); "
                        "false: no M2 band is published")

    @field_validator("slip_systems")
    @classmethod
    def _known_systems(cls, value):
        unknown = [s for s in value if s not in IN_PLANE_SYSTEMS]
        if unknown:
            raise ValueError(f"unknown slip systems {unknown}; choose from "
                             f"{sorted(IN_PLANE_SYSTEMS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"slip systems listed twice: {value}")
        return value

    @field_validator("noise_strain")
    @classmethod
    def _positive_noise(cls, value):
        if not isinstance(value, str) and not value > 0:
            raise ValueError("noise_strain must be > 0, 'auto' or 'm1'")
        return value

    @model_validator(mode="after")
    def _cg_needs_h1(self):
        if self.tao_type == "cg" and self.regularisation.kind != "h1":
            raise ValueError("tao_type cg needs regularisation kind h1 (the tv objective is "
                             "not quadratic: use blmvm or bqnls)")
        return self

    @field_validator("alpha_decades")
    @classmethod
    def _descending(cls, value):
        if value[0] < value[1]:
            raise ValueError("alpha_decades must be (largest k, smallest k)")
        return value


@dataclass(frozen=True, slots=True)
class Regularisation:
    """Slip regularisation of a model: kind (h1 | tv), weight alpha (dimensionless for h1, 1/nm
    for tv), TV smoothing eps (1/nm)."""

    kind: RegularisationKind = "h1"
    alpha: float = 1.0
    tv_epsilon_per_nm: float = 1e-6

    def __post_init__(self):
        if self.kind not in ("h1", "tv"):
            raise InputError(f"must be 'h1' or 'tv', got {self.kind!r}",
                             field="regularisation.kind")
        if not self.alpha >= 0:
            raise InputError(f"must be >= 0, got {self.alpha}", field="regularisation.alpha")
        if not self.tv_epsilon_per_nm > 0:
            raise InputError("must be > 0", field="regularisation.tv_epsilon_per_nm")
