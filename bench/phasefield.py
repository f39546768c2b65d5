"""Benchmark: 2-D phase-field relaxation to equilibrium (steps, iterations, time per step vs DOFs).

Cases at mean X = 0.5, interface width 120 nm (the study's 123 nm), Vegard law, average
stiffness rotated by 0.3 rad, seed 0: two generated platelets (600 x 350 nm, 1200 x 700 nm,
16.6 nm pixels) and the real particle's mask (LFP50_P2, ~15 000 pixels of 16.6 nm, from
../shared/data), each meshed at 1 pixel.  Solver: SNES Newton on the monolithic (c, mu, u)
system, MUMPS LU, adaptive backward Euler, stop when the energy decrease per step is below
1e-8 of area x barrier for 3 steps.

Per case: DOFs, steps (accepted / rejected, by reason), Newton and linear iterations per
step, wall time per step and in total (max over ranks), whether the stop criterion was met,
and the machine's load average (1 min) before and after (the machine is shared).  Rank 0
merges the run into bench/results/phasefield_2d.json by rank count and linear solver:

  scripts/in-env python3 bench/phasefield.py
  scripts/in-env mpirun -n 2 python3 bench/phasefield.py [--linear lu|fieldsplit]
      [--budget-s S] [--coarse-mesh-px P] [--max-dc D] [case ...]

``--budget-s``: stop a case after S s of stepping and record it as unfinished (converged
false), with its per-step series (t, dt, Newton iterations, wall time).
``--coarse-mesh-px``: coarse-to-fine (``steps.coarse_mesh_size_px``: relax on a P px mesh
first; the coarse stage's steps, iterations and wall time go under ``coarse_stage``, its
wall time is included in ``wall_s``); ``--max-dc``: ``steps.max_dc``.  Each variant is a
separate key (``ranks_2_lu_coarse_3px_max_dc_0.2``); ``domains_rich_poor`` counts the
connected X > 0.5 and X <= 0.5 regions of the final pixel map.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # BLAS threads on 2 shared cores only contend

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from mpi4py import MPI  # noqa: E402
from scipy import ndimage  # noqa: E402

from chemomech.io.results import versions, write_json_atomic  # noqa: E402
from chemomech.phasefield.config import PhaseFieldConfig  # noqa: E402
from chemomech.phasefield.outputs import sample_state  # noqa: E402
from chemomech.phasefield.run import build_model, relax_on_coarse_mesh  # noqa: E402
from chemomech.phasefield.solver import PhaseFieldSolver  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "phasefield_2d.json"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "LFP50_P2.mat"
COMMON = {"mean_x": 0.5, "seed": 0, "free_energy": {"interface_width_nm": 120.0},
          "elasticity": {"rotation_rad": 0.3}, "steps": {"energy_tol": 1e-8}}
CASES = {
    "platelet_600x350": {"geometry": {"length_nm": 600.0, "width_nm": 350.0}},
    "platelet_1200x700": {"geometry": {"length_nm": 1200.0, "width_nm": 700.0}},
    "LFP50_P2_mask": {"geometry": {"mask_from": str(REAL)}},
}


class _Budget(Exception):
    """The wall-time budget of a case ran out (the case is recorded as unfinished)."""


def run_case(name: str, comm: MPI.Comm, linear: str, budget_s: float,
             coarse_px: float | None = None, max_dc: float | None = None) -> dict:
    load = os.getloadavg()[0]
    steps = COMMON["steps"] | {"coarse_mesh_size_px": coarse_px, "max_dc": max_dc}
    config = PhaseFieldConfig.model_validate(COMMON | CASES[name] | {"steps": steps}
                                             | {"solver": {"linear": linear}})  # validated
    t0 = time.perf_counter()
    pm, forms, control = build_model(config, comm)
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()

    def budget(_, record):  # same decision on every rank
        if comm.allreduce(time.perf_counter() - t1, op=MPI.MAX) > budget_s:
            raise _Budget

    coarse, solver = None, None
    try:
        if coarse_px is not None:
            coarse, control = relax_on_coarse_mesh(config, forms, control, comm, budget)
            coarse["wall_per_step_s"] = coarse["wall_s"] / (coarse["steps"] + coarse["rejected"])
        solver = PhaseFieldSolver(forms, control, linear=linear)
        history = solver.run(budget)
    except _Budget:
        if solver is None:
            raise SystemExit(f"{name}: the wall budget ran out in the coarse stage") from None
        history = solver.history
        history.reason = f"unfinished: wall budget {budget_s:g} s"
    wall = comm.allreduce(time.perf_counter() - t1, op=MPI.MAX)
    s = history.summary()
    X = sample_state(forms, pm)["X"]
    domains = [int(ndimage.label(pm.mask & sel)[1]) for sel in (X > 0.5, X <= 0.5)]
    dofs = forms.W.dofmap.index_map.size_global * forms.W.dofmap.index_map_bs
    return {"pixels": int(pm.mask.sum()), "cells": int(pm.mesh.topology.index_map(2).size_global),
            "dofs": int(dofs), "steps": s["steps"], "rejected": s["rejected"],
            "rejections": solver.history.rejections,
            "converged": s["converged"], "reason": s["reason"], "t_final_tau": s["t_final"],
            "newton_per_step": s["newton_per_step"], "linear_per_step": s["linear_per_step"],
            "wall_per_step_s": (wall - (coarse["wall_s"] if coarse else 0.0))
            / max(s["steps"] + s["rejected"], 1),
            "wall_s": wall, "setup_s": comm.allreduce(setup, op=MPI.MAX),
            "energy_final_GPa_nm2": s["energy_final"],
            "domains_rich_poor": domains,
            "coarse_stage": coarse,
            "load_average_1min": [load, os.getloadavg()[0]],
            "per_step": {k: history.series(k).tolist()
                         for k in ("t", "dt", "newton_iterations", "wall_s")}}


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", metavar="case",
                        help=f"cases to run (default: all of {', '.join(CASES)})")
    parser.add_argument("--linear", default="lu", choices=("lu", "fieldsplit"))
    parser.add_argument("--budget-s", type=float, default=math.inf)
    parser.add_argument("--coarse-mesh-px", type=float)
    parser.add_argument("--max-dc", type=float)
    options = parser.parse_args(args)
    if unknown := sorted(set(options.cases) - set(CASES)):
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    linear, budget_s = options.linear, options.budget_s
    coarse_px, max_dc = options.coarse_mesh_px, options.max_dc
    comm = MPI.COMM_WORLD
    logging.basicConfig(level=logging.INFO if comm.rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")  # progress lines
    for name in options.cases or list(CASES):
        result = run_case(name, comm, linear, budget_s, coarse_px, max_dc)
        if comm.rank == 0:  # merged after every case: a long case does not lose the others
            print(name, json.dumps({k: v for k, v in result.items() if k != "per_step"}),
                  flush=True)
            data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
            key = (f"ranks_{comm.size}_{linear}" + (f"_coarse_{coarse_px:g}px" if coarse_px
                                                      else "")
                   + (f"_max_dc_{max_dc:g}" if max_dc else ""))
            data.setdefault(key, {})[name] = result
            data["versions"] = versions()
            data["notes"] = ("wall_per_step_s counts accepted and rejected steps (of the run "
                             "mesh; coarse_stage has its own, its wall time is in wall_s); "
                             "with lu "
                             "the linear iterations are LU solves (preonly), with fieldsplit "
                             "FGMRES iterations; load_average_1min before and after the case "
                             "(2 shared cores)")
            write_json_atomic(RESULTS, data)


if __name__ == "__main__":
    main(sys.argv[1:])
