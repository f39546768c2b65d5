"""Benchmark / study: 3-D Cahn–Hilliard coarsening from a random start against 2-D.

A small 600 x 350 nm platelet (16.6 nm pixels), mean X 0.5, interface width 100 nm, Vegard
law, average stiffness at 0.3 rad, seed 0: the same seeded in-plane random start (the
initial waves depend on x, y only) relaxes to the energy stop (1e-8 x volume x barrier per
step for 3 steps, MUMPS LU) in 2-D plane stress (1 px mesh, P1 u) and as 3-D platelets of
each thickness (extruded mask, 2 px tetrahedra, P2 u, f_b along the beam).  Per run: DOFs,
steps (rejected), Newton per step, wall, converged, whether the energy fell monotonically,
the final energy terms per volume (area in 2-D; GPa), and for 3-D: the X difference
between the projected map and the 2-D map (RMS and the fraction of pixels on the same side
of 0.5) and the through-thickness variation (RMS over pixels of X(z = 0) - X(z = t/2)).
``--pores N``: N closed voids of radius 50 nm at mid-thickness in the 3-D cases.
Load average before and after.  Rank 0 writes bench/results/phasefield_3d_coarsening.json:

  scripts/in-env mpirun -n 2 python3 bench/phasefield_3d_coarsening.py [--pores N] [T_NM ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from chemomech.io.results import versions, write_json_atomic  # noqa: E402
from chemomech.phasefield.config import PhaseFieldConfig  # noqa: E402
from chemomech.phasefield.outputs import _evaluate_points, sample_state, sample_state_3d  # noqa: E402
from chemomech.phasefield.run import build_model  # noqa: E402
from chemomech.phasefield.solver import PhaseFieldSolver  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "phasefield_3d_coarsening.json"
COMMON = {"mean_x": 0.5, "seed": 0, "free_energy": {"interface_width_nm": 100.0},
          "elasticity": {"rotation_rad": 0.3},
          "geometry": {"length_nm": 600.0, "width_nm": 350.0},
          "steps": {"energy_tol": 1e-8, "max_steps": 400}}


def relax(comm: MPI.Comm, thickness_nm: float | None, pores: int = 0) -> tuple[dict, dict]:
    """Relax one case (3-D: `pores` closed voids of radius 50 nm); (JSON row, maps)."""
    data = json.loads(json.dumps(COMMON))
    if thickness_nm is None:
        data |= {"dim": 2}
        data["geometry"]["mesh_size_px"] = 1.0
    else:
        data |= {"dim": 3}
        data["geometry"] |= {"mesh_size_px": 2.0, "thickness_nm": thickness_nm,
                             "pores": pores, "pore_radius_nm": 50.0}
    config = PhaseFieldConfig.model_validate(data)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    pm, forms, control = build_model(config, comm)
    history = PhaseFieldSolver(forms, control).run()
    wall = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    s = history.summary()
    energy = history.series("energy.total")
    row = {"thickness_nm": thickness_nm, "dim": config.dim, "pores": pores,
           "voids_nm": [list(v) for v in getattr(pm, "voids", [])],
           "dofs": int(forms.W.dofmap.index_map.size_global * forms.W.dofmap.index_map_bs),
           "steps": s["steps"], "rejected": s["rejected"], "converged": s["converged"],
           "t_final": s["t_final"], "newton_per_step": s["newton_per_step"],
           "energy_monotone": bool(np.all(np.diff(energy) <= 1e-12 * abs(energy[0]))),
           "energy_density_GPa": {k: v / forms.volume for k, v in s["energy_final"].items()},
           "wall_s": wall, "load_average_1min": [load, os.getloadavg()[0]]}
    h = pm.pixel_size_nm
    if thickness_nm is None:
        return row, sample_state(forms, pm)
    maps = sample_state_3d(forms, pm.mask, h, thickness_nm)
    idx = np.argwhere(pm.mask)
    c = forms.subfunctions()[0]
    levels = [_evaluate_points(c, np.column_stack([idx * h, np.full(len(idx), z)]))[:, 0]
              for z in (0.0, 0.5 * thickness_nm)]
    row["through_thickness_rms"] = float(np.sqrt(np.nanmean((levels[0] - levels[1]) ** 2)))
    return row, maps


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("thicknesses", nargs="*", type=float, metavar="thickness_nm",
                        help="3-D platelet thicknesses (default: 50 200)")
    parser.add_argument("--pores", type=int, default=0, help="closed voids in the 3-D cases")
    options = parser.parse_args(args)
    comm, pores = MPI.COMM_WORLD, options.pores
    previous = json.loads(RESULTS.read_text())["cases"] if RESULTS.exists() else []
    rows, (ref, x2) = [], relax(comm, None)
    rows.append(ref)
    rows += [r for r in previous if r["dim"] == 3]  # keep earlier 3-D cases
    for t in options.thicknesses or [50.0, 200.0]:
        row, maps = relax(comm, t, pores)
        inside = np.isfinite(maps["X"]) & np.isfinite(x2["X"])
        diff = maps["X"][inside] - x2["X"][inside]
        row["projected_X_vs_2d_rms"] = float(np.sqrt(np.mean(diff ** 2)))
        row["same_phase_fraction"] = float(np.mean((maps["X"][inside] > 0.5)
                                                   == (x2["X"][inside] > 0.5)))
        rows.append(row)
        if comm.rank == 0:
            print(json.dumps(row), flush=True)
            write_json_atomic(RESULTS, {"cases": rows, "versions": versions(), "notes": (
                "2-D plane stress (1 px, P1 u) and 3-D platelets (2 px, P2 u) from the same "
                "in-plane random start, LU, to the energy stop; energy_density_GPa = F / "
                "volume (area in 2-D); through_thickness_rms = RMS over pixels of "
                "X(z=0) - X(z=t/2); load_average_1min before and after each case")})


if __name__ == "__main__":
    main(sys.argv[1:])
