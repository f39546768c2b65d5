r"""Choice of the Legendre degree N by held-out error (``legendre_degree: auto``).

Cross-validation on the linear fast path (cheap: the basis responses of the largest degree
contain those of every smaller degree, so one set of 2(N_max + 1) back-substitutions serves
all degrees and folds).

* One particle: k-fold over *spatial blocks* of ``block_px`` x ``block_px`` pixels (blocks,
  not single pixels, because neighbouring pixels are strongly correlated; a pixel-wise split
  would reward overfitting).  Each particle's rigid modes are fitted on its training pixels
  and carried to its held-out pixels.
* Several particles: leave one particle out; the held-out particle's rigid modes are fitted
  on its own pixels (its error is the rigid-projected residual).

Under a gauge (`M1Model.gauge`, Dirichlet data) every degree is fitted in its free
coefficients and degree 0, which the gauge fixes entirely, is skipped.

Table rows (dicts): ``degree``, ``train`` and ``heldout`` errors (RMS per observation, units
of the data) and ``heldout_se``, the standard error of ``heldout`` over folds.
Rule ``"one_se"`` (default) picks the smallest degree whose held-out RMS is within one
standard error of the minimum (the errors of neighbouring degrees are often equal to the third
digit once the law is resolved, and the smallest such degree is the one to report); ``"min"``
picks the degree with the smallest held-out error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from chemomech.exceptions import InputError

logger = logging.getLogger(__name__)


@dataclass
class DegreeSelection:
    """Outcome of `select_degree`: the table, the chosen degree, rule and scheme."""

    table: list[dict[str, float]]
    chosen: int
    rule: str
    scheme: str
    folds: int
    details: dict = field(default_factory=dict)


def _block_folds(points: np.ndarray, block_nm: float, folds: int) -> np.ndarray:
    """Fold of each pixel from its block (bx, by) by a fixed integer hash (rank independent)."""
    b = np.floor(points / block_nm + 1e-9).astype(np.int64)
    return ((b[:, 0] * 73856093) ^ (b[:, 1] * 19349663)) % folds


def _pixel_size(systems, world: MPI.Comm) -> float:
    """Smallest positive spacing of pixel x coordinates over all particles (nm)."""
    local = np.inf
    for s in systems:
        if s.points is not None and len(s.points) > 1:
            xs = np.unique(np.round(s.points[:, 0], 9))
            if xs.size > 1:
                local = min(local, float(np.diff(xs).min()))
    h = world.allreduce(local, op=MPI.MIN)
    if not np.isfinite(h):
        raise InputError("cannot infer the pixel size: pass pixel_size_nm")
    return h


def _nuisance_fit(Q, rows, residual, comm):
    """Least-squares rigid-mode coefficients on `rows` (None without nuisance)."""
    if Q is None:
        return None
    Qr = Q[rows]
    gram = comm.allreduce(Qr.T @ Qr)
    rhs = comm.allreduce(Qr.T @ residual[rows])
    return np.linalg.lstsq(gram, rhs, rcond=None)[0]


def _projected(Q, rows, M, comm):
    """M[rows] minus its least-squares fit by the nuisance modes on `rows`."""
    if Q is None:
        return M[rows]
    Qr = Q[rows]
    gram = comm.allreduce(Qr.T @ Qr)
    coef = np.linalg.lstsq(gram, comm.allreduce(Qr.T @ M[rows]), rcond=None)[0]
    return M[rows] - Qr @ coef


def select_degree(model, max_degree: int | None = None, folds: int = 5, block_px: int = 8,
                  rule: str = "one_se", pixel_size_nm: float | None = None) -> DegreeSelection:
    """Held-out error for N = 0..max_degree on an `M1Model` built with degree >= max_degree."""
    D = model.degree
    max_degree = D if max_degree is None else max_degree
    if not 0 <= max_degree <= D:
        raise InputError(f"max_degree must lie in 0..{D} (the model's degree)",
                         field="max_auto_degree")
    if rule not in ("min", "one_se"):
        raise InputError(f"rule must be 'min' or 'one_se', got {rule!r}", field="rule")
    world, group = model.world, model.group
    systems = model.linear_system()
    leader = group.rank == 0
    names = sorted({n for part in world.allgather([s.name for s in systems] if leader else [])
                    for n in part})
    if len(names) > 1:
        scheme, n_folds = "leave_one_particle_out", len(names)
        fold_of = [np.full(s.data.size, names.index(s.name)) for s in systems]
    else:
        if folds < 2:
            raise InputError(f"need at least 2 folds, got {folds}", field="folds")
        scheme, n_folds = "spatial_blocks", folds
        h = pixel_size_nm or _pixel_size(systems, world)
        fold_of = [np.repeat(_block_folds(s.points, block_px * h, folds), s.components)
                   for s in systems]

    def world_sum(x):
        return world.allreduce(np.asarray(x, float) if leader else np.zeros_like(x, float))

    gauge = getattr(model, "gauge", None)
    table = []
    for n in range(1 if gauge is not None else 0, max_degree + 1):
        cols = np.r_[np.arange(n + 1), D + 1 + np.arange(n + 1)]
        T, t = gauge.transform(n) if gauge is not None else (np.eye(cols.size), 0.0 * cols)
        p = T.shape[1]
        columns = [s.columns[:, cols] @ T for s in systems]  # the free coefficients
        data = [s.data - s.columns[:, cols] @ t for s in systems]
        fold_mse, train_sq, train_count, held_sq, held_count = [], 0.0, 0, 0.0, 0
        for f in range(n_folds):
            N, r = np.zeros((p, p)), np.zeros(p)
            for s, fo, G_s, d_s in zip(systems, fold_of, columns, data, strict=True):
                train = fo != f
                if s.comm.allreduce(int(train.sum())) == 0:
                    continue
                G = _projected(s.nuisance, train, G_s, s.comm)
                d = _projected(s.nuisance, train, d_s, s.comm)
                part = s.comm.allreduce(np.concatenate([(G.T @ G).ravel(), G.T @ d]))
                if leader:
                    N += part[: p * p].reshape(p, p)
                    r += part[p * p:]
            NR = world_sum(np.concatenate([N.ravel(), r]))
            a = np.linalg.lstsq(NR[: p * p].reshape(p, p), NR[p * p:], rcond=1e-13)[0]
            sq = np.zeros(4)  # train sum, train count, held sum, held count
            for s, fo, G_s, d_s in zip(systems, fold_of, columns, data, strict=True):
                train, held = fo != f, fo == f
                residual = d_s - G_s @ a
                has_train = s.comm.allreduce(int(train.sum())) > 0
                theta = _nuisance_fit(s.nuisance, train if has_train else held, residual,
                                      s.comm)
                if theta is not None:
                    residual = residual - s.nuisance @ theta
                local = np.array([residual[train] @ residual[train], train.sum(),
                                  residual[held] @ residual[held], held.sum()], float)
                part = s.comm.allreduce(local)
                if leader:
                    sq += part
            sq = world_sum(sq)
            if sq[3] > 0:
                fold_mse.append(sq[2] / sq[3])
            train_sq, train_count = train_sq + sq[0], train_count + sq[1]
            held_sq, held_count = held_sq + sq[2], held_count + sq[3]
        se_mse = float(np.std(fold_mse, ddof=1) / np.sqrt(len(fold_mse))) \
            if len(fold_mse) > 1 else float("nan")
        held_rms = float(np.sqrt(held_sq / held_count))
        table.append({"degree": n, "train": float(np.sqrt(train_sq / train_count)),
                      "heldout": held_rms,
                      "heldout_se": se_mse / (2 * held_rms) if held_rms > 0 else 0.0})
        logger.info("degree %d: train RMS %.4g, held-out RMS %.4g", n,
                    table[-1]["train"], held_rms)
    best = min(table, key=lambda row: row["heldout"])
    chosen = best["degree"]
    if rule == "one_se":
        limit = best["heldout"] + best["heldout_se"]
        chosen = min(row["degree"] for row in table if row["heldout"] <= limit)
    logger.info("legendre_degree auto: chose N = %d (%s, %s)", chosen, rule, scheme)
    return DegreeSelection(table, chosen, rule, scheme, n_folds)
