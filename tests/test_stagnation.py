"""The stagnation stop of `chemomech.inverse.optimise.minimise` (M2's fits): it triggers on a
flat objective at a J within the tolerance of the unstopped minimum, replays identically from
a checkpoint, is off for M1, validates its config keys, and leaves a small M2 fit's answer
within the tolerance."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI
from petsc4py import PETSc
from pydantic import ValidationError

from chemomech.config import RunConfig
from chemomech.dislocations.run import build_m1_stage, m2_model
from chemomech.inverse.optimise import checkpointing, minimise
from chemomech.io.parallel import Interrupted
from chemomech.pipeline import prepare
from chemomech.synth import ParticleSpec, simulate_particle

#: curvatures 1 .. 1e-8: a valley whose floor J changes far below the gradient tolerance
N_GLOBAL = 40
CURVATURES = np.logspace(0, -8, N_GLOBAL)
UNSTOPPED = dict(gatol=1e-13, max_it=3000, max_evaluations=12000, label="flat TAO")


def _flat(comm):
    """J(x) = 1 + sum_i lambda_i (x_i - 1)^2 (distributed over `comm`) and x0 = 0 (this rank's
    part): its minimum J = 1 at x = 1."""
    parts = np.array_split(np.arange(N_GLOBAL), comm.size)[comm.rank]
    lam = CURVATURES[parts]

    def objective_gradient(x):
        r = x - 1.0
        return 1.0 + comm.allreduce(float(lam @ r**2)), 2.0 * lam * r
    return objective_gradient, np.zeros(parts.size)


@pytest.mark.mpi
@pytest.mark.parametrize("rtol", [1e-6, 1e-9])
def test_stagnation_stops_a_flat_objective_within_its_tolerance(rtol):
    comm = MPI.COMM_WORLD
    f, x0 = _flat(comm)
    plain = minimise(f, x0, comm=comm, **UNSTOPPED)
    stopped = minimise(f, x0, comm=comm, stagnation_rtol=rtol, stagnation_window=10,
                       **UNSTOPPED)
    assert plain.converged and "stagnation" not in plain.text
    assert abs(plain.J - 1.0) <= 1e-12  # the unstopped run reaches the analytic minimum
    assert stopped.converged and stopped.reason == PETSc.TAO.ConvergedReason.CONVERGED_USER
    assert "stagnation" in stopped.text
    assert stopped.iterations < plain.iterations
    assert 0.0 <= (stopped.J - plain.J) / plain.J <= rtol
    # the same stop on every rank (the test reads the collective J only)
    assert comm.allgather(stopped.iterations) == [stopped.iterations] * comm.size


def test_a_stopped_minimisation_resumes_to_the_same_stop(tmp_path):
    """The stop depends on the evaluation history only: a killed run replayed from its
    checkpoint stops at the same iteration with the same x."""
    f, x0 = _flat(MPI.COMM_SELF)
    options = dict(stagnation_rtol=1e-8, **UNSTOPPED)
    plain = minimise(f, x0, **options)
    calls = {"n": 0}

    def killed(x):
        calls["n"] += 1
        if calls["n"] == 40:
            raise Interrupted()
        return f(x)
    with checkpointing(tmp_path), pytest.raises(Interrupted):
        minimise(killed, x0, **options)
    with checkpointing(tmp_path) as store:
        again = minimise(f, x0, **options)
    assert store.replayed == 38
    assert again.iterations == plain.iterations and again.text == plain.text
    assert np.array_equal(again.x, plain.x)


def test_stagnation_rtol_zero_never_stops():
    f, x0 = _flat(MPI.COMM_SELF)
    out = minimise(f, x0, stagnation_rtol=0.0, stagnation_window=1, **UNSTOPPED)
    assert "stagnation" not in out.text and out.reason != PETSc.TAO.ConvergedReason.CONVERGED_USER
    with pytest.raises(ValueError, match="stagnation"):
        minimise(f, x0, stagnation_rtol=-1.0, **UNSTOPPED)


@pytest.mark.parametrize("key, value", [("stagnation_rtol", -1e-9), ("stagnation_rtol", 1.0),
                                        ("stagnation_window", 0)])
def test_stagnation_keys_are_validated(key, value):
    with pytest.raises(ValidationError, match=key):
        RunConfig(data=["unused.h5"], model="M2", dislocations={key: value})
    assert RunConfig(data=["unused.h5"], model="M2").dislocations.stagnation_rtol == 1e-9


def test_a_small_alpha_m2_fit_stops_by_stagnation_at_the_unstopped_cost():
    """The synthetic twin at small alpha (0.1): TAO's long flat tail is cut (measured 447 ->
    155 iterations); the cost is the unstopped one to the tolerance, misfit and seminorm to
    1e-5 relative."""
    spec = ParticleSpec("twin", 0.5, rotation_rad=0.4, length_nm=1200, width_nm=800,
                        pixel_size_nm=25, slip_amplitude=0.01, slip_width_nm=120,
                        noise_strain=5e-4, noise_composition=0.01, seed=3)
    config = RunConfig(data=["unused.h5"], model="M2", legendre_degree=1, edge_exclusion_px=1,
                       dislocations={"regularisation": {"alpha": 0.1}})
    prepared = [prepare(simulate_particle(spec, MPI.COMM_SELF), config)]
    stage = build_m1_stage(prepared, config, MPI.COMM_SELF)
    rtol = config.dislocations.stagnation_rtol
    plain = m2_model(prepared, stage, config).fit(stagnation_rtol=0.0)
    stopped = m2_model(prepared, stage, config).fit(stagnation_rtol=rtol)
    assert "stagnation" in stopped.reason and "stagnation" not in plain.reason
    assert stopped.iterations < plain.iterations / 2
    assert abs(stopped.cost - plain.cost) <= rtol * plain.cost
    assert stopped.misfit == pytest.approx(plain.misfit, rel=1e-5)
    assert stopped.seminorm == pytest.approx(plain.seminorm, rel=1e-5)
