"""Benchmark: a few steps of the 3-D phase field (extruded platelet) with the iterative solver.

A generated 1000 x 600 nm platelet (16.6 nm pixels), 300 nm thick, mean X 0.5, interface
width 120 nm, Vegard law, average stiffness at 0.3 rad, P2 displacement; the element size
sets the number of DOFs.  Solver: SNES Newton on the monolithic (c, mu, u) system with FGMRES
and a multiplicative fieldsplit (MUMPS LU on the (c, mu) block, GAMG with the rigid modes as
near-null space on the u block), `--steps` (default 3) backward-Euler steps after the dt = 0
solve.

Per mesh: DOFs, Newton and FGMRES iterations per step, wall time per step (max over ranks),
setup time (mesh + forms + SNES and fieldsplit construction; the GAMG hierarchy is built in
the first, dt = 0, solve), the peak resident memory of every rank over the whole case
(VmHWM, reset before it) and its resident memory after the set-up, and the machine's load
average (1 min) before and after (2 shared cores).  Rank 0 merges into
bench/results/phasefield_3d.json:

  scripts/in-env mpirun -n 2 python3 bench/phasefield_3d.py [--linear lu] [--steps N] [SIZE_PX ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # BLAS threads on 2 shared cores only contend

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from mpi4py import MPI  # noqa: E402

from chemomech.io.results import versions, write_json_atomic  # noqa: E402
from chemomech.phasefield.config import PhaseFieldConfig  # noqa: E402
from chemomech.phasefield.run import build_model  # noqa: E402
from chemomech.phasefield.solver import PhaseFieldSolver  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "phasefield_3d.json"
STEPS = 3
COMMON = {"dim": 3, "mean_x": 0.5, "seed": 0, "free_energy": {"interface_width_nm": 120.0},
          "elasticity": {"rotation_rad": 0.3},
          "geometry": {"length_nm": 1000.0, "width_nm": 600.0, "thickness_nm": 300.0},
          "steps": {"max_steps": STEPS, "energy_tol": 0.0}}


def run_case(size_px: float, comm: MPI.Comm, linear: str, steps: int) -> dict:
    from phasefield_3d_memory import reset_peak, rss_mb

    reset_peak()
    load = os.getloadavg()[0]
    data = json.loads(json.dumps(COMMON))
    data["steps"]["max_steps"] = steps
    data["geometry"]["mesh_size_px"] = size_px
    data["solver"] = {"linear": linear}
    config = PhaseFieldConfig.model_validate(data)
    t0 = time.perf_counter()
    _, forms, control = build_model(config, comm)
    solver = PhaseFieldSolver(forms, control, linear=linear)
    setup = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    rss_setup = comm.allgather(round(rss_mb("VmRSS:"), 1))
    t1 = time.perf_counter()
    history = solver.run()
    wall = comm.allreduce(time.perf_counter() - t1, op=MPI.MAX)
    s = history.summary()
    dofs = forms.W.dofmap.index_map.size_global * forms.W.dofmap.index_map_bs
    steps = history.steps
    return {"mesh_size_px": size_px, "linear": linear,
            "cells": int(forms.mesh.topology.index_map(3).size_global), "dofs": int(dofs),
            "steps": s["steps"], "rejected": s["rejected"],
            "newton_per_step": s["newton_per_step"], "linear_per_step": s["linear_per_step"],
            "linear_per_newton": s["linear_per_step"] / max(s["newton_per_step"], 1e-300),
            "per_step": [{"dt": r.dt, "newton": r.newton_iterations,
                          "linear": r.linear_iterations, "wall_s": r.wall_s} for r in steps],
            "wall_per_step_s": wall / max(s["steps"] + s["rejected"] + 1, 1),
            "wall_s": wall, "setup_s": setup, "rss_after_setup_mb": rss_setup,
            "peak_rss_mb": comm.allgather(round(rss_mb("VmHWM:"), 1)),
            "load_average_1min": [load, os.getloadavg()[0]]}


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=float, metavar="size_px",
                        help="element sizes in pixels (default: 3 2 1.5 1.2 1)")
    parser.add_argument("--linear", default="fieldsplit", choices=("lu", "fieldsplit"))
    parser.add_argument("--steps", type=int, default=STEPS)
    options = parser.parse_args(args)
    linear, steps = options.linear, options.steps
    comm = MPI.COMM_WORLD
    logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")  # progress lines
    for size in options.sizes or [3.0, 2.0, 1.5, 1.2, 1.0]:
        result = run_case(size, comm, linear, steps)
        if comm.rank == 0:  # merged after every case: a long case does not lose the others
            print(json.dumps({k: v for k, v in result.items() if k != "per_step"}), flush=True)
            data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
            data.setdefault(f"ranks_{comm.size}_{linear}", {})[f"{size:g}px"] = result
            data["versions"] = versions()
            data["notes"] = ("`steps` backward-Euler steps after the dt = 0 solve (counted "
                             "in wall_per_step_s and per_step[0]); linear iterations are "
                             "FGMRES iterations (LU solves for lu); load_average_1min before "
                             "and after the case (2 shared cores)")
            write_json_atomic(RESULTS, data)


if __name__ == "__main__":
    main(sys.argv[1:])
