"""Li composition X = t_LFP / (t_LFP + t_FP) from X-ray optical-density stacks.

At each pixel the optical density at the energies E_k is a non-negative mix of the
reference spectra of LiFePO4 and FePO4 per unit thickness,
``OD(E_k) = t_LFP mu_LFP(E_k) + t_FP mu_FP(E_k)``, solved by non-negative least squares.
With two unknowns NNLS has a closed form over its four active sets (both free, one of
them zero, both zero), so every pixel is solved at once with array arithmetic.

Inputs: a stack (energies x nx x ny) from TIFF, HDF5 (a dataset path) or an NXstxm NeXus
file (``/entry/data/data`` with the ``energy`` axis beside it), optical density or
transmitted intensity; reference spectra from CSV (energy, od_LFP, od_FP), linearly
interpolated to the stack energies.  Defaults follow the study: 700, 706.2, 706.8,
711.2, 713.4 eV at the Fe L3 edge.

Axes: the two image axes are kept in the file's array order (x = axis 0, y = axis 1).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chemomech.exceptions import InputError

logger = logging.getLogger(__name__)

#: Energies (eV) used in the reference study: one pre-edge, two rising, two falling edges.
DEFAULT_ENERGIES_EV: tuple[float, ...] = (700.0, 706.2, 706.8, 711.2, 713.4)

#: Largest value accepted as an optical density before the input is taken for intensities.
MAX_PLAUSIBLE_OD = 10.0

#: Most negative optical density accepted as noise around a zero background.
MIN_PLAUSIBLE_OD = -1.0


@dataclass(frozen=True, slots=True)
class ReferenceSpectra:
    """Optical density per unit thickness of LiFePO4 and FePO4 versus photon energy (eV)."""

    energy_ev: np.ndarray
    od_lfp: np.ndarray
    od_fp: np.ndarray
    source: str = ""

    def matrix(self, energies_ev) -> np.ndarray:
        """Design matrix A[k] = (mu_LFP(E_k), mu_FP(E_k)), linear interpolation in E (eV)."""
        energies = np.asarray(energies_ev, dtype=float)
        lo, hi = self.energy_ev[0], self.energy_ev[-1]
        outside = (energies < lo - 1e-9) | (energies > hi + 1e-9)
        if outside.any():
            raise InputError(f"stack energies {energies[outside].tolist()} eV lie outside the "
                             f"reference range [{lo}, {hi}] eV (no extrapolation)",
                             path=self.source or None, field="energy")
        A = np.column_stack([np.interp(energies, self.energy_ev, self.od_lfp),
                             np.interp(energies, self.energy_ev, self.od_fp)])
        _check_design_matrix(A, self.source)
        return A


@dataclass(frozen=True, slots=True)
class OpticalDensityStack:
    """Optical density od[k, i, j] at the energies energy_ev[k] (eV)."""

    od: np.ndarray
    energy_ev: np.ndarray
    source: str = ""


@dataclass(frozen=True, slots=True)
class CompositionMaps:
    """Per-pixel fit: X (NaN outside the mask), thicknesses, mask and RMS residual (OD)."""

    X: np.ndarray
    thickness: np.ndarray
    t_lfp: np.ndarray
    t_fp: np.ndarray
    mask: np.ndarray
    residual: np.ndarray
    threshold: float
    energy_ev: np.ndarray


def _check_design_matrix(A: np.ndarray, source: str = "") -> None:
    """Reject reference spectra that cannot separate the two phases (rank < 2)."""
    if A.shape[0] < 2:
        raise InputError(f"need at least 2 energies to separate 2 phases, got {A.shape[0]}",
                         path=source or None, field="energy")
    if np.any(A < 0) or not np.all(np.isfinite(A)):
        raise InputError("reference spectra must be finite and non-negative",
                         path=source or None, field="od_LFP/od_FP")
    singular = np.linalg.svd(A, compute_uv=False)
    if singular[-1] <= 1e-8 * singular[0]:
        raise InputError("the LiFePO4 and FePO4 reference spectra are linearly dependent at "
                         "these energies", path=source or None, field="od_LFP/od_FP")


def model_reference_spectra(energy_ev) -> tuple[np.ndarray, np.ndarray]:
    """Model Fe L3 OD per nm for verification: Fe2+ (LiFePO4) peak 707.8 eV, Fe3+ 709.8 eV."""
    energy_ev = np.asarray(energy_ev, dtype=float)

    def peak(e0: float, width: float, height: float) -> np.ndarray:
        return height * np.exp(-0.5 * ((energy_ev - e0) / width) ** 2)

    edge = 0.0015 / (1 + np.exp(-(energy_ev - 708.5) / 0.8))
    lfp = 0.0008 + edge + peak(707.8, 0.9, 0.0060) + peak(711.5, 1.6, 0.0012)
    fp = 0.0008 + edge + peak(709.8, 1.0, 0.0055) + peak(706.5, 0.8, 0.0010)
    return lfp, fp


def read_reference_spectra(path: str | Path) -> ReferenceSpectra:
    """Reference OD per unit thickness from CSV columns energy (eV), od_LFP, od_FP."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=str(path))
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise InputError("empty reference file", path=str(path))
    header = [h.strip().lower() for h in lines[0].split(",")]
    try:
        [float(h) for h in header]
        columns, body = ["energy", "od_lfp", "od_fp"], lines
    except ValueError:
        columns, body = header, lines[1:]
    try:
        table = np.array([[float(v) for v in ln.split(",")] for ln in body], dtype=float)
    except ValueError as err:
        raise InputError(f"non-numeric value in the reference table: {err}", path=str(path)) \
            from None
    if table.ndim != 2 or table.shape[1] != len(columns) or table.shape[0] < 2:
        raise InputError(f"expected >= 2 rows of {len(columns)} comma-separated columns "
                         f"(energy, od_LFP, od_FP)", path=str(path))

    def column(*names: str) -> np.ndarray:
        for name in names:
            if name in columns:
                return table[:, columns.index(name)]
        raise InputError(f"no column named one of {names}; found {columns}", path=str(path),
                         field=names[0])

    energy = column("energy", "energy_ev", "e", "ev")
    od_lfp = column("od_lfp", "lfp", "lifepo4")
    od_fp = column("od_fp", "fp", "fepo4")
    if np.any(~np.isfinite(table)):
        raise InputError("NaN or infinite value in the reference table", path=str(path))
    if np.any(np.diff(energy) <= 0):
        raise InputError("energies must increase strictly", path=str(path), field="energy")
    return ReferenceSpectra(energy, od_lfp, od_fp, source=str(path))


