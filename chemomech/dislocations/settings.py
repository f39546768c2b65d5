"""Settings of the dislocation model M2: the slip regularisation and the `dislocations` block."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from chemomech.exceptions import InputError
from chemomech.mechanics.slip import slip_system

logger = logging.getLogger(__name__)


RegularisationKind = Literal["h1", "tv"]
AlphaRule = Literal["discrepancy", "lcurve"]
M2_TAO_TYPES = ("blmvm", "bqnls")
#: Typical slip amplitude and length (nm) that set the scale alpha_0 of the alpha scan.
TYPICAL_SLIP = 0.01
TYPICAL_SLIP_LENGTH_NM = 100.0
UM2_PER_NM2 = 1e6


@dataclass(frozen=True, slots=True)
class Regularisation:
    """Slip regularisation: kind (h1 | tv), weight alpha (units of the misfit), TV smoothing eps
    (1/nm)."""

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


@dataclass(frozen=True, slots=True)
class M2Settings:
    """What `run_m2` reads from the config's ``dislocations`` block (defaults documented here).

    `slip_systems`: labels of `chemomech.mechanics.slip.IN_PLANE_SYSTEMS` (default [D]);
    `kind`: h1 | tv;
    `alpha`: a number or "auto"; `rule`: discrepancy | lcurve (for auto); `noise_strain`:
    strain-noise std, "auto" (estimated from the maps) or "m1" (the M1 residual);
    `discrepancy_tau`: tau of the discrepancy rule; `alpha_decades`: the scan covers
    alpha_0 * 10^k, k = alpha_decades[0] .. alpha_decades[1] (descending); `noise_draws`:
    Monte Carlo draws for the displacement misfit's noise level; `tao_type`, `max_it`,
    `grtol`: the TAO settings of M2.
    """

    slip_systems: tuple[str, ...] = ("D",)
    kind: RegularisationKind = "h1"
    alpha: float | Literal["auto"] = "auto"
    rule: AlphaRule = "discrepancy"
    noise_strain: float | Literal["auto", "m1"] = "auto"
    discrepancy_tau: float = 1.0
    alpha_decades: tuple[int, int] = (2, -3)
    tv_epsilon_per_nm: float = 1e-6
    noise_draws: int = 4
    tao_type: str = "blmvm"
    max_it: int = 2000
    grtol: float = 1e-7

    @classmethod
    def from_config(cls, config) -> M2Settings:
        """From ``config.dislocations`` (a mapping or an object with these attributes; absent
        keys take the defaults); ``regularisation: {kind, alpha, rule, ...}`` may be nested."""
        block = getattr(config, "dislocations", None) if config is not None else None
        if block is None:
            return cls()
        raw = dict(block) if isinstance(block, Mapping) else (
            block.model_dump() if hasattr(block, "model_dump") else dict(vars(block)))
        nested = raw.pop("regularisation", None) or {}
        if not isinstance(nested, Mapping):
            nested = nested.model_dump() if hasattr(nested, "model_dump") else vars(nested)
        raw |= dict(nested)
        unknown = set(raw) - set(cls.__slots__)
        if unknown:
            raise InputError(f"unknown key(s) {sorted(unknown)}", field="dislocations")
        if "slip_systems" in raw:
            raw["slip_systems"] = tuple(raw["slip_systems"])
        if "alpha_decades" in raw:
            raw["alpha_decades"] = tuple(raw["alpha_decades"])
        settings = cls(**raw)
        for label in settings.slip_systems:
            slip_system(label)
        if settings.rule not in ("discrepancy", "lcurve"):
            raise InputError(f"must be 'discrepancy' or 'lcurve', got {settings.rule!r}",
                             field="regularisation.rule")
        if settings.tao_type not in M2_TAO_TYPES:
            raise InputError(f"must be one of {M2_TAO_TYPES}", field="dislocations.tao_type")
        return settings
