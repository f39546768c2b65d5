"""`chemomech xrd config.yaml`: validated configuration and the analysis driver.

Pipeline per sample: read pattern -> windows, background, overlap check -> restricted moments
(instrument from the standard) -> Lambda*rho per reflection -> NNLS over slip systems with
bootstrap -> summary.json, table1.md, figures/.  Paths in the YAML are relative to the YAML
file.  Every key and default is documented on the fields below; unknown keys are errors.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chemomech.exceptions import ConfigError, InputError
from chemomech.io.results import versions, write_json_atomic, write_text_atomic
from chemomech.mechanics.materials import LATTICE_ANGSTROM, voigt_stiffness
from chemomech.mechanics.slip import slip_systems
from chemomech.xrd.contrast import average_contrast_factors
from chemomech.xrd.fit import (
    best_combinations,
    effective_density,
    fit_densities,
    reduced_broadening,
)
from chemomech.xrd.patterns import read_pattern
from chemomech.xrd.peaks import extract_peaks, fit_instrument, hkl_label
from chemomech.xrd.plots import density_table, plot_effective_density, plot_variance_fits
from chemomech.xrd.slip import design_matrix
from chemomech.xrd.variance import analyse_peak

logger = logging.getLogger(__name__)

Phase = Literal["LiFePO4", "FePO4"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SampleConfig(_Strict):
    """One powder pattern."""

    name: str                                   # label in tables and figures
    pattern: Path                               # .xy / .xye / .dat / .csv
    phase: Phase = "LiFePO4"                    # stiffness + lattice (mechanics.materials)
    x_column: str | None = None                 # CSV column names (default: 1st, 2nd, 3rd)
    y_column: str | None = None
    esd_column: str | None = None


class InstrumentConfig(_Strict):
    """Line-profile standard measured on the same instrument (required)."""

    standard: Path                              # pattern of the standard (e.g. LaB6)
    lattice_angstrom: float = 4.156826          # cubic a of the standard (NIST SRM 660c LaB6)
    space_group: str = "Pm-3m"
    window: float = Field(0.08, gt=0)           # half-width of the standard windows (1/nm)


class CombinationConfig(_Strict):
    """Exhaustive search over small subsets of systems (ranked by data explained)."""

    max_systems: int = Field(3, ge=1, le=6)
    top: int = Field(5, ge=1)


class XrdConfig(_Strict):
    """The `chemomech xrd` configuration."""

    samples: list[SampleConfig] = Field(min_length=1)
    instrument: InstrumentConfig
    reflections: list[tuple[int, int, int]] = Field(min_length=1)
    axis: Literal["2theta", "d", "q"] = "2theta"
    wavelength_angstrom: float | None = None    # required for a 2theta axis
    systems: Literal["all"] | list[str] = "all"  # Table 1 labels A-O
    space_group: str | None = "Pnma"            # overlap check; None: analysed list only
    window: float = Field(0.6, gt=0)            # peak window half-width in s = 1/d (1/nm)
    fit_range: tuple[float, float] = (0.15, 0.55)   # q range of the M2 fit (1/nm)
    method: Literal["asymptotic", "wilkens"] = "wilkens"
    background_term: bool = True                # q^3 term of a residual background
    second_order: bool = False                  # ln^2(q)/q^2 term (asymptotic method)
    on_overlap: Literal["error", "skip"] = "error"
    point_group: str = "mmm"                    # variants averaged in the contrast factors
    bootstrap: int = Field(500, ge=0)
    combinations: CombinationConfig = CombinationConfig()
    reference_burgers_nm: float | None = None   # b_ref of rho*; default |[001]| = c
    seed: int = 0

    @field_validator("fit_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] < v[1]:
            raise ValueError("fit_range must be (q_lo, q_hi) with 0 < q_lo < q_hi")
        return v


def load_config(path: str | Path) -> XrdConfig:
    """Read and validate the YAML; relative paths are resolved against its folder."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if isinstance(raw, dict) and raw.get("instrument") is None:
        raise InputError("no instrument profile: give instrument.standard, the pattern of a "
                         "line-profile standard (LaB6) measured on the same instrument",
                         path=str(path), field="instrument")
    try:
        cfg = XrdConfig.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(f"{path}: invalid xrd configuration:\n{err}") from err
    base = path.resolve().parent
    for s in cfg.samples:
        s.pattern = s.pattern if s.pattern.is_absolute() else base / s.pattern
    std = cfg.instrument.standard
    cfg.instrument.standard = std if std.is_absolute() else base / std
    if cfg.axis == "2theta" and cfg.wavelength_angstrom is None:
        raise ConfigError(f"{path}: axis 2theta needs wavelength_angstrom")
    return cfg