def optical_density(intensity: np.ndarray, i0: np.ndarray | float | None = None,
                    source: str = "") -> np.ndarray:
    """OD = -ln(I / I0) per energy; I0 defaults to the median of each image's brightest 10 %."""
    intensity = np.asarray(intensity, dtype=float)
    if np.any(intensity <= 0):
        raise InputError(f"{int(np.sum(intensity <= 0))} non-positive transmitted intensities: "
                         "a transmission stack must be > 0 everywhere (OD = -ln(I/I0)); if the "
                         "file already holds optical densities, use quantity='od'",
                         path=source or None, field="intensity")
    if i0 is None:
        flat = intensity.reshape(intensity.shape[0], -1)
        top = np.quantile(flat, 0.9, axis=1, keepdims=True)
        i0 = np.nanmedian(np.where(flat >= top, flat, np.nan), axis=1)[:, None, None]
        logger.info("I0 per energy from the bright background: %s", np.ravel(i0).tolist())
    i0 = np.asarray(i0, dtype=float)
    if np.any(i0 <= 0):
        raise InputError("I0 must be > 0", path=source or None, field="i0")
    return -np.log(intensity / np.reshape(i0, (-1, 1, 1)) if i0.ndim else intensity / i0)


def _nexus_signal(h5file, path: str) -> tuple[str, str | None]:
    """Dataset path of the NXdata signal and of its energy axis in an NXstxm-style file."""
    def nx_class(obj) -> str:
        value = obj.attrs.get("NX_class", b"")
        return value.decode() if isinstance(value, bytes) else str(value)

    entries = [k for k, v in h5file.items() if nx_class(v) == "NXentry"] or \
        [k for k in h5file if k.startswith("entry")]
    for entry_name in entries:
        entry = h5file[entry_name]
        groups = [k for k, v in entry.items() if nx_class(v) == "NXdata"] or \
            [k for k in entry if k == "data"]
        default = entry.attrs.get("default")
        if isinstance(default, bytes):
            default = default.decode()
        if default in groups:
            groups.remove(default)
            groups.insert(0, default)
        for group_name in groups:
            group = entry[group_name]
            signal = group.attrs.get("signal", "data")
            signal = signal.decode() if isinstance(signal, bytes) else str(signal)
            if signal in group:
                energy = "energy" if "energy" in group else None
                base = f"/{entry_name}/{group_name}"
                return f"{base}/{signal}", f"{base}/{energy}" if energy else None
    raise InputError("no NXentry/NXdata signal found (expected /entry/data/data with an "
                     "'energy' axis, NXstxm layout)", path=path)


