"""Benchmark: law errors of the default demo M1 run on the default datasets of seeds 0-2.

For a discretisation change (e.g. the mesh): run it on both trees, with a label, and compare
the errors with their spread over seeds.  Each run merges its label into
bench/results/demo_law_errors.json (max over X of |f - f_true| / range, per seed; cells per
meshed pixel; wall time):

  scripts/in-env python3 bench/demo_law_errors.py LABEL
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from mpi4py import MPI  # noqa: E402

RESULTS = Path(os.environ.get("CHEMOMECH_BENCH_RESULTS", Path(__file__).resolve().parent
                              / "results" / "demo_law_errors.json"))
DATA = Path(os.environ.get("CHEMOMECH_BENCH_DATA_DIR", "/tmp/chemomech_bench_law"))


def main(label: str) -> dict:
    from chemomech.config import RunConfig
    from chemomech.demo import truth_error
    from chemomech.io.results import versions, write_json_atomic
    from chemomech.io.stack import read_stack
    from chemomech.pipeline import run
    from chemomech.synth import make_default_dataset

    logging.disable(logging.WARNING)
    seeds = {}
    for seed in (0, 1, 2):
        data = DATA / f"twins_seed{seed}_n10.h5"
        if not data.exists():
            make_default_dataset(data, seed=seed, n_particles=10, comm=MPI.COMM_SELF)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = run(RunConfig(data=[data], model="M1", legendre_degree=2,
                                    output=Path(tmp) / "run"), MPI.COMM_SELF)
            seconds = time.perf_counter() - t0
        truth = read_stack(data)[0].truth
        seeds[str(seed)] = {"law_error": truth_error(summary, truth["coefficients_a"],
                                                     truth["coefficients_c"]),
                            "coefficients": summary["coefficients"], "seconds": seconds,
                            "load_average": os.getloadavg()[0]}
        print(label, seed, seeds[str(seed)]["law_error"], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip() or None
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["benchmark"] = "law errors of the demo M1 run, seeds 0-2 (bench/demo_law_errors.py)"
    results.setdefault("runs", {})[label] = {"seeds": seeds, "commit": commit,
                                             "versions": versions()}
    write_json_atomic(RESULTS, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "run")
