"""Results a user looks at: figures (matplotlib, PNG) and pixel fields for ParaView.

Figures follow the study: the eigenstrain law with its 95 % band and M0 dashed (Fig. 2g),
its derivative, the chemical expansion coefficient (Fig. 2h), residual strain maps
(Fig. 3b) and the model error per model (Fig. 3e).  Pixel fields go to `fields.h5` (h5py)
with a `fields.xdmf` that describes each particle as a 2-D uniform grid (x = axis 0), so
ParaView opens them directly.  Every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from chemomech.io.results import atomic_path, write_bytes_atomic, write_text_atomic  # noqa: E402

COLORS = {"a": "tab:purple", "c": "tab:green"}


def png_bytes(fig, tight: bool = True) -> bytes:
    """The figure as PNG (dpi 150); `tight` crops it to its artists (one more draw: a figure
    laid out by hand saves in about 60 % of the time)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=150, bbox_inches="tight" if tight else None, format="png")
    return buffer.getvalue()


def save_figure(fig, path: str | Path, tight: bool = True, close: bool = True) -> Path:
    """Save a figure as PNG (`png_bytes`) atomically and close it (unless not `close`)."""
    try:
        data = png_bytes(fig, tight)
    finally:
        if close:
            plt.close(fig)
    return write_bytes_atomic(path, data)


def plot_curves(curve: Mapping, path: str | Path, *, baseline: Mapping | None = None,
                ylabel: str = "eigenstrain (rel. LiFePO4)", title: str = "") -> Path:
    """f_a, f_c against X with the shaded band (keys X, a, c, a_lo, a_hi, c_lo, c_hi);
    `baseline` (same keys, bands optional) is drawn dashed — M0 in the study's Fig. 2g/h."""
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    X = np.asarray(curve["X"])
    for d in ("a", "c"):
        ax.plot(X, curve[d], color=COLORS[d], lw=2, label=f"M1 $f_{d}$")
        if f"{d}_lo" in curve:
            ax.fill_between(X, curve[f"{d}_lo"], curve[f"{d}_hi"], color=COLORS[d], alpha=0.25,
                            lw=0, label=f"95 % band ($f_{d}$)")
        if baseline is not None:
            ax.plot(baseline["X"], baseline[d], color=COLORS[d], ls="--", lw=1.5,
                    label=f"M0 $f_{d}$")
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel("Li fraction X")
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    return save_figure(fig, path)


class ResidualMaps:
    """Residual strain components (e.g. aa, cc, ac in the crystal frame) as maps (Fig. 3b),
    for many particles on one reused figure: its axes, ticks and colour bar are built once,
    each `save` changes only the images, limits and title (half the cost of a new figure).
    Use as a context manager, or `close` it."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        n = len(self.labels)
        width = 2.7 * n + 1.2
        self.fig, axes = plt.subplots(1, n, figsize=(width, 3.6), squeeze=False, sharey=True)
        self.fig.subplots_adjust(left=0.6 / width, right=0.84, bottom=0.14, top=0.8,
                                 wspace=0.08)  # by hand: one draw per save (no tight bbox)
        self.axes = axes[0]
        self.images = [ax.imshow(np.zeros((2, 2)), cmap="RdBu_r") for ax in self.axes]
        for ax, label in zip(self.axes, self.labels, strict=True):
            ax.set_title(f"residual $\\varepsilon_{{{label}}}$")
            ax.set_xlabel("x (um)")
        self.axes[0].set_ylabel("y (um)")
        self.fig.colorbar(self.images[0], cax=self.fig.add_axes((0.87, 0.14, 0.015, 0.66)),
                          label="strain")
        self.title = self.fig.suptitle("")

    def save(self, maps: Mapping[str, np.ndarray], mask: np.ndarray, pixel_size_nm: float,
             path: str | Path, title: str = "") -> Path:
        """`render` the maps of one particle into the PNG file `path` (atomically)."""
        return write_bytes_atomic(path, self.render(maps, mask, pixel_size_nm, title))

    def render(self, maps: Mapping[str, np.ndarray], mask: np.ndarray, pixel_size_nm: float,
               title: str = "") -> bytes:
        """The maps of one particle (keys = `labels`; NaN and pixels outside `mask` blank)
        on a symmetric colour scale of their 99th percentile of |value|, as PNG bytes."""
        if list(maps) != self.labels:
            raise ValueError(f"expected maps {self.labels}, got {list(maps)}")
        nx, ny = mask.shape
        extent = (0, nx * pixel_size_nm * 1e-3, ny * pixel_size_nm * 1e-3, 0)
        values = np.concatenate([np.abs(m[mask & np.isfinite(m)]) for m in maps.values()])
        vmax = float(np.percentile(values, 99)) if values.size else 1.0
        for ax, im, image in zip(self.axes, self.images, maps.values(), strict=True):
            im.set_data(np.where(mask, image, np.nan).T)  # x = axis 0 right, y = axis 1 down
            im.set_extent(extent)
            im.set_clim(-vmax, vmax)
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
        self.title.set_text(title)
        return png_bytes(self.fig, tight=False)

    def close(self) -> None:
        plt.close(self.fig)

    def __enter__(self) -> ResidualMaps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ResidualMapJob(NamedTuple):
    """One particle's residual-map figure to draw (`ResidualMaps.save` arguments)."""

    maps: Mapping[str, np.ndarray]
    mask: np.ndarray
    pixel_size_nm: float
    path: Path
    title: str