def read_od_stack(path: str | Path, *, dataset: str | None = None,
                  energies_ev=None, quantity: str = "od",
                  i0: float | None = None) -> OpticalDensityStack:
    """Read an (energies x nx x ny) stack from TIFF, HDF5 or NXstxm; OD = -ln(I/I0) if needed."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=str(path))
    if quantity not in ("od", "transmission"):
        raise InputError(f"quantity must be 'od' or 'transmission', got {quantity!r}",
                         path=str(path), field="quantity")
    file_energies = None
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        data = np.asarray(tifffile.imread(path), dtype=float)
        field = "image stack"
    else:
        from chemomech.io.stack import open_hdf5

        with open_hdf5(path) as h5:
            energy_path = None
            if dataset is None:
                dataset, energy_path = _nexus_signal(h5, str(path))
            if dataset not in h5:
                raise InputError("dataset not found", path=str(path), field=dataset)
            node = h5[dataset]
            data = np.asarray(node[()], dtype=float)
            if energy_path is None:
                sibling = node.parent.get("energy")
                if "energy" in node.attrs:
                    file_energies = np.asarray(node.attrs["energy"], dtype=float)
                elif sibling is not None and sibling.shape == (data.shape[0],):
                    file_energies = np.asarray(sibling[()], dtype=float)
            else:
                file_energies = np.asarray(h5[energy_path][()], dtype=float)
        field = dataset
    if data.ndim != 3:
        raise InputError(f"expected a 3-D stack (energies, nx, ny), got shape {data.shape}",
                         path=str(path), field=field)
    n_energies = data.shape[0]
    if energies_ev is not None:
        energies = np.asarray(energies_ev, dtype=float)
        if file_energies is not None and (file_energies.shape != energies.shape
                                          or not np.allclose(file_energies, energies,
                                                             atol=0.05)):
            raise InputError(f"energies given {energies.tolist()} disagree with the file's "
                             f"{file_energies.tolist()}", path=str(path), field="energy")
    elif file_energies is not None:
        energies = file_energies
    else:
        energies = np.asarray(DEFAULT_ENERGIES_EV)
        logger.info("%s stores no energies: using the study's %s eV", path, energies.tolist())
    if energies.shape != (n_energies,):
        raise InputError(f"the stack has {n_energies} energy images but {energies.size} "
                         f"energies were given ({energies.tolist()})", path=str(path),
                         field="energy")
    if np.isnan(data).any():
        raise InputError(f"{int(np.isnan(data).sum())} NaN values in the stack (fill or crop "
                         "them before fitting)", path=str(path), field=field)
    if quantity == "transmission":
        od = optical_density(data, i0, source=str(path))
    else:
        od = data
        _check_optical_density(od, str(path), field)
    return OpticalDensityStack(od, energies, source=str(path))


def _check_optical_density(od: np.ndarray, source: str, field: str) -> None:
    """Optical densities lie in about [0, 5]; intensities or counts do not."""
    if not np.all(np.isfinite(od)):
        raise InputError("NaN or infinite optical density", path=source or None, field=field)
    if od.max() > MAX_PLAUSIBLE_OD:
        raise InputError(f"values up to {od.max():.4g} are not optical densities "
                         f"(OD = -ln(I/I0) stays below ~{MAX_PLAUSIBLE_OD:g}): this looks "
                         "like transmitted intensity, use quantity='transmission'",
                         path=source or None, field=field)
    if od.min() < MIN_PLAUSIBLE_OD:
        raise InputError(f"optical density down to {od.min():.4g}: OD is >= 0 apart from "
                         "noise; check the I0 normalisation or the sign", path=source or None,
                         field=field)


def nnls_two_components(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form min ||A t - b|| s.t. t >= 0 for A (m, 2), b (m, N): t (2, N), RMS residual.

    The convex problem's minimiser is the unconstrained solution when it is feasible, otherwise
    the better of the two clipped one-component fits t_i = max(a_i.b, 0) / |a_i|^2.
    """
    A = np.asarray(A, dtype=float)
    b = np.asarray(b, dtype=float)
    if b.ndim == 1:
        b = b[:, None]
    G = A.T @ A
    c = A.T @ b                                            # (2, N)
    det = G[0, 0] * G[1, 1] - G[0, 1] ** 2
    if det <= 1e-12 * G[0, 0] * G[1, 1]:
        raise InputError("reference spectra are linearly dependent", field="od_LFP/od_FP")
    t = np.array([G[1, 1] * c[0] - G[0, 1] * c[1], G[0, 0] * c[1] - G[0, 1] * c[0]]) / det
    infeasible = (t < 0).any(axis=0)
    one = np.maximum(c, 0.0) / np.diag(G)[:, None]         # clipped one-component fits
    gain = one * np.maximum(c, 0.0)                        # ||b||^2 - residual^2 of each
    use_lfp = gain[0] >= gain[1]
    single = np.where(use_lfp, [[1.0], [0.0]], [[0.0], [1.0]]) * one
    t = np.where(infeasible, single, t)
    residual = np.sqrt(np.mean((A @ t - b) ** 2, axis=0))
    return t, residual


