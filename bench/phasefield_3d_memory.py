"""Profile: peak resident memory and time of each set-up stage of the 3-D phase field.

The platelet of bench/phasefield_3d.py (1000 x 600 x 300 nm, P2 u, fieldsplit), stage by
stage: mesh (gmsh on rank 0 and distribution), forms (spaces, UFL, JIT, initial state),
solver (SNES, Jacobian sparsity, rigid modes, fieldsplit: assembly, MUMPS on (c, mu), GAMG
set-up), the dt = 0 solve and one step.  Per stage and rank: wall time (max over ranks),
peak RSS within the stage (VmHWM, reset through /proc/self/clear_refs before the stage) and
RSS after it.  Rank 0 merges into bench/results/phasefield_3d_memory.json:

  scripts/in-env mpirun -n 2 python3 bench/phasefield_3d_memory.py [SIZE_PX ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from mpi4py import MPI  # noqa: E402

from chemomech.io.results import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "phasefield_3d_memory.json"


def rss_mb(key: str) -> float:
    """A /proc/self/status memory line (VmRSS:, VmHWM:) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024.0
    return 0.0


def reset_peak() -> None:
    """Return freed heap to the OS and reset the peak RSS (VmHWM) to the current RSS."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


class Stages:
    """Wall time and peak / final RSS of consecutive stages, gathered over ranks."""

    def __init__(self, comm: MPI.Comm):
        self.comm, self.rows = comm, []
        self._start()

    def _start(self) -> None:
        self.comm.Barrier()
        reset_peak()
        self.t0 = time.perf_counter()

    def mark(self, name: str) -> None:
        self.comm.Barrier()
        wall = time.perf_counter() - self.t0
        ranks = self.comm.gather((rss_mb("VmHWM:"), rss_mb("VmRSS:")))
        if self.comm.rank == 0:
            self.rows.append({"stage": name, "wall_s": wall,
                              "peak_rss_mb": [round(p, 1) for p, _ in ranks],
                              "rss_after_mb": [round(r, 1) for _, r in ranks]})
            print(json.dumps(self.rows[-1]), flush=True)
        self._start()


def run_case(size_px: float, comm: MPI.Comm, steps: int = 1) -> dict:
    from phasefield_3d import COMMON  # bench/ is on sys.path when run as a script

    from chemomech.phasefield.config import PhaseFieldConfig
    from chemomech.phasefield.geometry import extruded_platelet_mesh, platelet_mask
    from chemomech.phasefield.initial import random_waves, set_initial_composition
    from chemomech.phasefield.model import Elasticity, FreeEnergy, PhaseFieldForms
    from chemomech.phasefield.solver import PhaseFieldSolver, StepControl

    load = os.getloadavg()[0]
    config = PhaseFieldConfig.model_validate(COMMON)
    g = config.geometry
    stages = Stages(comm)
    h = g.pixel_size_nm
    mask = platelet_mask(g.length_nm, g.width_nm, h, exponent=g.exponent,
                         long_axis_rad=g.long_axis_rad)
    pm = extruded_platelet_mesh(mask, h, g.thickness_nm, comm, mesh_size_px=size_px)
    stages.mark("mesh")
    fe = FreeEnergy.for_width(120.0)
    forms = PhaseFieldForms(pm.mesh, fe, Elasticity(rotation_rad=0.3), u_degree=2)
    w = fe.interface_width()
    set_initial_composition(forms, 0.5, random_waves(0, 3.0 * w), 0.05)
    stages.mark("forms")
    control = StepControl(dt_initial=w**2 / 100.0, max_steps=steps, energy_tol=0.0)
    solver = PhaseFieldSolver(forms, control, linear="fieldsplit")
    stages.mark("solver")
    record = solver.initialise()
    stages.mark("dt0_solve")
    history = solver.run()
    stages.mark("steps")
    dofs = forms.W.dofmap.index_map.size_global * forms.W.dofmap.index_map_bs
    A = solver.problem.A
    info = A.getInfo()
    nnz = comm.allreduce(info["nz_used"])
    return {"mesh_size_px": size_px, "dofs": int(dofs), "jacobian_nnz": int(nnz),
            "cells": int(pm.mesh.topology.index_map(3).size_global),
            "dt0": {"newton": record.newton_iterations, "linear": record.linear_iterations},
            "steps": [{"newton": r.newton_iterations, "linear": r.linear_iterations}
                      for r in history.steps[1:]],
            "stages": stages.rows, "load_average_1min": [load, os.getloadavg()[0]]}


def main(args: list[str]) -> None:
    comm = MPI.COMM_WORLD
    for size in [float(a) for a in args] or [3.0]:
        result = run_case(size, comm)
        if comm.rank == 0:
            data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
            data.setdefault(f"ranks_{comm.size}", {})[f"{size:g}px"] = result
            write_json_atomic(RESULTS, data)


if __name__ == "__main__":
    main(sys.argv[1:])
