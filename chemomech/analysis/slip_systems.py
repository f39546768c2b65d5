"""Candidate slip systems compared at one common regularisation weight (Suppl. Fig. 14)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from mpi4py import MPI

from chemomech.analysis.residual import m2_model_errors
from chemomech.dislocations.run import M1Stage, build_m1_stage, run_m2
from chemomech.mechanics.slip import IN_PLANE_SYSTEMS, slip_system

if TYPE_CHECKING:
    from chemomech.config import RunConfig


def compare_slip_systems(prepared: Sequence, config: RunConfig,
                         comm: MPI.Comm = MPI.COMM_WORLD, systems: Sequence[str] | None = None,
                         m1: M1Stage | None = None) -> list[dict]:
    """Fit M2 with each candidate system alone at one common alpha and tabulate (Suppl.
    Fig. 14): rows {system, notation, alpha, rule, misfit, model_error (mean over particles),
    mean_density_um2}, sorted by model error (the same list on every rank).

    The config's ``dislocations`` block applies to every system (no bands are computed).  With
    ``alpha: auto`` the weight is chosen by the configured rule for the first system (default
    order: D, a, ac+, ac-) and then used for all: equal regularisation of the slip fields, so
    that the model errors compare the systems and not the alpha choices.  `m1`: as for
    `run_m2` (the M1 meshes and factorisations are shared by all systems).
    """
    stage = m1 if m1 is not None else build_m1_stage(prepared, config, comm)
    block = config.dislocations
    labels = list(systems or IN_PLANE_SYSTEMS)
    rows, alpha, rule = [], block.regularisation.alpha, None
    for label in labels:
        reg = block.regularisation.model_copy(update={"alpha": alpha})
        run_config = config.model_copy(update={"dislocations": block.model_copy(
            update={"slip_systems": [label], "regularisation": reg, "bands": False})})
        out = run_m2(prepared, run_config, comm, m1=stage)
        if alpha == "auto":
            alpha, rule = out.fit.regularisation.alpha, out.summary["regularisation"]["rule"]
            rule = f"{rule} ({label})"
        row = None
        if comm.rank == 0:
            errors = m2_model_errors(prepared, out.images, config.edge_exclusion_px)
            error = float(np.mean(list(errors.values())))
            row = {"system": label, "notation": slip_system(label).notation(),
                   "alpha": out.fit.regularisation.alpha, "rule": rule or "fixed",
                   "misfit": out.fit.misfit, "model_error": error,
                   "mean_density_um2": out.summary["mean_density_um2"]}
        rows.append(comm.bcast(row, root=0))
    return sorted(rows, key=lambda r: r["model_error"])
