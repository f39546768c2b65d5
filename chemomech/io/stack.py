"""The stack file: one HDF5 file holding the maps of one or more particles (DESIGN §3).

Layout::

    /                      attrs: format="chemomech-stack", version=1
    /particles/<name>/     attrs: pixel_size_nm, rotation_rad, strain_frame, theta_sign,
                                  reference, source
        X                  float64 (nx, ny), NaN outside the particle
        e_xx e_yy e_xy theta   float64 (nx, ny), strain in `strain_frame`, NaN if unmeasured
        mask               uint8 (nx, ny), 1 inside the particle
        thickness, dark_field  (optional) float64 (nx, ny)
        truth/             (optional) arrays as datasets, scalars/strings/lists as attrs,
                           nested dicts as sub-groups

Every reader converts to `ParticleData`; `write_stack` / `read_stack` move it to and from disk.
Images are indexed [i, j] with x = axis 0 = i h, y = axis 1 = j h (h = pixel size in nm).
Pure numpy/scipy/h5py: no DOLFINx here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy import ndimage

from chemomech.exceptions import InputError
from chemomech.io.results import atomic_path

logger = logging.getLogger(__name__)

STACK_FORMAT = "chemomech-stack"
STACK_VERSION = 1
STRAIN_FIELDS = ("e_xx", "e_yy", "e_xy", "theta")
MAP_FIELDS = ("X", *STRAIN_FIELDS)
OPTIONAL_MAP_FIELDS = ("thickness", "dark_field")
STRAIN_FRAMES = ("crystal", "image")

#: Tolerance on X outside [0, 1] inside the mask (values within it are clipped).
X_TOLERANCE = 0.02
#: A median |strain| above this is taken as strain given in percent (dimensionless expected).
PERCENT_STRAIN_MEDIAN = 0.5


def _as_map(value: Any, name: str, path: str | None) -> np.ndarray:
    """A 2-D float64 copy of `value` or an InputError naming `name`."""
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"cannot convert to a float array ({err})", path=path,
                         field=name) from None
    if arr.ndim != 2:
        raise InputError(f"must be a 2-D image [i, j], got shape {arr.shape}", path=path,
                         field=name)
    return arr


def mask_components(mask: np.ndarray) -> int:
    """Number of 4-connected components of a boolean mask (pixels sharing an edge)."""
    _, n = ndimage.label(np.asarray(mask, dtype=bool))
    return int(n)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (the particle without debris)."""
    labels, n = ndimage.label(np.asarray(mask, dtype=bool))
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))


def touches_border(mask: np.ndarray) -> bool:
    """True if the mask has a pixel in the first or last row or column of the image."""
    mask = np.asarray(mask, dtype=bool)
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def check_interior(particle: ParticleData) -> None:
    """InputError (naming file and particle) if the particle touches the image border: its
    boundary, where the mechanical problem is traction-free, is then not known."""
    if touches_border(particle.mask):
        raise InputError(f"particle {particle.name!r} touches the image border, so its "
                         "boundary is not known (M1/M2 mesh it); crop a larger field of view "
                         "or pad the maps", path=particle.file, field="mask")



def interior_pixels(mask: np.ndarray, distance_px: float) -> np.ndarray:
    """Pixels of `mask` farther than `distance_px` (Euclidean, in pixels) from every pixel
    outside it; the image border counts as outside.  distance_px = 0 returns the mask."""
    mask = np.asarray(mask, dtype=bool)
    if distance_px < 0:
        raise InputError(f"must be >= 0, got {distance_px}", field="edge_exclusion_px")
    if distance_px == 0:
        return mask.copy()
    padded = np.pad(mask, 1, constant_values=False)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1] > distance_px