def particle_mask(thickness: np.ndarray, threshold: float,
                  largest_component: bool = True) -> np.ndarray:
    """mask = thickness > threshold, optionally only its largest 4-connected part (voids kept)."""
    from chemomech.io.stack import largest_component as keep_largest

    mask = np.asarray(thickness > threshold)
    return keep_largest(mask) if largest_component and mask.any() else mask


def thickness_threshold(thickness: np.ndarray, threshold: float | None = None,
                        threshold_fraction: float | None = None) -> float:
    """The mask threshold: given, a fraction of max thickness, or Otsu's (default)."""
    if threshold is not None and threshold_fraction is not None:
        raise InputError("give threshold or threshold_fraction, not both", field="threshold")
    if threshold is not None:
        return float(threshold)
    if threshold_fraction is not None:
        if not 0 < threshold_fraction < 1:
            raise InputError(f"threshold_fraction must be in (0, 1), got {threshold_fraction}",
                             field="threshold_fraction")
        return float(threshold_fraction * np.max(thickness))
    from skimage.filters import threshold_otsu

    if np.ptp(thickness) == 0:
        raise InputError("the fitted thickness is uniform: no particle to threshold",
                         field="thickness")
    return float(threshold_otsu(thickness))


def fit_composition(od: np.ndarray, A: np.ndarray, *, energy_ev=None,
                    threshold: float | None = None, threshold_fraction: float | None = None,
                    largest_component: bool = True) -> CompositionMaps:
    """Per-pixel NNLS of od[k] = A[k, 0] t_LFP + A[k, 1] t_FP; X = t_LFP / (t_LFP + t_FP)."""
    od = np.asarray(od, dtype=float)
    A = np.asarray(A, dtype=float)
    if od.ndim != 3:
        raise InputError(f"optical density must be (energies, nx, ny), got {od.shape}",
                         field="od")
    if A.shape != (od.shape[0], 2):
        raise InputError(f"{od.shape[0]} energy images but the references give {A.shape[0]} "
                         "energies", field="energy")
    if not np.all(np.isfinite(od)):
        raise InputError("NaN or infinite optical density", field="od")
    _check_design_matrix(A)
    n_energies, nx, ny = od.shape
    t, residual = nnls_two_components(A, od.reshape(n_energies, -1))
    t_lfp, t_fp = t[0].reshape(nx, ny), t[1].reshape(nx, ny)
    residual = residual.reshape(nx, ny)
    thickness = t_lfp + t_fp
    cut = thickness_threshold(thickness, threshold, threshold_fraction)
    mask = particle_mask(thickness, cut, largest_component)
    if not mask.any():
        raise InputError(f"no pixel is thicker than the threshold {cut:.4g}", field="threshold")
    with np.errstate(invalid="ignore", divide="ignore"):
        X = np.where(mask & (thickness > 0), t_lfp / thickness, np.nan)
    logger.info("composition: %d particle pixels (threshold %.4g), mean X %.3f, RMS residual "
                "%.3g OD", mask.sum(), cut, np.nanmean(X), np.sqrt(np.mean(residual[mask]**2)))
    return CompositionMaps(X=X, thickness=thickness, t_lfp=t_lfp, t_fp=t_fp, mask=mask,
                           residual=residual, threshold=cut,
                           energy_ev=np.asarray(energy_ev if energy_ev is not None
                                                else np.full(n_energies, np.nan), dtype=float))


