"""Figures and tables of the line-profile analysis: Fig. 4 and Table 1 of the study.

`plot_effective_density`: effective density rho*_hkl = sum_s rho_s C_hkl,s (b_s/b_ref)^2 per
reflection (1/um^2), measured (with error bars) and as fitted, one series per sample.
`density_table`: densities per system in the layout of Table 1 (plane, label, b, l, type,
one column per sample, "value(sigma)"), as Markdown.
`plot_variance_fits`: M2(q) against ln q with the fitted curve, one panel per reflection.
Figures are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from chemomech.analysis.report import save_figure
from chemomech.xrd.fit import DensityFit
from chemomech.xrd.slip import SlipSystem
from chemomech.xrd.variance import VarianceResult

logger = logging.getLogger(__name__)


def plot_effective_density(series: Mapping[str, dict], path: str | Path) -> Path:
    """Fig. 4: rho* per reflection (1/um^2); series[name] = {labels, rho, sigma, fit}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (name, d) in enumerate(series.items()):
        x = np.arange(len(d["labels"])) + 0.12 * (k - (len(series) - 1) / 2)
        ax.errorbar(x, d["rho"], yerr=d["sigma"], fmt="o", capsize=3, label=f"{name} measured")
        ax.plot(x, d["fit"], "_", ms=14, mew=2, color=ax.lines[-1].get_color(),
                label=f"{name} NNLS fit")
    labels = next(iter(series.values()))["labels"] if series else []
    ax.set_xticks(np.arange(len(labels)), [f"({lab})" for lab in labels], rotation=45)
    ax.set_ylabel(r"effective density $\rho^*$ ($\mu$m$^{-2}$)")
    ax.set_xlabel("reflection")
    ax.legend(fontsize=8)
    ax.set_title("Dislocation-induced broadening per reflection")
    return save_figure(fig, path)


def plot_variance_fits(results: Sequence[VarianceResult], path: str | Path) -> Path:
    """M2(q) (1/nm^2) against ln q with the fitted model, one panel per reflection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(results), 1)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, r in zip(axes.flat, results, strict=False):
        ax.plot(np.log(r.q), r.m2, ".", ms=3, label="data")
        ax.plot(np.log(r.q), r.m2_fit, "-", label="fit")
        ax.set_title(f"({r.label})  $\\Lambda\\rho$ = {r.lambda_rho:.3g} nm$^{{-2}}$", fontsize=9)
        ax.set_xlabel("ln q (q in 1/nm)")
        ax.set_ylabel("M2 (1/nm$^2$)")
    for ax in list(axes.flat)[len(results):]:
        ax.set_visible(False)
    fig.tight_layout()
    return save_figure(fig, path)


def density_table(fits: Mapping[str, DensityFit], systems: Sequence[SlipSystem],
                  lattice: Sequence[float]) -> str:
    """Markdown table of densities (1/um^2) per system and sample, Table 1 layout."""
    names = list(fits)
    lines = ["| n | label | b | l | type | " + " | ".join(names) + " |",
             "|---|---|---|---|---|" + "---|" * len(names),
             "| | Total density (um^-2) | | | | " + " | ".join(
                 f"{fits[n].total:,.0f}" for n in names) + " |",
             "| | Data explained (%) | | | | " + " | ".join(
                 f"{100 * fits[n].data_explained:.0f}" for n in names) + " |"]
    for s in systems:
        cells = []
        for n in names:
            f = fits[n]
            if s.label not in f.labels:
                cells.append("")
                continue
            i = f.labels.index(s.label)
            rho, sig = f.densities[i], f.sigma[i]
            cells.append(f"{rho:,.0f}({sig:,.0f})" if rho > 0 else "")
        frac = "1/2" if s.fraction != 1 else ""
        lines.append(f"| ({''.join(map(str, s.plane))}) | {s.label} | "
                     f"{frac}[{''.join(map(str, s.burgers))}] | [{''.join(map(str, s.line))}] | "
                     f"{s.character(lattice).capitalize()} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
