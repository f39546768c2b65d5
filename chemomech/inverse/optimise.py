r"""The one PETSc TAO driver of the inverse problems (M1 and M2), and the rank-0 server loop.

`minimise` runs TAO on an objective scaled by :math:`1/J_0` (so that tolerances are relative)
and applies one set of stopping rules for every model:

* a line-search failure after :math:`|\nabla J|` fell by `STALL_GRADIENT_REDUCTION` is J
  changing below rounding and is accepted as converged;
* with ``stagnation_rtol`` > 0 (M2; M1 leaves it 0): J fell by less than
  ``stagnation_rtol``·J over the last ``stagnation_window`` iterations,
  :math:`J_{k-w} - J_k \le \mathrm{rtol}\,|J_k|`, stops TAO as converged by stagnation
  (reason ``CONVERGED_USER``).  The test reads only the accepted J of the iterations, so it is
  a deterministic function of the evaluation history and a replayed checkpoint stops at the
  same iteration;
* hitting ``max_it`` returns the last iterate with ``converged = False`` and a warning;
* any other negative reason raises `SolverError`.

PETSc options with the given prefix (``chemomech_m1_``, ``chemomech_m2_``) override the
defaults, e.g. ``PETSC_OPTIONS=-chemomech_m1_tao_monitor`` (the environment variable: the
`chemomech` command line does not pass PETSc options through).

`serve_on_rank0` runs a driver on world rank 0 while the other ranks serve its collective
evaluations: one TAO, not one per rank, because replicated TAOs may round differently and then
disagree on the number of (collective) evaluations.

`checkpointing(folder)` makes every `minimise` call inside it resumable (``chemomech invert
--resume``): each call keeps an `EvaluationLog` of its evaluations (x, J, dJ/dx) and its
outcome.  A rerun replays the log: TAO is deterministic, so it asks for the same x (to
`REPLAY_RTOL`), gets the recorded J and gradient without a PDE solve, and continues from where
the killed run stopped, to the uninterrupted answer.  A finished call returns its recorded
outcome at once (per alpha of the M2 scan).  The first evaluation is always recomputed and
compared with the record, so a log of a different problem is discarded, not replayed.
Problems with more than `REPLAY_MAX_SIZE` unknowns (M2 slip fields) log only the first
evaluation and the outcome: a killed call restarts, finished calls are skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from mpi4py import MPI
from petsc4py import PETSc

from chemomech.exceptions import SolverError
from chemomech.io.parallel import raise_if_interrupted
from chemomech.io.results import atomic_path

logger = logging.getLogger(__name__)

#: A TAO line-search failure is accepted once |grad J| / |grad J_0| fell below this.
STALL_GRADIENT_REDUCTION = 1e-5
#: Largest number of unknowns (on one rank) whose every evaluation is checkpointed.
REPLAY_MAX_SIZE = 4096
#: Relative agreement of the recomputed first evaluation with the record.
REPLAY_RTOL = 1e-12


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
             label: str = "TAO", log_every: int = 1, stagnation_rtol: float = 0.0,
             stagnation_window: int = 10) -> TaoOutcome:
    """Minimise J(x) with PETSc TAO; `x0` and the gradient are this rank's part of x.

    `objective_gradient(x) -> (J, dJ/dx)` (unscaled, collective over `comm`); `J0` the scale
    (default J(x0)); `hessian_action` the exact H·d for Newton types (nls, ntr); and
    `initial_hessian` a Python context with `mult` (H0) and `apply` (H0^-1) for the LMVM
    types (blmvm, bqnls).  `option_defaults` are set under `prefix` unless the user gave them.
    `stagnation_rtol` > 0 stops once J fell by at most that fraction of J over the last
    `stagnation_window` iterations (converged by stagnation; 0: never).
    """
    if not stagnation_rtol >= 0 or stagnation_window < 1:
        raise ValueError(f"stagnation_rtol >= 0 and stagnation_window >= 1 required, got "
                         f"{stagnation_rtol}, {stagnation_window}")
    x0 = np.asarray(x0, float)
    log = _CHECKPOINTS[-1].log(f"{prefix}{label}", comm, x0.size) if _CHECKPOINTS else None
    if log is not None:
        objective_gradient = log.wrap(objective_gradient)
        done = log.finished(x0, objective_gradient)
        if done is not None:
            return done
    if J0 is None:
        J0 = objective_gradient(x0)[0]
    scale = 1.0 / J0 if J0 > 0 else 1.0
    counters = {"evaluations": 0, "time": 0.0, "g0": None, "error": None, "stagnated": False}
    history: dict[int, float] = {}  # scaled J of each iteration, for the stagnation test

    def tao_objective_gradient(tao, x, g):
        t0 = time.perf_counter()
        try:
            J, dJ = objective_gradient(x.getArray(readonly=True).copy())
        except BaseException as exc:  # PETSc turns it into error 101: re-raised after solve
            counters["error"] = exc
            raise
        g.setArray(scale * np.asarray(dJ, float))
        counters["evaluations"] += 1
        counters["time"] += time.perf_counter() - t0
        return scale * J

    def monitor(tao):
        its, f, gnorm = tao.getSolutionStatus()[:3]
        if counters["g0"] is None:
            counters["g0"] = gnorm
        history[its] = f
        before = history.get(its - stagnation_window)
        if stagnation_rtol > 0 and before is not None and before - f <= stagnation_rtol * abs(f) \
                and tao.getConvergedReason() == PETSc.TAO.ConvergedReason.CONTINUE_ITERATING:
            tao.setConvergedReason(PETSc.TAO.ConvergedReason.CONVERGED_USER)
            counters["stagnated"] = True
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
    try:
        tao.solve()
    except PETSc.Error:
        tao.destroy()
        for obj in objects:
            obj.destroy()
        if counters["error"] is not None:  # the objective's own exception, not PETSc's
            raise counters["error"] from None
        raise_if_interrupted()  # a signal handled inside another callback
        raise
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
    if counters["stagnated"] and reason == PETSc.TAO.ConvergedReason.CONVERGED_USER:
        text += (f" (stagnation: J fell by < {stagnation_rtol:.0e} J over "
                 f"{stagnation_window} iterations: converged)")
    elif reason == PETSc.TAO.ConvergedReason.DIVERGED_LS_FAILURE and \
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
    outcome = TaoOutcome(solution, J, iterations, counters["evaluations"], reason, ratio,
                         converged, text, counters["time"])
    if log is not None:
        log.finish(outcome)
    return outcome


def _same_point(x: np.ndarray, recorded: np.ndarray) -> bool:
    """x equals the recorded point to `REPLAY_RTOL` (max norm): the direct solvers (MUMPS) are
    reproducible only to the last bit, so a rerun's TAO iterates may differ by ~1e-16."""
    return x.shape == recorded.shape and bool(
        np.abs(x - recorded).max(initial=0.0) <= REPLAY_RTOL * np.abs(recorded).max(initial=0.0))