@dataclass
class ParticleData:
    """Maps of one particle: composition X (Li fraction) and the measured strain (dimensionless).

    `rotation_rad` is the angle from image x (axis 0) to crystal a, counter-clockwise;
    `strain_frame` tells whether e_xx, e_yy, e_xy, theta are in the crystal (xx = a) or image
    frame; `theta_sign` is s in H = [[e_xx, e_xy + s theta], [e_xy - s theta, e_yy]].
    `file` is where the data came from (used in error messages only, not stored).
    """

    name: str
    X: np.ndarray
    e_xx: np.ndarray
    e_yy: np.ndarray
    e_xy: np.ndarray
    theta: np.ndarray
    mask: np.ndarray
    pixel_size_nm: float | None
    rotation_rad: float = 0.0
    strain_frame: str = "crystal"
    theta_sign: int = 1
    reference: str = "LiFePO4"
    source: str = ""
    thickness: np.ndarray | None = None
    dark_field: np.ndarray | None = None
    truth: dict[str, Any] = field(default_factory=dict)
    file: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        path = None if self.file is None else str(self.file)
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise InputError(f"particle name must be a non-empty string without '/', "
                             f"got {self.name!r}", path=path, field="name")
        mask = np.asarray(self.mask)
        if mask.ndim != 2:
            raise InputError(f"must be a 2-D image, got shape {mask.shape}", path=path,
                             field="mask")
        if mask.dtype.kind == "f":
            mask = np.nan_to_num(mask, nan=0.0) > 0.5
        self.mask = mask.astype(bool)
        shape = self.mask.shape
        for name in MAP_FIELDS:
            arr = _as_map(getattr(self, name), name, path)
            if arr.shape != shape:
                raise InputError(f"shape {arr.shape} differs from the mask's {shape}",
                                 path=path, field=name)
            setattr(self, name, arr)
        for name in OPTIONAL_MAP_FIELDS:
            if getattr(self, name) is not None:
                arr = _as_map(getattr(self, name), name, path)
                if arr.shape != shape:
                    raise InputError(f"shape {arr.shape} differs from the mask's {shape}",
                                     path=path, field=name)
                setattr(self, name, arr)
        self._validate_mask(path)
        self._validate_composition(path)
        self._validate_strain(path)
        self._validate_scalars(path)
        if not isinstance(self.truth, dict):
            raise InputError("truth must be a dict", path=path, field="truth")

    def _validate_mask(self, path: str | None) -> None:
        n_pixels = int(self.mask.sum())
        if n_pixels == 0:
            raise InputError("mask is empty: no pixel inside the particle", path=path,
                             field="mask")
        n_parts = mask_components(self.mask)
        if n_parts > 1:
            raise InputError(f"mask is fragmented into {n_parts} 4-connected pieces; one "
                             "particle must be one piece (keep the largest with `chemomech import "
                             "--keep-largest`, or split the particles)",
                             path=path, field="mask")

    def _validate_composition(self, path: str | None) -> None:
        inside = self.X[self.mask]
        finite = np.isfinite(inside)
        if not finite.any():
            raise InputError("X is NaN everywhere inside the mask", path=path, field="X")
        if not finite.all():
            raise InputError(f"X is NaN at {int((~finite).sum())} of {finite.size} pixels inside "
                             "the mask; the mask must only cover pixels with a composition",
                             path=path, field="X")
        lo, hi = float(inside[finite].min()), float(inside[finite].max())
        if lo < -X_TOLERANCE or hi > 1.0 + X_TOLERANCE:
            raise InputError(f"Li fraction X must lie in [0, 1] inside the mask, found "
                             f"[{lo:.4g}, {hi:.4g}]", path=path, field="X")
        X = np.clip(self.X, 0.0, 1.0)
        X[~self.mask] = np.nan
        self.X = X

    def _validate_strain(self, path: str | None) -> None:
        for name in STRAIN_FIELDS:
            inside = getattr(self, name)[self.mask]
            finite = inside[np.isfinite(inside)]
            if finite.size == 0:
                raise InputError("NaN everywhere inside the mask", path=path, field=name)
            median = float(np.median(np.abs(finite)))
            if median > PERCENT_STRAIN_MEDIAN:
                unit = "degrees" if name == "theta" else "percent"
                raise InputError(f"median |{name}| = {median:.3g} inside the mask: this looks "
                                 f"like {unit}; chemomech expects dimensionless strain and "
                                 f"rotation in radians (divide by "
                                 f"{'180/pi' if name == 'theta' else '100'})",
                                 path=path, field=name)

    def _validate_scalars(self, path: str | None) -> None:
        h = self.pixel_size_nm
        try:
            h_nm = float(h)
        except (TypeError, ValueError):
            h_nm = math.nan
        if h is None or not np.isscalar(h) or not math.isfinite(h_nm) or h_nm <= 0:
            raise InputError(f"pixel size in nm must be a positive number, got {h!r}; give "
                             "it explicitly (e.g. --pixel-size-nm)", path=path,
                             field="pixel_size_nm")
        self.pixel_size_nm = float(h)
        try:
            rotation = float(self.rotation_rad)
        except (TypeError, ValueError):
            rotation = math.nan
        if not math.isfinite(rotation):
            raise InputError(f"must be finite, got {self.rotation_rad!r}", path=path,
                             field="rotation_rad")
        self.rotation_rad = float(self.rotation_rad)
        if self.strain_frame not in STRAIN_FRAMES:
            raise InputError(f"must be one of {STRAIN_FRAMES}, got {self.strain_frame!r}",
                             path=path, field="strain_frame")
        if self.theta_sign not in (1, -1):
            raise InputError(f"must be +1 or -1, got {self.theta_sign!r}", path=path,
                             field="theta_sign")
        self.theta_sign = int(self.theta_sign)

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (nx, ny)."""
        return self.mask.shape

    @property
    def mean_X(self) -> float:
        """Mean Li fraction over the particle's pixels."""
        return float(np.nanmean(self.X[self.mask]))

    def with_frame(self, rotation_rad: float, theta_sign: int, source_note: str = "",
                   ) -> ParticleData:
        """A copy with another frame (rotation_rad, theta_sign); maps are shared, not copied."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(rotation_rad=rotation_rad, theta_sign=theta_sign)
        if source_note:
            values["source"] = f"{self.source}; {source_note}" if self.source else source_note
        return ParticleData(**values)


# --------------------------------------------------------------------------- writing


def _write_truth(group: h5py.Group, truth: dict[str, Any]) -> None:
    """Arrays -> datasets, dicts -> sub-groups, scalars/strings/lists -> attrs."""
    for key, value in truth.items():
        key = str(key)
        if isinstance(value, dict):
            _write_truth(group.create_group(key), value)
        elif isinstance(value, np.ndarray) and value.ndim >= 1:
            group.create_dataset(key, data=value)
        elif value is None:
            group.attrs[key] = "None"
        else:
            group.attrs[key] = value


def _write_particle(group: h5py.Group, p: ParticleData) -> None:
    group.attrs["pixel_size_nm"] = p.pixel_size_nm
    group.attrs["rotation_rad"] = p.rotation_rad
    group.attrs["strain_frame"] = p.strain_frame
    group.attrs["theta_sign"] = p.theta_sign
    group.attrs["reference"] = p.reference
    group.attrs["source"] = p.source
    for name in MAP_FIELDS + OPTIONAL_MAP_FIELDS:
        arr = getattr(p, name)
        if arr is not None:
            group.create_dataset(name, data=np.asarray(arr, dtype=np.float64),
                                 compression="gzip", compression_opts=4)
    group.create_dataset("mask", data=p.mask.astype(np.uint8), compression="gzip",
                         compression_opts=4)
    if p.truth:
        _write_truth(group.create_group("truth"), p.truth)


def _write_stack_file(path: Path, particles: list[ParticleData]) -> None:
    """Write to a temporary file in the same folder, then rename over `path`."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = STACK_FORMAT
        f.attrs["version"] = STACK_VERSION
        root = f.create_group("particles")
        for p in particles:
            _write_particle(root.create_group(p.name), p)