def composition_from_files(stack_path: str | Path, references_path: str | Path, *,
                           dataset: str | None = None, energies_ev=None, quantity: str = "od",
                           i0: float | None = None, threshold: float | None = None,
                           threshold_fraction: float | None = None,
                           largest_component: bool = True) -> CompositionMaps:
    """Read a stack and reference spectra and fit X per pixel (see `fit_composition`)."""
    stack = read_od_stack(stack_path, dataset=dataset, energies_ev=energies_ev,
                          quantity=quantity, i0=i0)
    references = read_reference_spectra(references_path)
    A = references.matrix(stack.energy_ev)
    return fit_composition(stack.od, A, energy_ev=stack.energy_ev, threshold=threshold,
                           threshold_fraction=threshold_fraction,
                           largest_component=largest_component)


def write_composition(maps: CompositionMaps, path: str | Path, source: str = "") -> Path:
    """Write the maps to HDF5: X, thickness, t_LFP, t_FP, mask (uint8), residual (OD)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs.update(format="chemomech-composition", version=1, threshold=maps.threshold,
                       energy_ev=maps.energy_ev, source=source)
        for name, value in (("X", maps.X), ("thickness", maps.thickness),
                            ("t_LFP", maps.t_lfp), ("t_FP", maps.t_fp),
                            ("residual", maps.residual)):
            f.create_dataset(name, data=np.asarray(value, dtype=float))
        f.create_dataset("mask", data=maps.mask.astype(np.uint8))
    return path


def read_composition(path: str | Path) -> CompositionMaps:
    """Read maps written by `write_composition`."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=str(path))
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != "chemomech-composition":
            raise InputError("not a chemomech composition file", path=str(path), field="format")
        return CompositionMaps(X=f["X"][()], thickness=f["thickness"][()], t_lfp=f["t_LFP"][()],
                               t_fp=f["t_FP"][()], mask=f["mask"][()].astype(bool),
                               residual=f["residual"][()], threshold=float(f.attrs["threshold"]),
                               energy_ev=np.asarray(f.attrs["energy_ev"], dtype=float))


def add_composition_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `chemomech composition`."""
    parser.add_argument("stack", help="OD or transmission stack: .tif, .h5 or NXstxm .nxs")
    parser.add_argument("references", help="CSV: energy (eV), od_LFP, od_FP per unit thickness")
    parser.add_argument("-o", "--output", default="composition.h5", help="output HDF5")
    parser.add_argument("--dataset", default=None,
                        help="HDF5 dataset path (default: the NXstxm /entry/data/data signal)")
    parser.add_argument("--energies", type=float, nargs="+", default=None,
                        help="energies in eV (default: from the file, else 700 706.2 706.8 "
                             "711.2 713.4)")
    parser.add_argument("--quantity", choices=("od", "transmission"), default="od",
                        help="what the stack holds (transmission: OD = -ln(I/I0))")
    parser.add_argument("--i0", type=float, default=None,
                        help="incident intensity (default: bright background per energy)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="thickness threshold of the particle mask (default: Otsu)")
    parser.add_argument("--threshold-fraction", type=float, default=None,
                        help="threshold as a fraction of the maximum thickness")
    parser.add_argument("--all-components", action="store_true",
                        help="keep every part above threshold (default: the largest)")


def cmd_composition(args: argparse.Namespace) -> int:
    """`chemomech composition STACK REFERENCES -o OUT.h5`: per-pixel NNLS composition."""
    maps = composition_from_files(args.stack, args.references, dataset=args.dataset,
                                  energies_ev=args.energies, quantity=args.quantity, i0=args.i0,
                                  threshold=args.threshold,
                                  threshold_fraction=args.threshold_fraction,
                                  largest_component=not args.all_components)
    out = write_composition(maps, args.output, source=str(args.stack))
    logger.info("wrote %s", out)
    return 0
