"""Candidate slip systems compared at one common regularisation weight (Suppl. Fig. 14)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mpi4py import MPI

from chemomech.analysis.residual import m2_model_errors
from chemomech.dislocations.run import run_m2
from chemomech.dislocations.settings import M2Settings
from chemomech.mechanics.slip import IN_PLANE_SYSTEMS, slip_system


def compare_slip_systems(prepared: Sequence, config, comm: MPI.Comm = MPI.COMM_WORLD,
                         systems: Sequence[str] | None = None, m1_result=None,
                         settings: M2Settings | None = None) -> list[dict]:
    """Fit M2 with each candidate system alone at one common alpha and tabulate (Suppl.
    Fig. 14): rows {system, notation, alpha, rule, misfit, model_error (mean over particles),
    mean_density_um2}, sorted by model error (the same list on every rank).

    With ``alpha: auto`` the weight is chosen by the configured rule for the first system
    (default order: D, a, ac+, ac-) and then used for all: equal regularisation of the slip
    fields, so that the model errors compare the systems and not the alpha choices.
    """
    base = settings or M2Settings.from_config(config)
    labels = list(systems or IN_PLANE_SYSTEMS)
    rows, alpha, rule = [], base.alpha, None
    for label in labels:
        s = M2Settings(**{k: getattr(base, k) for k in M2Settings.__slots__} |
                       {"slip_systems": (label,), "alpha": alpha})
        out = run_m2(prepared, config, comm, m1_result=m1_result, settings=s)
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
