"""Benchmark: coverage of the Dirichlet M1 bands (integrated noise through the boundary data).

Twins from chemomech's own traction-free forward model (a known quadratic law, strain noise
1e-3, clean X; self-consistency only), inverted with ``boundary_condition: dirichlet`` (the
integrated noisy displacement on the boundary, gauge f(1) = 0) at N = 2.  For every twin the
95 % pointwise band of f - f(1) from `integrated_noise_covariance` (with the boundary
response) is compared with the truth on X in [0, 0.9] (at X = 1 both are 0 by the gauge).

Run: scripts/in-env python3 bench/study_bands.py [n_twins]  ->  bench/results/study_bands.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

from chemomech.correlative.displacement import measured_displacement
from chemomech.inverse.particle import particle_setup
from chemomech.inverse.problem import M1Model
from chemomech.inverse.uncertainty import (
    eigenstrain_band,
    integrated_noise_covariance,
    strain_noise_sampler,
)
from chemomech.io.results import versions, write_json_atomic
from chemomech.mechanics import legendre
from chemomech.mechanics.mesh import mesh_from_mask
from chemomech.synth import ParticleSpec, simulate_particle, vegard_coefficients

RESULTS = Path(__file__).resolve().parent / "results" / "study_bands.json"
TRUE_A, TRUE_C = vegard_coefficients(quadratic_a=0.004, quadratic_c=-0.002)
X = np.linspace(0.0, 0.9, 10)


def one_twin(seed: int) -> dict:
    spec = ParticleSpec(f"t{seed}", 0.5, rotation_rad=0.3, length_nm=900, width_nm=550,
                        noise_strain=1e-3, noise_composition=0.0, seed=seed,
                        coefficients_a=tuple(TRUE_A), coefficients_c=tuple(TRUE_C))
    p = simulate_particle(spec)
    pm = mesh_from_mask(p.mask, p.pixel_size_nm, MPI.COMM_SELF)
    setup = particle_setup(p.name, pm, p.X, p.rotation_rad,
                           displacement=measured_displacement(p).u,
                           boundary_condition="dirichlet")
    model = M1Model([setup], degree=2, comm=MPI.COMM_SELF)
    fit = model.fit("linear")
    out = {}
    for label, response in (("with_boundary_noise", model.boundary_response(0)),
                            ("interior_noise_only", None)):
        sampler = strain_noise_sampler(p, pm.pixel_indices(), setup.misfit, response)
        cov, _ = integrated_noise_covariance(model, fit, {p.name: sampler}, n_draws=100)
        band = eigenstrain_band(fit.coefficients, cov, X)
        covered = []
        for d, true in (("a", TRUE_A), ("c", TRUE_C)):
            truth = legendre.evaluate(true, X) - legendre.evaluate(true, 1.0)
            covered.append((band[f"{d}_lo"] <= truth) & (truth <= band[f"{d}_hi"]))
        out[label] = float(np.mean(covered))
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    rows = [one_twin(seed) for seed in range(100, 100 + n)]
    result = {"what": __doc__.splitlines()[0], "twins": n, "degree": 2, "noise_strain": 1e-3,
              "coverage_mean": {k: float(np.mean([r[k] for r in rows])) for k in rows[0]},
              "per_twin": rows, "versions": versions()}
    write_json_atomic(RESULTS, result)
    print(result["coverage_mean"])


if __name__ == "__main__":
    main()
