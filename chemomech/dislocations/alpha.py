"""The regularisation weight of M2: noise level, discrepancy principle and L-curve."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from dolfinx import fem

from chemomech.dislocations.model import M2FitResult, M2Model
from chemomech.dislocations.settings import TYPICAL_SLIP, TYPICAL_SLIP_LENGTH_NM, AlphaRule
from chemomech.exceptions import InputError
from chemomech.io.progress import Progress

logger = logging.getLogger(__name__)


def estimate_strain_noise(particle) -> float:
    r"""Std of white noise on the strain maps from second differences:
    :math:`\hat\sigma = 1.4826\,\mathrm{MAD}(e_{i-1} - 2e_i + e_{i+1}) / \sqrt 6`, median over
    e_xx, e_yy, e_xy, theta and both axes (dimensionless; robust to edges and smooth signal)."""
    estimates = []
    mask = np.asarray(particle.mask, bool)
    for key in ("e_xx", "e_yy", "e_xy", "theta"):
        e = np.where(mask, np.asarray(getattr(particle, key), float), np.nan)
        for axis in (0, 1):
            d = np.diff(e, n=2, axis=axis)
            d = d[np.isfinite(d)]
            if d.size > 10:
                mad = np.median(np.abs(d - np.median(d)))
                estimates.append(1.4826 * mad / np.sqrt(6.0))
    if not estimates:
        raise InputError(f"particle {particle.name!r}: no finite strain to estimate the noise",
                         field="e_xx")
    return float(np.median(estimates))


def noise_misfit(model: M2Model, sigma_strain: float) -> float:
    r"""Expected lattice misfit of pure white noise of std `sigma_strain` on e_aa, e_cc, e_ac
    and theta, summed over particles (`LatticeMisfit.expected_noise_misfit`: exact, the misfit
    takes the maps as they are, no integration)."""
    local = sum(p.misfit.expected_noise_misfit(sigma_strain) for p in model.particles)
    return model._world_sum(local)


@dataclass
class AlphaChoice:
    """The regularisation weight chosen by a rule and the scanned curve (misfit, seminorm)."""

    rule: str
    alpha: float
    target_misfit: float | None
    curve: list[dict[str, float]]
    noise_strain: float | None = None

    def summary(self) -> dict:
        """JSON-ready dictionary."""
        return {"rule": self.rule, "alpha": self.alpha, "target_misfit": self.target_misfit,
                "noise_strain": self.noise_strain, "curve": self.curve}


def alpha_scale(model: M2Model, misfit_m1: float) -> float:
    r"""alpha_0 that balances the M1 misfit with the regulariser of a typical slip field
    (gamma ~ `TYPICAL_SLIP` varying over `TYPICAL_SLIP_LENGTH_NM`) over the particles' area."""
    area = model._world_sum(sum(p.area_nm2 for p in model.particles))
    grad = TYPICAL_SLIP / TYPICAL_SLIP_LENGTH_NM
    size = 0.5 * grad**2 * area if model.reg.kind == "h1" else grad * area
    return max(misfit_m1, 1e-300) / size


def lcurve_corner(misfits: Sequence[float], seminorms: Sequence[float]) -> int:
    """Index of the maximum curvature of the L-curve (log misfit, log seminorm), interior points."""
    x, y = np.log(np.asarray(misfits)), np.log(np.maximum(np.asarray(seminorms), 1e-300))
    n = len(x)
    if n < 3:
        return n - 1
    t = np.arange(n, dtype=float)
    dx, dy = np.gradient(x, t), np.gradient(y, t)
    ddx, ddy = np.gradient(dx, t), np.gradient(dy, t)
    kappa = (dx * ddy - dy * ddx) / np.maximum((dx**2 + dy**2) ** 1.5, 1e-300)
    return int(1 + np.argmax(np.abs(kappa[1:-1])))