def write_stack(path: str | Path, particles: ParticleData | Iterable[ParticleData],
                comm: Any = None) -> Path:
    """Write particles to an HDF5 stack file atomically (temporary file + rename).

    With an MPI communicator `comm`, rank 0 writes and every rank returns (or raises) together.
    """
    path = Path(path)
    if isinstance(particles, ParticleData):
        particles = [particles]
    particles = list(particles)
    if not particles:
        raise InputError("no particle to write", path=str(path), field="particles")
    names = [p.name for p in particles]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"duplicate particle names {duplicates}", path=str(path),
                         field="particles")
    if comm is None or comm.size == 1:
        _write_stack_file(path, particles)
    else:
        failure = None
        if comm.rank == 0:
            try:
                _write_stack_file(path, particles)
            except Exception as err:
                failure = err
        message = comm.bcast(None if failure is None else f"{type(failure).__name__}: "
                             f"{failure}", root=0)
        if failure is not None:
            raise failure
        if message is not None:
            raise InputError(f"writing failed on rank 0: {message}", path=str(path))
    logger.info("wrote %d particle(s) %s to %s", len(particles), names, path)
    return path


# --------------------------------------------------------------------------- reading


def _attr_value(value: Any) -> Any:
    """HDF5 attribute -> plain Python (arrays become lists, numpy scalars Python scalars)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value == "None":
        return None
    return value


def _read_truth(group: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {key: _attr_value(v) for key, v in group.attrs.items()}
    for key, item in group.items():
        out[key] = _read_truth(item) if isinstance(item, h5py.Group) else item[()]
    return out


def is_stack_file(path: str | Path) -> bool:
    """True when `path` is an HDF5 file whose root attribute format is "chemomech-stack"."""
    try:
        with h5py.File(path, "r") as f:
            return _attr_value(f.attrs.get("format", "")) == STACK_FORMAT
    except OSError:
        return False


def list_particles(path: str | Path) -> list[str]:
    """Names of the particles in a stack file, in stored (alphabetical) order."""
    with _open_stack(path) as f:
        return list(f["particles"].keys())


def open_hdf5(path: str | Path) -> h5py.File:
    """Open an HDF5 file for reading; a missing, truncated or corrupt file is an InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path=str(path))
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"not a readable HDF5 file (truncated or corrupt?): {err}",
                         path=str(path)) from None