def _lattice(phase: str) -> tuple[float, ...]:
    """(a, b, c, 90, 90, 90) of an orthorhombic phase in chemomech.mechanics.materials."""
    return (*LATTICE_ANGSTROM[phase], 90.0, 90.0, 90.0)


def run_xrd(config_path: str | Path, output_dir: str | Path) -> Path:
    """Run the line-profile analysis of a config; write summary.json, table1.md, figures/."""
    t0 = time.perf_counter()
    cfg = load_config(config_path)
    out = Path(output_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    systems = slip_systems(cfg.systems)
    labels = [s.label for s in systems]
    hkls = [tuple(h) for h in cfg.reflections]
    if len(hkls) < len(systems):
        raise InputError(f"{len(hkls)} reflections cannot determine {len(systems)} slip-system "
                         "densities", path=str(config_path), field="reflections")
    standard = read_pattern(cfg.instrument.standard, axis=cfg.axis,
                            wavelength_angstrom=cfg.wavelength_angstrom)
    a_std = cfg.instrument.lattice_angstrom
    instrument = fit_instrument(standard, (a_std, a_std, a_std, 90.0, 90.0, 90.0),
                                cfg.instrument.space_group, cfg.instrument.window)
    summary: dict = {"method": cfg.method, "reflections": [list(h) for h in hkls],
                     "systems": {s.label: s.notation() for s in systems},
                     "instrument": {"U": instrument.U, "V": instrument.V, "W": instrument.W,
                                    "eta0": instrument.eta0, "eta1": instrument.eta1},
                     "samples": {}}
    fits, series = {}, {}
    for sample in cfg.samples:
        lattice = _lattice(sample.phase)
        C = voigt_stiffness(sample.phase)
        pattern = read_pattern(sample.pattern, axis=cfg.axis,
                               wavelength_angstrom=cfg.wavelength_angstrom,
                               x_column=sample.x_column, y_column=sample.y_column,
                               esd_column=sample.esd_column)
        peaks = extract_peaks(pattern, lattice, hkls, window=cfg.window,
                              space_group=cfg.space_group, on_overlap=cfg.on_overlap)
        results = [analyse_peak(p, instrument, cfg.fit_range, method=cfg.method,
                                background_term=cfg.background_term,
                                second_order=cfg.second_order, seed=cfg.seed)
                   for p in peaks.peaks]
        used = [r.hkl for r in results]
        if len(used) < len(systems):
            raise InputError(f"sample {sample.name}: only {len(used)} usable reflections for "
                             f"{len(systems)} systems (overlapping: {sorted(peaks.overlaps)})",
                             path=str(sample.pattern), field="reflections")
        s = np.array([r.s for r in results])
        y = reduced_broadening([r.lambda_rho for r in results], s)
        y_sigma = reduced_broadening([r.lambda_rho_sigma for r in results], s)
        A = design_matrix(C, lattice, systems, used, cfg.point_group)
        fit = fit_densities(A, y, y_sigma, labels, n_bootstrap=cfg.bootstrap, seed=cfg.seed)
        b_ref = cfg.reference_burgers_nm or 0.1 * lattice[2]
        fits[sample.name] = fit
        series[sample.name] = {"labels": [hkl_label(h) for h in used],
                               "rho": effective_density(y, b_ref),
                               "sigma": effective_density(y_sigma, b_ref),
                               "fit": effective_density(fit.y_fit, b_ref)}
        cbar = {}
        for sys in systems:
            values = average_contrast_factors(C, lattice, sys.burgers, sys.line, used,
                                              cfg.point_group)
            cbar[sys.label] = {hkl_label(h): float(v) for h, v in zip(used, values, strict=True)}
        plot_variance_fits(results, out / "figures" / f"variance_{sample.name}.png")
        summary["samples"][sample.name] = {
            "phase": sample.phase, "pattern": str(sample.pattern),
            "reflections": [r.summary() | {"y": float(yv), "effective_density_per_um2":
                                           float(rv)}
                            for r, yv, rv in zip(results, y, series[sample.name]["rho"],
                                                 strict=True)],
            "overlapping_left_out": peaks.overlaps,
            "reference_burgers_nm": b_ref,
            "fit": fit.summary(),
            "best_combinations": best_combinations(A, y, y_sigma, labels,
                                                   cfg.combinations.max_systems,
                                                   cfg.combinations.top),
            "contrast_factors": cbar}
    plot_effective_density(series, out / "figures" / "effective_density.png")
    write_text_atomic(out / "table1.md",
                       density_table(fits, systems, _lattice(cfg.samples[0].phase)))
    write_text_atomic(out / "config.yaml", Path(config_path).read_text())
    summary["timings_s"] = {"total": time.perf_counter() - t0}
    summary["versions"] = versions()
    path = write_json_atomic(out / "summary.json", summary)
    logger.info("xrd summary written to %s", path)
    return path


