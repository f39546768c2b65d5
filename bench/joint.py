"""Benchmark: the joint M1 fit of many synthetic particles on several ranks (time, memory).

The default pipeline (frame check, integration, gmsh meshes, M1 Newton fit + linear cross-check,
exact integrated-noise bands, residuals, figures, fields.h5) on a twin stack written by
`chemomech synth` (e.g. 100 particles of 1000 x 600 nm); per rank the peak RSS
(``ru_maxrss``) and the particles it held; rank 0 writes bench/results/joint.json.

  scripts/in-env mpirun -n 2 python3 -m chemomech synth --output STACK --particles 100 \\
      --seed 1 --length 1000 --width 600
  scripts/in-env mpirun -n 2 python3 bench/joint.py STACK

Weak scaling (the same particles per rank on 1 and 2 ranks): `--weak` stores the run under
"weak_scaling" keyed by ranks and particles instead of replacing the main entry, e.g. 50
particles on 1 rank and 100 on 2 ranks (stacks from `synth --particles 50` / `100`):

  scripts/in-env python3 bench/joint.py STACK50 --weak
  scripts/in-env mpirun -n 2 python3 bench/joint.py STACK100 --weak
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from mpi4py import MPI  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "joint.json"


def main(stack: Path, weak: bool = False) -> dict | None:
    from chemomech.config import RunConfig
    from chemomech.inverse.particle import particles_of_rank
    from chemomech.io.results import versions, write_json_atomic
    from chemomech.pipeline import run

    comm = MPI.COMM_WORLD
    load0 = os.getloadavg()[0]
    out = Path(comm.bcast(tempfile.mkdtemp() if comm.rank == 0 else None, root=0))
    comm.Barrier()
    t0 = time.perf_counter()
    summary = run(RunConfig(data=[stack], model="M1", legendre_degree=2, output=out), comm)
    elapsed = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    n = comm.bcast(len(summary["per_particle"]) if comm.rank == 0 else None, root=0)
    held = len(particles_of_rank(comm.rank, comm.size, n))
    per_rank = comm.gather({"rank": comm.rank, "particles": held, "peak_rss_mb": peak_mb,
                            "peak_rss_per_particle_mb": peak_mb / max(held, 1)}, root=0)
    if comm.rank != 0:
        return None
    result = {"benchmark": "joint M1 pipeline on many twins", "stack": str(stack),
              "particles": n, "ranks": comm.size, "seconds": elapsed,
              "seconds_per_particle": elapsed / n, "per_rank": per_rank,
              "stages_s": summary["timings_s"], "fit": summary["fit"]["reason"],
              "load_before": load0, "load_after": os.getloadavg()[0],
              "versions": versions()}
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if weak:
        key = f"ranks={comm.size},particles={n}"
        data.setdefault("weak_scaling", {})[key] = result | {
            "particles_per_rank": n / comm.size}
        result = data
    elif "weak_scaling" in data:  # the main entry is replaced, the weak-scaling runs kept
        result["weak_scaling"] = data["weak_scaling"]
    write_json_atomic(RESULTS, result)
    print(f"{n} particles on {comm.size} ranks: {elapsed:.0f} s; peak RSS per rank "
          f"{[round(r['peak_rss_mb']) for r in per_rank]} MB -> {RESULTS}")
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1]), weak="--weak" in sys.argv[2:])