def _open_stack(path: str | Path) -> h5py.File:
    path = Path(path)
    f = open_hdf5(path)
    fmt = _attr_value(f.attrs.get("format", None))
    version = _attr_value(f.attrs.get("version", None))
    if fmt != STACK_FORMAT or "particles" not in f:
        f.close()
        raise InputError(f"not a chemomech stack file (format attribute {fmt!r}, expected "
                         f"{STACK_FORMAT!r})", path=str(path), field="format")
    if version != STACK_VERSION:
        f.close()
        raise InputError(f"unsupported stack version {version!r} (this chemomech reads "
                         f"{STACK_VERSION})", path=str(path), field="version")
    return f


def _read_particle(group: h5py.Group, name: str, path: str) -> ParticleData:
    def need(key: str) -> Any:
        if key in group:
            return group[key][()]
        if key in group.attrs:
            return _attr_value(group.attrs[key])
        raise InputError("missing", path=path, field=f"particles/{name}/{key}")

    def attr(key: str, default: Any) -> Any:
        return _attr_value(group.attrs[key]) if key in group.attrs else default

    values: dict[str, Any] = {key: need(key) for key in (*MAP_FIELDS, "mask")}
    values["pixel_size_nm"] = attr("pixel_size_nm", None)
    for key in OPTIONAL_MAP_FIELDS:
        values[key] = group[key][()] if key in group else None
    truth = _read_truth(group["truth"]) if "truth" in group else {}
    return ParticleData(name=name, rotation_rad=attr("rotation_rad", 0.0),
                        strain_frame=attr("strain_frame", "crystal"),
                        theta_sign=int(attr("theta_sign", 1)),
                        reference=attr("reference", "LiFePO4"), source=attr("source", ""),
                        truth=truth, file=path, **values)


def read_stack(path: str | Path, names: Sequence[str] | None = None) -> list[ParticleData]:
    """Read particles (all, or those in `names`, in that order) from an HDF5 stack file."""
    path_str = str(path)
    f = _open_stack(path)
    try:
        available = list(f["particles"].keys())
        if not available:
            raise InputError("the stack holds no particle", path=path_str, field="particles")
        wanted = available if names is None else list(names)
        missing = [n for n in wanted if n not in available]
        if missing:
            raise InputError(f"particles {missing} not in the file (it has {available})",
                             path=path_str, field="particles")
        out = []
        for name in wanted:
            try:
                out.append(_read_particle(f["particles"][name], name, path_str))
            except (OSError, KeyError, RuntimeError) as err:
                raise InputError(f"unreadable data (truncated or corrupt?): {err}",
                                 path=path_str, field=f"particles/{name}") from None
    finally:
        f.close()
    logger.info("read %d particle(s) from %s", len(out), path_str)
    return out
