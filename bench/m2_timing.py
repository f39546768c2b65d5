"""Benchmark: the default M2 run on LFP50_P2 through the pipeline, its stage times.

`chemomech.pipeline.run` with ``model: M2`` and defaults otherwise (M1 first, M2 with
alpha by the discrepancy principle over the default alpha scan, joint bands, report), one
run on 1 rank; records the summary's stage timings, the TAO iterations over the scan, the
time per iteration and per forward solve, and the load average before and after:

  scripts/in-env python3 bench/m2_timing.py        # -> bench/results/m2_timing.json

``--stagnation-rtol 0`` switches the M2 stagnation stop off (``dislocations.stagnation_rtol``),
for the before/after comparison of issue #17 (``--out`` names the JSON):

  scripts/in-env python3 bench/m2_timing.py --stagnation-rtol 0 \
      --out bench/results/m2_timing_no_stagnation.json

``--tao-type cg`` fits M2 by preconditioned CG with exact Hessian actions
(``dislocations.tao_type``) instead of the default TAO BLMVM:

  scripts/in-env python3 bench/m2_timing.py --tao-type cg --out bench/results/m2_timing_cg.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from mpi4py import MPI  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "LFP50_P2.mat"
RESULTS = Path(os.environ.get("CHEMOMECH_BENCH_RESULTS",
                              ROOT / "bench" / "results" / "m2_timing.json"))


def main(stagnation_rtol: float | None = None, results: Path = RESULTS,
         tao_type: str | None = None) -> dict:
    from chemomech.config import RunConfig
    from chemomech.io.results import versions, write_json_atomic
    from chemomech.pipeline import run

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        load0 = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        dislocations = {} if stagnation_rtol is None else {"stagnation_rtol": stagnation_rtol}
        dislocations |= {} if tao_type is None else {"tao_type": tao_type}
        config = RunConfig(data=[REAL], model="M2", output=Path(tmp) / "run",
                           dislocations=dislocations)
        summary = run(config, MPI.COMM_SELF)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    timings = summary["timings_s"]
    iterations = timings.get("m2_iterations", 0.0)
    result = {
        "benchmark": "default M2 run on LFP50_P2 (pipeline, 1 rank)",
        "tao_type": config.dislocations.tao_type,
        "stagnation_rtol": config.dislocations.stagnation_rtol,
        "stagnation_window": config.dislocations.stagnation_window,
        "seconds": seconds, "cpu_seconds": cpu, "load_before": load0,
        "load_after": os.getloadavg()[0],
        "timings_s": timings,
        "m2_iterations": iterations,
        "m2_time_per_iteration_s": timings["m2_fit"] / max(iterations, 1.0),
        "m2_time_per_iteration_over_forward_solve":
            timings["m2_fit"] / max(iterations, 1.0) / timings["m2_forward_solve"],
        "regularisation": summary["dislocations"]["regularisation"],
        "band": {k: v for k, v in summary["dislocations"]["band"].items()
                 if k not in ("noise_sigma",)},
        "m2_coefficients": summary["dislocations"]["fit"]["coefficients"],
        "model_errors": summary["model_errors"],
        "versions": versions(),
    }
    write_json_atomic(results, result)
    print(f"M2 run {seconds:.1f} s (load {load0:.1f}): {iterations:.0f} iterations, "
          f"{result['m2_time_per_iteration_s']:.3f} s each -> {results}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stagnation-rtol", type=float, default=None,
                        help="dislocations.stagnation_rtol (default: the config default)")
    parser.add_argument("--tao-type", default=None, choices=("blmvm", "bqnls", "cg"),
                        help="dislocations.tao_type (default: the config default)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON to write")
    args = parser.parse_args()
    main(args.stagnation_rtol, args.out, args.tao_type)
