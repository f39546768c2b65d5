"""Reproduce the study's M1 on LFP50_P2: boundary condition x misfit x Legendre degree.

Runs the real pipeline (`chemomech.pipeline.run`) for every combination of
``boundary_condition`` in {traction_free, dirichlet} (dirichlet: the integrated measured
displacement on the whole boundary, what the study's code did; gauge f(1) = 0),
``misfit`` in {displacement, strain} and N = 1..3, and writes

* ``<output>/<bc>_<misfit>_N<N>/``: each run's full results (summary.json etc.);
* ``<output>/table.md``: chemical misfits f(0) - f(1), model errors, M1 vs M0, the condition
  number of the scaled Gauss-Newton matrix and what is unidentified;
* ``<output>/model_error.png``: a Fig. 3e-style chart of the model error (M0 and M1 for
  every configuration);
* ``<output>/table.json``: the rows, and the model error of the Dirichlet boundary data
  alone (f = 0: the elastic extension of the measured boundary displacement), which tells
  how much of the Dirichlet gain comes from the law and how much from the boundary data.

Usage (from the repository root)::

    scripts/in-env python3 examples/reproduce_study.py [--data PATH] [--output DIR]
        [--degrees 1 2 3]

The covariance uses the Gauss-Newton formula (`uncertainty.method: gauss_newton`) and the
linear fast path (`optimiser.method: linear`, the exact minimiser of the same objective),
to keep the twelve runs within a few minutes; the table does not use the bands.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import json  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from chemomech.config import RunConfig  # noqa: E402
from chemomech.pipeline import run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "LFP50_P2.mat"
BOUNDARY_CONDITIONS = ("traction_free", "dirichlet")
MISFITS = ("displacement", "strain")

logger = logging.getLogger("reproduce_study")


def run_one(data: Path, output: Path, bc: str, misfit: str, degree: int) -> dict:
    """One pipeline run; returns the row of the table."""
    config = RunConfig(data=[data], model="M1", legendre_degree=degree, misfit=misfit,
                       boundary_condition=bc, output=output / f"{bc}_{misfit}_N{degree}",
                       optimiser={"method": "linear"},
                       uncertainty={"method": "gauss_newton"})
    summary = run(config)
    at = summary["eigenstrain_at"]
    ident = summary["identifiability"]
    errors = summary["model_errors"]
    return {"bc": bc, "misfit": misfit, "N": degree,
            "da": at["0.0"]["a"] - at["1.0"]["a"], "dc": at["0.0"]["c"] - at["1.0"]["c"],
            "M0": errors["M0"], "M1": errors["M1"],
            "change": 100.0 * (errors["M1"] / errors["M0"] - 1.0),
            "cond": ident.get("condition_number_gauged", ident["condition_number"]),
            "unidentified": ", ".join(ident["unidentified"]) or "none",
            "gauge": (ident["gauge"] or {}).get("meaning", "none")}


def boundary_data_only_error(data: Path) -> dict:
    """Model error of u = elastic extension of the Dirichlet data with f = 0 (the M1 residual
    computed as the pipeline does: measured minus model strain over the used pixels)."""
    from chemomech.analysis.residual import model_error
    from chemomech.correlative.prepared import used_pixels
    from chemomech.inverse.particle import particle_setup
    from chemomech.inverse.problem import M1Model
    from chemomech.mechanics.fields import model_maps
    from chemomech.mechanics.forms import epsilon
    from chemomech.mechanics.mesh import mesh_from_mask
    from chemomech.pipeline import load_particles, prepare

    config = RunConfig(data=[data], boundary_condition="dirichlet")
    p = prepare(load_particles(config)[0], config)
    pm = mesh_from_mask(p.data.mask, p.data.pixel_size_nm, MPI.COMM_SELF,
                        mesh_size_px=config.mesh.size_px,
                        simplify_tol_px=config.mesh.simplify_tol_px,
                        min_island_px=config.mesh.min_island_px)
    setup = particle_setup(p.data.name, pm, p.data.X, p.data.rotation_rad,
                           displacement=p.displacement, boundary_condition="dirichlet",
                           edge_exclusion_px=config.edge_exclusion_px)
    model = M1Model([setup], degree=1, comm=MPI.COMM_SELF)  # gauge f(1) = 0: a = 0 is f = 0
    u = model.displacement(0, np.zeros(model.num_coefficients))
    maps = model_maps(u, epsilon(u), pm, p.data.mask.shape)
    used = used_pixels(p.data.mask & (maps["meshed_mask"] > 0), p, config.edge_exclusion_px)
    r = {k: p.strain_image[k] - maps[k] for k in ("e_xx", "e_yy", "e_xy")}
    return {"model_error_f0": model_error(r["e_xx"], r["e_yy"], r["e_xy"], used)}


def table(rows: list[dict]) -> str:
    """The markdown table."""
    head = ("| boundary | misfit | N | f_a(0) - f_a(1) | f_c(0) - f_c(1) | model error M1 | "
            "M0 | M1 vs M0 | cond (fitted) | unidentified (fixed by gauge) |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['bc']} | {r['misfit']} | {r['N']} | {r['da']:+.4f} | {r['dc']:+.4f} | "
             f"{r['M1']:.5f} | {r['M0']:.5f} | {r['change']:+.1f} % | {r['cond']:.3g} | "
             f"{r['unidentified']}{' (' + r['gauge'] + ')' if r['gauge'] != 'none' else ''} |"
             for r in rows]
    return head + "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path) -> None:
    """Fig. 3e-style bars: M0 and M1 model error for every configuration."""
    fig, ax = plt.subplots(figsize=(9.0, 4.0))
    short = {"displacement": "disp", "strain": "strain"}
    labels = ["M0"] + [f"{r['bc'].replace('traction_free', 'free')}\n{short[r['misfit']]} "
                       f"N={r['N']}" for r in rows]
    heights = [rows[0]["M0"]] + [r["M1"] for r in rows]
    colours = ["0.55"] + ["tab:purple" if r["bc"] == "dirichlet" else "tab:blue" for r in rows]
    ax.bar(range(len(heights)), heights, color=colours)
    for i, r in enumerate(rows, start=1):
        ax.text(i, r["M1"], f"{r['change']:+.0f}%", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(heights)), labels, fontsize=6.5)
    ax.set_ylabel("model error (mean |residual strain|)")
    ax.set_title("LFP50_P2: M1 by boundary condition, misfit and degree (purple: dirichlet)")
    ax.set_ylim(0, 1.2 * max(heights))
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, default=Path("study_results"))
    parser.add_argument("--degrees", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.output.mkdir(parents=True, exist_ok=True)
    rows = [run_one(args.data, args.output, bc, misfit, n)
            for bc in BOUNDARY_CONDITIONS for misfit in MISFITS for n in args.degrees]
    f0 = boundary_data_only_error(args.data)
    f0["change_vs_M0_percent"] = 100.0 * (f0["model_error_f0"] / rows[0]["M0"] - 1.0)
    text = table(rows) + (f"\nDirichlet boundary data alone (f = 0): model error "
                          f"{f0['model_error_f0']:.5f}, {f0['change_vs_M0_percent']:+.1f} % vs "
                          f"M0.\n")
    (args.output / "table.md").write_text(text)
    (args.output / "table.json").write_text(json.dumps({"rows": rows, "dirichlet_f0": f0},
                                                       indent=1))
    chart(rows, args.output / "model_error.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