def choose_alpha(model: M2Model, rule: AlphaRule = "discrepancy", *,
                 target_misfit: float | None = None, decades: tuple[int, int] = (2, -3),
                 alpha0: float | None = None, tau: float = 1.0, **fit_options
                 ) -> tuple[AlphaChoice, M2FitResult]:
    """Scan alpha = alpha0 * 10^k (k from decades[0] down to decades[1]), warm-started, and
    pick one by `rule`; the model is left fitted at the chosen alpha.  Returns (choice, fit)."""
    if rule == "discrepancy" and target_misfit is None:
        raise InputError("the discrepancy rule needs the noise misfit", field="noise_strain")
    if rule not in ("discrepancy", "lcurve"):
        raise InputError(f"unknown rule {rule!r}", field="regularisation.rule")
    if alpha0 is None:
        zero_slip = [[fem.Function(p.Q) for _ in model.systems] for p in model.particles]
        saved = model.gammas
        model.gammas = zero_slip
        alpha0 = alpha_scale(model, sum(model.misfits().values()))
        model.gammas = saved
    ks = np.arange(decades[0], decades[1] - 1, -1)
    curve, fits, states = [], [], []
    tracker = Progress(len(ks), "alpha scan", rank=model.world.rank, interval_s=0.0, log=logger)
    for k in ks:
        alpha = float(alpha0 * 10.0**k)
        fit = model.fit(alpha=alpha, **fit_options)
        curve.append({"alpha": alpha, "misfit": fit.misfit, "seminorm": fit.seminorm,
                      "iterations": fit.iterations, "time_s": fit.timings_s["fit"],
                      "mean_density_um2": float(np.mean(list(
                          model.mean_densities().values())))})
        fits.append(fit)
        states.append(_snapshot(model))
        tracker.step(info=f"alpha {alpha:.3e}: misfit {fit.misfit:.6g}, seminorm "
                          f"{fit.seminorm:.4g} ({fit.iterations} iterations)")
        if rule == "discrepancy" and fit.misfit < tau * target_misfit:
            break  # smaller alphas only fit the noise
    if rule == "lcurve":
        best = lcurve_corner([c["misfit"] for c in curve], [c["seminorm"] for c in curve])
        _restore(model, states[best])
        return AlphaChoice(rule, curve[best]["alpha"], None, curve), fits[best]
    target = tau * target_misfit
    last = curve[-1]
    if last["misfit"] >= target:  # never reached: model error dominates, use the L-curve
        best = lcurve_corner([c["misfit"] for c in curve], [c["seminorm"] for c in curve])
        logger.warning("discrepancy: the misfit (%.4g at the smallest alpha) never fell to the "
                       "noise level %.4g (model error or correlated noise dominate); using "
                       "the L-curve corner alpha = %.3g", last["misfit"], target,
                       curve[best]["alpha"])
        _restore(model, states[best])
        return AlphaChoice("discrepancy not reached: lcurve", curve[best]["alpha"], target,
                           curve), fits[best]
    if len(curve) == 1:
        logger.warning("discrepancy: already the largest alpha fits below the noise level")
        return AlphaChoice(rule, last["alpha"], target, curve), fits[-1]
    # interpolate log alpha between the bracketing scan points, refit there (warm start)
    hi, lo = curve[-2], curve[-1]
    s = (np.log(hi["misfit"]) - np.log(target)) / (np.log(hi["misfit"]) - np.log(lo["misfit"]))
    alpha = float(np.exp(np.log(hi["alpha"]) + s * (np.log(lo["alpha"]) - np.log(hi["alpha"]))))
    _restore(model, states[-2])
    fit = model.fit(alpha=alpha, **fit_options)
    curve.append({"alpha": alpha, "misfit": fit.misfit, "seminorm": fit.seminorm,
                  "iterations": fit.iterations, "time_s": fit.timings_s["fit"],
                  "mean_density_um2": float(np.mean(list(model.mean_densities().values())))})
    return AlphaChoice(rule, alpha, target, curve), fit


def _snapshot(model: M2Model):
    return (model.coefficients.copy(), [[g.x.array.copy() for g in gs] for gs in model.gammas],
            model.reg.alpha)


def _restore(model: M2Model, state) -> None:
    model.coefficients = state[0].copy()
    model.set_alpha(state[2])
    for gs, arrays in zip(model.gammas, state[1], strict=True):
        for g, arr in zip(gs, arrays, strict=True):
            g.x.array[:] = arr
