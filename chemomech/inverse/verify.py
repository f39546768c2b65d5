"""Verification of the adjoint models (hIPPYlib's modelVerify): Taylor remainders and rates."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from chemomech.inverse.problem import M1Model

logger = logging.getLogger(__name__)


def verify_gradient(model: M1Model, coefficients: Sequence[float] | None = None,
                    direction: Sequence[float] | None = None,
                    steps: Sequence[float] = (1e-2, 5e-3, 2.5e-3, 1.25e-3)) -> dict:
    r"""Taylor check of the adjoint gradient (hIPPYlib's modelVerify): remainders
    :math:`|J(a + \epsilon h) - J(a) - \epsilon \nabla J \cdot h|` and their rates (2 expected).

    Defaults: a = 0.01 * (1, ..., 1), h a fixed pseudo-random direction scaled to 0.01.
    Collective over the model's world.
    """
    n = model.num_coefficients
    a = np.full(n, 0.01) if coefficients is None else np.asarray(coefficients, float)
    h = (np.random.default_rng(12345).standard_normal(n) if direction is None
         else np.asarray(direction, float))
    h = 0.01 * h / np.linalg.norm(h) if direction is None else h
    model.reduced_functional(a)
    J0, grad = model.cost_and_gradient(a)
    slope = float(grad @ h)
    residuals = [abs(model.cost_and_gradient(a + eps * h)[0] - J0 - eps * slope)
                 for eps in steps]
    rates = [float(np.log(residuals[k] / residuals[k - 1]) / np.log(steps[k] / steps[k - 1]))
             if residuals[k] > 0 and residuals[k - 1] > 0 else float("nan")
             for k in range(1, len(steps))]
    result = {"J": J0, "slope": slope, "steps": list(steps), "residuals": residuals,
              "rates": rates, "min_rate": float(np.nanmin(rates)) if rates else float("nan")}
    logger.info("gradient check: Taylor remainder rates %s (2 expected)",
                ", ".join(f"{r:.3f}" for r in rates))
    return result