def save_residual_maps(jobs: Sequence[ResidualMapJob] | None, comm,
                       labels: Sequence[str] = ("aa", "cc", "ac")) -> None:
    """Draw many particles' residual maps with the ranks of `comm` (collective): rank 0 holds
    the `jobs` (None elsewhere) and deals them round-robin, each rank renders its share on
    one reused `ResidualMaps`, and rank 0 writes every PNG (no shared file system needed)."""
    size = comm.size
    mine = comm.scatter([list(jobs[r::size]) for r in range(size)]
                        if comm.rank == 0 else None, root=0)
    with ResidualMaps(list(labels)) as figure:
        pngs = [(job.path, figure.render(job.maps, job.mask, job.pixel_size_nm, job.title))
                for job in mine]
    for share in comm.gather(pngs, root=0) or []:
        for path, data in share:
            write_bytes_atomic(path, data)


def plot_residual_maps(maps: Mapping[str, np.ndarray], mask: np.ndarray, pixel_size_nm: float,
                       path: str | Path, title: str = "") -> Path:
    """One particle's residual maps (`ResidualMaps`, Fig. 3b) as PNG."""
    with ResidualMaps(list(maps)) as figure:
        return figure.save(maps, mask, pixel_size_nm, path, title)


def plot_model_errors(errors: Mapping[str, float], path: str | Path,
                      per_particle: Mapping[str, Mapping[str, float]] | None = None) -> Path:
    """Bar chart of the model error (mean Frobenius norm of residual strain) by model (Fig. 3e),
    with the change relative to M0 written on the bars and per-particle values as dots."""
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    models = list(errors)
    heights = [errors[m] for m in models]
    ax.bar(models, heights, color=["0.55", "tab:purple", "tab:orange"][: len(models)])
    if per_particle:
        for i, m in enumerate(models):
            pts = [v[m] for v in per_particle.values() if m in v]
            ax.plot(np.full(len(pts), i) + np.linspace(-0.2, 0.2, len(pts)), pts, "k.", ms=4)
    base = errors.get("M0")
    for i, m in enumerate(models):
        label = f"{heights[i]:.2e}"
        if base and m != "M0":
            label += f"\n{100 * (heights[i] / base - 1):+.0f} % vs M0"
        ax.text(i, heights[i], label, ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("model error (mean |residual strain|)")
    ax.set_ylim(0, 1.3 * max(heights))
    return save_figure(fig, path)


def write_pixel_fields(h5_path: str | Path, particles: Mapping[str, Mapping],
                       ) -> tuple[Path, Path]:
    """Write pixel maps to `fields.h5` and a ParaView-readable `fields.xdmf` beside it.

    `particles[name]` holds `pixel_size_nm` and `maps` (a dict of 2-D float arrays [i, j]);
    the XDMF grid of each particle has origin 0 and spacing h (nm), x = axis 0.
    """
    h5_path = Path(h5_path)
    xdmf_path = h5_path.with_suffix(".xdmf")
    grids = []
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = "chemomech-fields"
        for name, entry in particles.items():
            group = f.create_group(name)
            group.attrs["pixel_size_nm"] = entry["pixel_size_nm"]
            attributes = []
            for key, image in entry["maps"].items():
                image = np.asarray(image, dtype=np.float64)
                group.create_dataset(key, data=image)  # gzip: +0.5 s / 10 particles, -40 %
                # stored [i, j]; XDMF lists dimensions slowest first with x fastest
                attributes.append(
                    f'      <Attribute Name="{key}" AttributeType="Scalar" Center="Node">\n'
                    f'        <DataItem Dimensions="{image.shape[0]} {image.shape[1]}" '
                    f'NumberType="Float" Precision="8" Format="HDF">'
                    f'{h5_path.name}:/{name}/{key}</DataItem>\n      </Attribute>')
            nx, ny = next(iter(entry["maps"].values())).shape
            h = entry["pixel_size_nm"]
            grids.append(
                f'    <Grid Name="{name}" GridType="Uniform">\n'
                f'      <Topology TopologyType="2DCoRectMesh" Dimensions="{nx} {ny}"/>\n'
                f'      <Geometry GeometryType="ORIGIN_DXDY">\n'
                f'        <DataItem Dimensions="2" Format="XML">0 0</DataItem>\n'
                f'        <DataItem Dimensions="2" Format="XML">{h} {h}</DataItem>\n'
                f'      </Geometry>\n' + "\n".join(attributes) + "\n    </Grid>")
    xml = ('<?xml version="1.0"?>\n<Xdmf Version="3.0">\n  <Domain>\n'
           '  <Grid Name="particles" GridType="Collection" CollectionType="Spatial">\n'
           + "\n".join(grids) + "\n  </Grid>\n  </Domain>\n</Xdmf>\n")
    return h5_path, write_text_atomic(xdmf_path, xml)


def plot_density_map(density: np.ndarray, X: np.ndarray, mask: np.ndarray,
                     pixel_size_nm: float, path: str | Path, title: str = "") -> Path:
    """Density map (um^-2) with the phase boundary X = 0.5 (red dashed) overlaid (Fig. 3c)."""
    h_um = pixel_size_nm * 1e-3
    nx, ny = density.shape
    # as chemomech.analysis.report.plot_residual_maps: x = axis 0 to the right, y = axis 1 down
    extent = (0, nx * h_um, ny * h_um, 0)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    shown = np.where(mask, density, np.nan)
    finite = shown[np.isfinite(shown)]
    vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    image = ax.imshow(shown.T, extent=extent, cmap="magma", vmin=0, vmax=max(vmax, 1e-12))
    Xs = np.where(mask, X, np.nan)
    if np.nanmin(Xs) < 0.5 < np.nanmax(Xs):
        xx = (np.arange(nx) + 0.5) * h_um
        yy = (np.arange(ny) + 0.5) * h_um
        ax.contour(xx, yy, np.nan_to_num(Xs, nan=-1.0).T, levels=[0.5], colors="red",
                   linestyles="dashed", linewidths=1.0)
    fig.colorbar(image, ax=ax, label=r"GND density ($\mu$m$^{-2}$)")
    ax.set_xlabel(r"x ($\mu$m)")
    ax.set_ylabel(r"y ($\mu$m)")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_alpha_curve(choice, path: str | Path) -> Path:
    """L-curve of the alpha scan (misfit vs seminorm, log-log; alpha annotated), the chosen
    alpha circled and the discrepancy target (if any) as a vertical line."""
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    pts = sorted(choice.curve, key=lambda c: -c["alpha"])
    ax.loglog([c["misfit"] for c in pts], [c["seminorm"] for c in pts], "o-", ms=4)
    for c in pts:
        ax.annotate(f"{c['alpha']:.2g}", (c["misfit"], c["seminorm"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    best = min(choice.curve, key=lambda c: abs(np.log(c["alpha"] / choice.alpha)))
    ax.loglog([best["misfit"]], [best["seminorm"]], "o", mfc="none", mec="red", ms=12)
    if choice.target_misfit:
        ax.axvline(choice.target_misfit, color="0.5", ls="--", lw=1, label="noise level")
        ax.legend(fontsize=8)
    ax.set_xlabel("data misfit")
    ax.set_ylabel("regularisation seminorm")
    ax.set_title(f"alpha = {choice.alpha:.3g} ({choice.rule})", fontsize=9)
    return save_figure(fig, path)