class EvaluationLog:
    """The checkpoint of one `minimise` call on one rank: its evaluations and its outcome.

    A folder with one small npz per evaluation (``eval-00012.npz``: x, J, dJ/dx, each written
    atomically as it is made) and ``outcome.npz`` when the call finished, when only the first
    evaluation is kept (to check the problem on resume).  `wrap` replays it."""

    def __init__(self, path: Path, comm: MPI.Comm, size: int):
        self.path, self.comm = path, comm
        self.every = size <= REPLAY_MAX_SIZE
        self.xs: list[np.ndarray] = []
        self.Js: list[float] = []
        self.gs: list[np.ndarray] = []
        self.outcome: dict | None = None
        self.calls = self.replayed = 0
        while (path / self._name(len(self.xs))).exists():
            with np.load(path / self._name(len(self.xs)), allow_pickle=False) as z:
                self.xs.append(z["x"])
                self.Js.append(float(z["J"]))
                self.gs.append(z["g"])
        if self.xs and (path / "outcome.npz").exists():
            with np.load(path / "outcome.npz", allow_pickle=False) as z:
                self.outcome = {k: z[k][()] for k in z.files}

    @staticmethod
    def _name(i: int) -> str:
        return f"eval-{i:05d}.npz"

    def _all(self, flag: bool) -> bool:
        return bool(self.comm.allreduce(bool(flag), op=MPI.LAND))

    def _save(self) -> None:
        """Write the newest evaluation, or the outcome once there is one."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.outcome is not None:
            with atomic_path(self.path / "outcome.npz") as tmp:
                np.savez(tmp, **{k: np.asarray(v) for k, v in self.outcome.items()})
            for i in range(1, len(self.xs)):  # a finished call needs only its first one
                (self.path / self._name(i)).unlink(missing_ok=True)
            return
        i = len(self.xs) - 1
        with atomic_path(self.path / self._name(i)) as tmp:
            np.savez(tmp, x=self.xs[i], J=self.Js[i], g=self.gs[i])

    def _discard(self, keep: int) -> None:
        """Forget the evaluations from `keep` on (and the outcome), on disk too."""
        for i in range(keep, len(self.xs)):
            (self.path / self._name(i)).unlink(missing_ok=True)
        (self.path / "outcome.npz").unlink(missing_ok=True)
        del self.xs[keep:], self.Js[keep:], self.gs[keep:]
        self.outcome = None

    def wrap(self, objective_gradient: Callable[[np.ndarray], tuple[float, np.ndarray]]
             ) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
        """`objective_gradient` answering recorded evaluations from the log (collective)."""
        def replaying(x):
            i = self.calls
            self.calls += 1
            recorded = i < len(self.xs) and _same_point(x, self.xs[i])
            if self._all(recorded) and i > 0:
                self.replayed += 1
                return self.Js[i], self.gs[i].copy()
            J, g = objective_gradient(x)
            g = np.asarray(g, float)
            if recorded and i == 0:
                scale = max(abs(self.Js[0]), 1e-300)
                same = abs(J - self.Js[0]) <= REPLAY_RTOL * scale and np.allclose(
                    g, self.gs[0], rtol=REPLAY_RTOL, atol=REPLAY_RTOL * np.abs(g).max(
                        initial=0.0))
                if self._all(same):  # the same problem: answer as the killed run did
                    return self.Js[0], self.gs[0].copy()
                if self.comm.rank == 0:
                    logger.warning("checkpoint %s is of another problem: not replayed",
                                   self.path.name)
            self._discard(i)
            if self.every or i == 0:
                self.xs.append(np.array(x, float))
                self.Js.append(float(J))
                self.gs.append(g.copy())
                self._save()
            return J, g
        return replaying

    def finished(self, x0: np.ndarray, objective_gradient) -> TaoOutcome | None:
        """The recorded outcome if this call finished before and its problem is the same:
        `objective_gradient` (the `wrap` ped one) checks the first evaluation (collective)."""
        if not self._all(self.outcome is not None and len(self.xs) > 0
                         and _same_point(x0, self.xs[0])):
            return None
        objective_gradient(x0)  # recomputed and compared; a mismatch discards the outcome
        if self.outcome is None:
            return None
        fields = {k: (np.array(v) if k == "x" else v.item()) for k, v in self.outcome.items()}
        if self.comm.rank == 0:
            logger.info("%s: finished before, outcome taken from the checkpoint", self.path.name)
        return TaoOutcome(**fields)

    def finish(self, outcome: TaoOutcome) -> None:
        """Record the outcome of the call."""
        self.outcome = asdict(outcome)
        self._save()


class Checkpoints:
    """The `EvaluationLog` s of the `minimise` calls of a run, named by the call's label and
    its position among the calls with that label (the order of calls is deterministic)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.counts: dict[str, int] = {}
        self.logs: list[EvaluationLog] = []

    def log(self, label: str, comm: MPI.Comm, size: int) -> EvaluationLog:
        n = self.counts.get(label, 0)
        self.counts[label] = n + 1
        name = "".join(c if c.isalnum() else "_" for c in label)
        suffix = f".rank{comm.rank}" if comm.size > 1 else ""
        log = EvaluationLog(self.folder / f"{name}-{n:03d}{suffix}", comm, size)
        self.logs.append(log)
        return log

    @property
    def replayed(self) -> int:
        """Number of evaluations answered from the checkpoints without a solve (the first
        evaluation of each call is recomputed to check the checkpoint and does not count)."""
        return sum(log.replayed for log in self.logs)


_CHECKPOINTS: list[Checkpoints] = []


@contextmanager
def checkpointing(folder: str | Path | None) -> Iterator[Checkpoints | None]:
    """Make the `minimise` calls in the block resumable from `folder` (None: a no-op)."""
    if folder is None:
        yield None
        return
    store = Checkpoints(folder)
    _CHECKPOINTS.append(store)
    try:
        yield store
    finally:
        _CHECKPOINTS.remove(store)


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
