r"""The one PETSc TAO driver of the inverse problems (M1 and M2), and the rank-0 server loop.

`minimise` runs TAO on an objective scaled by :math:`1/J_0` (so that tolerances are relative)
and applies one set of stopping rules for every model:

* a line-search failure after :math:`|\nabla J|` fell by `STALL_GRADIENT_REDUCTION` is J
  changing below rounding and is accepted as converged;
* hitting ``max_it`` returns the last iterate with ``converged = False`` and a warning;
* any other negative reason raises `SolverError`.

PETSc options with the given prefix (``chemomech_m1_``, ``chemomech_m2_``) override the
defaults, e.g. ``-chemomech_m1_tao_monitor``.

`serve_on_rank0` runs a driver on world rank 0 while the other ranks serve its collective
evaluations: one TAO, not one per rank, because replicated TAOs may round differently and then
disagree on the number of (collective) evaluations.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI
from petsc4py import PETSc

from chemomech.exceptions import SolverError

logger = logging.getLogger(__name__)

#: A TAO line-search failure is accepted once |grad J| / |grad J_0| fell below this.
STALL_GRADIENT_REDUCTION = 1e-5


@dataclass
class TaoOutcome:
    """Result of `minimise`: solution (local part), J (unscaled), iterations, evaluations."""

    x: np.ndarray
    J: float
    iterations: int
    evaluations: int
    reason: int
    gradient_reduction: float
    converged: bool
    text: str
    evaluation_time_s: float


class ShellMatrix:
    """PETSc Python-matrix context y = scale * action(x) (a Hessian action)."""

    def __init__(self, action: Callable[[np.ndarray], np.ndarray], scale: float):
        self.action, self.scale = action, scale

    def mult(self, mat, x, y):
        y.setArray(self.scale * self.action(x.getArray(readonly=True).copy()))


def minimise(objective_gradient: Callable[[np.ndarray], tuple[float, np.ndarray]],
             x0: np.ndarray, *, comm: MPI.Comm = MPI.COMM_SELF, tao_type: str = "blmvm",
             prefix: str = "chemomech_", J0: float | None = None, gatol: float = 0.0,
             grtol: float = 0.0, gttol: float = 0.0, max_it: int = 500,
             max_evaluations: int | None = None,
             bounds: tuple[np.ndarray, np.ndarray] | None = None,
             hessian_action: Callable[[np.ndarray], np.ndarray] | None = None,
             initial_hessian=None, option_defaults: Mapping[str, object] | None = None,
             label: str = "TAO", log_every: int = 1) -> TaoOutcome:
    """Minimise J(x) with PETSc TAO; `x0` and the gradient are this rank's part of x.

    `objective_gradient(x) -> (J, dJ/dx)` (unscaled, collective over `comm`); `J0` the scale
    (default J(x0)); `hessian_action` the exact H·d for Newton types (nls, ntr); and
    `initial_hessian` a Python context with `mult` (H0) and `apply` (H0^-1) for the LMVM
    types (blmvm, bqnls).  `option_defaults` are set under `prefix` unless the user gave them.
    """
    x0 = np.asarray(x0, float)
    if J0 is None:
        J0 = objective_gradient(x0)[0]
    scale = 1.0 / J0 if J0 > 0 else 1.0
    counters = {"evaluations": 0, "time": 0.0, "g0": None}

    def tao_objective_gradient(tao, x, g):
        t0 = time.perf_counter()
        J, dJ = objective_gradient(x.getArray(readonly=True).copy())
        g.setArray(scale * np.asarray(dJ, float))
        counters["evaluations"] += 1
        counters["time"] += time.perf_counter() - t0
        return scale * J

    def monitor(tao):
        its, f, gnorm = tao.getSolutionStatus()[:3]
        if counters["g0"] is None:
            counters["g0"] = gnorm
        if comm.rank == 0 and (its % log_every == 0 or its < 5):
            logger.info("%s %4d  J = %.10e  |grad J| = %.3e", label, its, f / scale,
                        gnorm / scale)

    pcomm = PETSc.Comm(comm)
    tao = PETSc.TAO().create(pcomm)
    tao.setType(tao_type)
    tao.setOptionsPrefix(prefix)
    x = PETSc.Vec().createMPI((x0.size, PETSc.DECIDE), comm=pcomm)
    x.setArray(x0)
    g = x.duplicate()
    tao.setObjectiveGradient(tao_objective_gradient, g)
    tao.setSolution(x)
    objects = [x, g]
    sizes = ((x0.size, PETSc.DECIDE), (x0.size, PETSc.DECIDE))
    if hessian_action is not None:
        H = PETSc.Mat().createPython(sizes, ShellMatrix(hessian_action, scale), comm=pcomm)
        H.setUp()
        tao.setHessian(lambda tao, x, H, P: None, H)
        tao.getKSP().setType("cg")
        tao.getKSP().getPC().setType("none")
        objects.append(H)
    if initial_hessian is not None:
        H0 = PETSc.Mat().createPython(sizes, initial_hessian, comm=pcomm)
        H0.setUp()
        if tao_type == "blmvm":
            tao.setLMVMH0(H0)
            h0_ksp = tao.getLMVMH0KSP()
        else:  # bqnls: the quasi-Newton matrix of the BNK solver
            lmvm = tao.getLMVMMat()
            lmvm.setLMVMJ0(H0)
            h0_ksp = lmvm.getLMVMJ0KSP()
        h0_ksp.setType("preonly")
        h0_ksp.getPC().setType("python")
        h0_ksp.getPC().setPythonContext(initial_hessian)
        objects.append(H0)
    tao.setTolerances(gatol=gatol, grtol=grtol, gttol=gttol)
    tao.setMaximumIterations(max_it)
    if max_evaluations is not None:
        tao.setMaximumFunctionEvaluations(max_evaluations)
    tao.setMonitor(monitor)
    if bounds is not None:
        lower, upper = x.duplicate(), x.duplicate()
        lower.setArray(np.asarray(bounds[0], float))
        upper.setArray(np.asarray(bounds[1], float))
        tao.setVariableBounds(lower, upper)
        objects += [lower, upper]
    options = PETSc.Options()
    defaults = {f"{prefix}{k}": v for k, v in (option_defaults or {}).items()
                if not options.hasName(f"{prefix}{k}")}
    for key, value in defaults.items():
        options[key] = value
    try:
        tao.setFromOptions()
    finally:
        for key in defaults:
            options.delValue(key)
    tao.solve()
    reason = tao.getConvergedReason()
    solution = tao.getSolution().getArray().copy()
    J = tao.getObjectiveValue() / scale
    g_norm = tao.getSolutionStatus()[2]
    iterations = tao.getIterationNumber()
    tao.destroy()
    for obj in objects:
        obj.destroy()
    g0 = counters["g0"]
    ratio = g_norm / g0 if g0 else 0.0
    text = f"TAO {tao_type} reason {reason}, |g|/|g0| = {ratio:.1e}"
    converged = reason > 0
    if reason == PETSc.TAO.ConvergedReason.DIVERGED_LS_FAILURE and \
            ratio <= STALL_GRADIENT_REDUCTION:
        # the line search works on J, whose changes fell below rounding: converged as far as
        # an objective-based method can tell
        text += " (line search at rounding level: accepted)"
        converged = True
    elif reason == PETSc.TAO.ConvergedReason.DIVERGED_MAXITS:
        logger.warning("%s stopped at max_it = %d (|g|/|g0| = %.1e)", label, max_it, ratio)
    elif reason < 0:
        raise SolverError(f"{label} {tao_type} did not converge: reason {reason} after "
                          f"{iterations} iterations (J = {J:.6g}, |g|/|g0| = {ratio:.1e})")
    if comm.rank == 0:
        logger.info("%s %s: reason %d, %d iterations, %d evaluations (%.3f s)", label,
                    tao_type, reason, iterations, counters["evaluations"], counters["time"])
    return TaoOutcome(solution, J, iterations, counters["evaluations"], reason, ratio,
                      converged, text, counters["time"])


def serve_on_rank0(world: MPI.Comm, commands: Mapping[str, Callable], driver: Callable):
    """Run ``driver(proxies)`` on world rank 0 while the other ranks serve its calls.

    `commands` maps a name to a collective function of one argument; rank 0's driver gets
    proxies with the same names that broadcast the call first.  The driver's result (or its
    exception, re-raised as `SolverError`) is returned on every rank.
    """
    if world.rank != 0:
        while True:
            command, argument = world.bcast(None, root=0)
            if command == "done":
                break
            commands[command](argument)
        if isinstance(argument, str):
            raise SolverError(argument)
        return argument

    def proxy(name):
        def call(argument):
            world.bcast((name, argument), root=0)
            return commands[name](argument)
        return call

    try:
        result = driver({name: proxy(name) for name in commands})
    except Exception as exc:
        world.bcast(("done", f"{type(exc).__name__}: {exc}"), root=0)
        raise
    world.bcast(("done", result), root=0)
    return result
