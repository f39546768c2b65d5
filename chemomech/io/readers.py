"""Readers of real data files, all converting to `ParticleData` and the stack file (DESIGN §3).

- the reference study's MATLAB file (`read_reference_mat`, v5 by scipy or v7.3 by h5py);
- py4DSTEM strain maps (`read_py4dstem_strain`, DESIGN §6): the 2019 layout of the study
  (`realslices/strain_map_rotated_by_<deg>/{e_xx, ...}`, string mask, DF_image), legacy v0.12
  `/<top>/data/realslices/<name>/data` (Rx, Ry, N) with labels in `dim3`, and the v0.14 EMD
  Array (`data` (N, Rx, Ry), labels in `dim2` named `_labels_`, pixel size from the root's
  calibration);
- composition maps (`read_composition_map`): .npz, TIFF (tifffile), HDF5 (generic datasets or a
  chemomech composition file), holding X or the thicknesses t_LFP, t_FP;
- a whole particle as plain .npz (`read_particle_npz`).

`chemomech.correlative.importing` combines them into a stack file (`chemomech import`).
Pure numpy/scipy/h5py: no DOLFINx here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from chemomech.exceptions import InputError
from chemomech.io.py4dstem import StrainMaps, find_strain_groups, read_py4dstem_strain
from chemomech.io.stack import (
    ParticleData,
    is_stack_file,
    largest_component,
    open_hdf5,
    read_stack,
)

logger = logging.getLogger(__name__)

#: Pixel size of LFP50_P2.mat (not stored in the file), inferred from the particle's known size.
REFERENCE_MAT_PIXEL_SIZE_NM = 16.6
#: Particle threshold on the X-ray thickness sum FP + LFP in the reference .mat files.
REFERENCE_MAT_THRESHOLD = 0.10
#: Variables the reference .mat must hold.
REFERENCE_MAT_FIELDS = ("FP", "LFP", "exx", "eyy", "exy", "theta", "rot")


# --------------------------------------------------------------------------- .mat


def _load_mat(path: Path) -> dict[str, np.ndarray]:
    """Variables of a MATLAB file: v7.3 (HDF5, column-major) via h5py, v4-v7 via scipy."""
    import scipy.io
    from scipy.io.matlab import MatReadError

    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as f:
                return {k: np.asarray(v[()]).T for k, v in f.items()
                        if isinstance(v, h5py.Dataset)}
        except OSError as err:
            raise InputError(f"not a readable MATLAB v7.3 file (truncated?): {err}",
                             path=str(path)) from None
    try:
        data = scipy.io.loadmat(path)
    except (MatReadError, NotImplementedError, ValueError, OSError, TypeError) as err:
        raise InputError(f"not a readable MATLAB file (truncated or corrupt?): {err}",
                         path=str(path)) from None
    return {k: np.asarray(v) for k, v in data.items() if not k.startswith("__")}


def read_reference_mat(path: str | Path, *, pixel_size_nm: float = REFERENCE_MAT_PIXEL_SIZE_NM,
                       rotation: str | float = "documented", theta_sign: int = 1,
                       threshold: float = REFERENCE_MAT_THRESHOLD,
                       name: str | None = None, keep_largest: bool = False) -> ParticleData:
    """The reference study's particle: X = LFP / (LFP + FP), crystal-frame strain, mask FP+LFP>0.1.

    `rotation`: "documented" (default) uses -rot (the file's rot is for MATLAB's x = column
    convention; -rot is the most compatible frame in our x = axis-0 convention, DESIGN §3,
    checked by `chemomech.correlative.frames.frame_check`), "file" uses rot as stored, a number
    overrides.
    Pixels with theta == 0 or 1, or a strain component == 1, are outside the measurement.
    `keep_largest` keeps the largest connected piece of the mask (debris dropped).
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path=str(path))
    data = _load_mat(path)
    for key in REFERENCE_MAT_FIELDS:
        if key not in data:
            raise InputError(f"variable missing (has {sorted(data)})", path=str(path), field=key)
    maps = {k: np.asarray(data[k], dtype=float) for k in REFERENCE_MAT_FIELDS if k != "rot"}
    rot = np.asarray(data["rot"], dtype=float).ravel()
    if rot.size != 1 or not np.isfinite(rot[0]):
        raise InputError(f"must be one finite angle in rad, got {data['rot']!r}",
                         path=str(path), field="rot")
    file_rot = float(rot[0])
    if rotation == "documented":
        rotation_rad, how = -file_rot, f"-rot = {-file_rot:.4f} rad (documented, DESIGN §3)"
    elif rotation == "file":
        rotation_rad, how = file_rot, f"rot = {file_rot:.4f} rad as stored (MATLAB x = column)"
    else:
        rotation_rad, how = float(rotation), f"{float(rotation):.4f} rad given by the user"
    shape = maps["FP"].shape
    for key, arr in maps.items():
        if arr.ndim != 2 or arr.shape != shape:
            raise InputError(f"shape {arr.shape} differs from FP's {shape}", path=str(path),
                             field=key)
    thickness = maps["FP"] + maps["LFP"]
    mask = thickness > threshold
    if keep_largest:
        mask = largest_component(mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        X = np.where(mask, maps["LFP"] / np.where(mask, thickness, 1.0), np.nan)
    outside = ((maps["theta"] == 0) | (maps["theta"] == 1) | np.isclose(maps["exx"], 1.0)
               | np.isclose(maps["eyy"], 1.0) | np.isclose(maps["exy"], 1.0))
    strain = {k: np.where(outside, np.nan, maps[k]) for k in ("exx", "eyy", "exy", "theta")}
    unmeasured = int((mask & outside).sum())
    if unmeasured:
        logger.warning("%s: %d particle pixels have no strain measurement (NaN)", path,
                       unmeasured)
    dark_field = np.asarray(data["HAADF"], dtype=float) if "HAADF" in data else None
    if dark_field is not None and dark_field.shape != shape:
        dark_field = None
    source = (f"{path.name}: reference-study .mat; X = LFP/(LFP+FP); mask FP+LFP > "
              f"{threshold}; pixel size {pixel_size_nm} nm (not stored in the file); rotation "
              f"{how}; theta_sign {theta_sign:+d}; thickness = FP+LFP, dark_field = HAADF")
    return ParticleData(name=name or path.stem, X=X, e_xx=strain["exx"], e_yy=strain["eyy"],
                        e_xy=strain["exy"], theta=strain["theta"], mask=mask,
                        pixel_size_nm=pixel_size_nm, rotation_rad=rotation_rad,
                        strain_frame="crystal", theta_sign=theta_sign, source=source,
                        thickness=thickness, dark_field=dark_field, file=str(path))


# --------------------------------------------------------------------------- composition


@dataclass
class CompositionMap:
    """Li fraction X (NaN outside), the particle mask, and optionally the thickness map
    t_LFP + t_FP (or an optical-density image standing in for it) on the same X-ray grid."""

    X: np.ndarray
    mask: np.ndarray
    thickness: np.ndarray | None = None
    source: str = ""


def _morphology_image(arrays: dict[str, np.ndarray], keys: dict[str, str], lfp: str | None,
                      fp: str | None) -> tuple[np.ndarray | None, str]:
    """The X-ray thickness: 'thickness', t_LFP + t_FP, or an OD image ('od'; a stack
    (energies, nx, ny) is averaged over energies), with the name of its source."""
    if "thickness" in keys:
        return np.asarray(arrays[keys["thickness"]], dtype=float), keys["thickness"]
    if lfp and fp:
        return (np.asarray(arrays[lfp], dtype=float) + np.asarray(arrays[fp], dtype=float),
                f"{lfp}+{fp}")
    if "od" in keys:
        od = np.asarray(arrays[keys["od"]], dtype=float)
        return (od.mean(axis=0) if od.ndim == 3 else od), f"mean {keys['od']}"
    return None, ""


def _otsu_mask(image: np.ndarray) -> tuple[np.ndarray, float]:
    """image > Otsu's threshold (unit-free: thickness or OD in any units)."""
    from skimage.filters import threshold_otsu

    finite = image[np.isfinite(image)]
    if finite.size == 0 or np.ptp(finite) == 0:
        raise InputError("the thickness/OD image is uniform: cannot make a particle mask",
                         field="thickness")
    cut = float(threshold_otsu(finite))
    return np.nan_to_num(image, nan=-np.inf) > cut, cut


def _composition_from_arrays(arrays: dict[str, np.ndarray], path: Path, threshold: float,
                             ) -> CompositionMap:
    """X given directly or from t_LFP, t_FP thicknesses; the mask is, in this order, a 'mask'
    array, the thickness (or OD) above Otsu's threshold, or the finite pixels of X."""
    keys = {k.lower(): k for k in arrays}
    lfp = next((keys[k] for k in ("t_lfp", "lfp") if k in keys), None)
    fp = next((keys[k] for k in ("t_fp", "fp") if k in keys), None)
    if lfp and fp and np.shape(arrays[lfp]) != np.shape(arrays[fp]):
        raise InputError(f"{lfp} {np.shape(arrays[lfp])} and {fp} {np.shape(arrays[fp])} "
                         "differ", path=str(path), field=fp)
    thickness, thickness_name = _morphology_image(arrays, keys, lfp, fp)
    if "x" in keys:
        X = np.asarray(arrays[keys["x"]], dtype=float)
        if thickness is not None and thickness.shape != X.shape:
            raise InputError(f"{thickness_name} {thickness.shape} and X {X.shape} differ",
                             path=str(path), field=thickness_name)
        if "mask" in keys:
            mask = np.asarray(arrays[keys["mask"]]) > 0.5
            how = "X and mask as stored"
        elif thickness is not None:
            mask, cut = _otsu_mask(thickness)
            how = f"X as stored, mask {thickness_name} > {cut:.4g} (Otsu)"
        else:
            mask = np.isfinite(X)
            how = "X as stored, mask = finite X"
            logger.warning("%s: no mask and no thickness/OD: every finite X pixel counts as "
                           "particle (X = 0 outside it would count as data)", path)
        mask &= np.isfinite(X)
        X = np.where(mask, X, np.nan)
    elif lfp and fp:
        t_lfp = np.asarray(arrays[lfp], dtype=float)
        mask = thickness > threshold
        with np.errstate(invalid="ignore", divide="ignore"):
            X = np.where(mask, t_lfp / np.where(mask, thickness, 1.0), np.nan)
        how = f"X = {lfp}/({lfp}+{fp}), mask {lfp}+{fp} > {threshold}"
    else:
        raise InputError(f"need 'X' or thicknesses 't_LFP' and 't_FP' (has {sorted(arrays)})",
                         path=str(path), field="X")
    if X.ndim != 2:
        raise InputError(f"must be a 2-D image, got shape {X.shape}", path=str(path), field="X")
    return CompositionMap(X=X, mask=mask, thickness=thickness, source=f"{path.name}: {how}")


def read_composition_map(path: str | Path, *, threshold: float = REFERENCE_MAT_THRESHOLD,
                         ) -> CompositionMap:
    """Li fraction X from .npz, TIFF (X, or pages t_LFP, t_FP) or HDF5 (X or t_LFP, t_FP)."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path=str(path))
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _composition_from_arrays(_load_npz(path, ()), path, threshold)
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            image = np.asarray(tifffile.imread(path), dtype=float)
        except Exception as err:  # tifffile raises several exception types
            raise InputError(f"not a readable TIFF file: {err}", path=str(path)) from None
        if image.ndim == 2:
            return _composition_from_arrays({"X": image}, path, threshold)
        if image.ndim == 3 and image.shape[0] == 2:
            return _composition_from_arrays({"t_LFP": image[0], "t_FP": image[1]}, path,
                                            threshold)
        raise InputError(f"TIFF must be one X image or two pages (t_LFP, t_FP), got shape "
                         f"{image.shape}", path=str(path), field="X")
    with open_hdf5(path) as f:
        arrays = {k: v[()] for k, v in f.items()
                  if isinstance(v, h5py.Dataset) and v.ndim in (2, 3)}
    return _composition_from_arrays(arrays, path, threshold)


# --------------------------------------------------------------------------- particles


def _load_npz(path: Path, required: Sequence[str]) -> dict[str, np.ndarray]:
    """All arrays of an .npz file; a missing required array is an InputError naming it."""
    import zipfile

    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle
        raise InputError("not a readable .npz file (not a zip archive; truncated or "
                         "corrupt?)", path=str(path))
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"not a readable .npz file: {err}", path=str(path)) from None
    for key in required:
        if key not in arrays:
            raise InputError(f"array missing (has {sorted(arrays)})", path=str(path), field=key)
    return arrays


def read_particle_npz(path: str | Path, *, name: str | None = None,
                      pixel_size_nm: float | None = None,
                      keep_largest: bool = False) -> ParticleData:
    """A whole particle from .npz: X, e_xx, e_yy, e_xy, theta, mask (+ scalar frame keys);
    `keep_largest` keeps the largest connected piece of the mask."""
    path = Path(path)
    arrays = _load_npz(path, ("X", "e_xx", "e_yy", "e_xy", "theta", "mask"))

    def scalar(key: str, default: Any) -> Any:
        return arrays[key].item() if key in arrays else default

    mask = largest_component(arrays["mask"]) if keep_largest else arrays["mask"]
    return ParticleData(name=name or str(scalar("name", path.stem)), X=arrays["X"],
                        e_xx=arrays["e_xx"], e_yy=arrays["e_yy"], e_xy=arrays["e_xy"],
                        theta=arrays["theta"],
                        mask=mask,
                        pixel_size_nm=pixel_size_nm or scalar("pixel_size_nm", None),
                        rotation_rad=scalar("rotation_rad", 0.0),
                        strain_frame=str(scalar("strain_frame", "crystal")),
                        theta_sign=int(scalar("theta_sign", 1)),
                        source=f"{path.name}: plain .npz", file=str(path))


def read_strain_npz(path: str | Path) -> StrainMaps:
    """Strain maps from .npz: e_xx, e_yy, e_xy, theta (+ optional mask, pixel_size_nm, and a
    dark-field image `dark_field` or `HAADF`)."""
    path = Path(path)
    arrays = _load_npz(path, ("e_xx", "e_yy", "e_xy", "theta"))
    h = arrays["pixel_size_nm"].item() if "pixel_size_nm" in arrays else None
    dark = next((arrays[k] for k in ("dark_field", "HAADF") if k in arrays), None)
    return StrainMaps(arrays["e_xx"], arrays["e_yy"], arrays["e_xy"], arrays["theta"],
                      arrays.get("mask"), h, f"{path.name}: strain .npz",
                      dark_field=None if dark is None else np.asarray(dark, dtype=float))


def combine_strain_and_composition(strain: StrainMaps, composition: CompositionMap, *,
                                   name: str, pixel_size_nm: float | None = None,
                                   rotation_rad: float | None = None,
                                   strain_frame: str | None = None, theta_sign: int = 1,
                                   strain_path: str | None = None,
                                   keep_largest: bool = False) -> ParticleData:
    """One particle from registered maps: mask = composition mask & strain mask (if any).

    The frame is the one given, else the strain file's (`StrainMaps.rotation_rad`,
    `strain_frame`), else the image frame at rotation 0.
    """
    where = strain_path
    shape = strain.e_xx.shape
    if composition.X.shape != shape:
        raise InputError(f"composition map {composition.X.shape} and strain map {shape} differ: "
                         "register the X-ray map onto the 4D-STEM grid first",
                         path=where, field="X")
    mask = composition.mask & np.isfinite(composition.X)
    if strain.mask is not None:
        mask &= np.nan_to_num(strain.mask) > 0.5
    if keep_largest:
        mask = largest_component(mask)
    h = pixel_size_nm if pixel_size_nm is not None else strain.pixel_size_nm
    if rotation_rad is None:
        rotation_rad = strain.rotation_rad if strain.rotation_rad is not None else 0.0
    if strain_frame is None:
        strain_frame = strain.strain_frame or "image"
    source = "; ".join(s for s in (strain.source, composition.source) if s)
    return ParticleData(name=name, X=composition.X, e_xx=strain.e_xx, e_yy=strain.e_yy,
                        e_xy=strain.e_xy, theta=strain.theta, mask=mask, pixel_size_nm=h,
                        rotation_rad=rotation_rad, strain_frame=strain_frame,
                        theta_sign=theta_sign, source=source, thickness=composition.thickness,
                        dark_field=strain.dark_field, file=where)


def _kind(path: Path) -> str:
    """'stack', 'mat', 'npz-particle', 'npz-strain', 'py4dstem' or 'composition' by content."""
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return "mat"
    if suffix == ".npz":
        names = set(_load_npz(path, ()))
        has_strain, has_x = {"e_xx", "e_yy", "e_xy", "theta"} <= names, "X" in names
        if has_strain:
            return "npz-particle" if has_x else "npz-strain"
        return "composition"
    if suffix in (".tif", ".tiff"):
        return "composition"
    if is_stack_file(path):
        return "stack"
    with open_hdf5(path) as f:
        return "py4dstem" if find_strain_groups(f) else "composition"


def read_particles(inputs: Sequence[str | Path], *, name: str | None = None,
                   pixel_size_nm: float | None = None, rotation_rad: float | None = None,
                   strain_frame: str | None = None, theta_sign: int | None = None,
                   mat_rotation: str = "documented", keep_largest: bool = False,
                   group: str | None = None) -> list[ParticleData]:
    """Particles from a stack, a .mat, a particle .npz, or a strain file + a composition file.

    `group` chooses the strain map of a py4DSTEM file holding several (last path component or
    full path); the frame not given here is the strain file's, else the image frame.
    """
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise InputError("no such file", path=str(p))
    kinds = {p: _kind(p) for p in paths}
    if group is not None and "py4dstem" not in kinds.values():
        raise InputError(f"group={group!r} chooses a strain map of a py4DSTEM file, but none "
                         f"is given ({[f'{p} ({kinds[p]})' for p in paths]})", field="group")
    if len(paths) == 1 and kinds[paths[0]] in ("stack", "mat", "npz-particle"):
        p, kind = paths[0], kinds[paths[0]]
        if kind == "stack":
            particles = read_stack(p)
            if name is not None and len(particles) != 1:
                raise InputError(f"a name renames one particle; the stack holds "
                                 f"{len(particles)}", path=str(p), field="name")
        elif kind == "mat":
            rot: str | float = mat_rotation if rotation_rad is None else rotation_rad
            particles = [read_reference_mat(
                p, pixel_size_nm=pixel_size_nm or REFERENCE_MAT_PIXEL_SIZE_NM, rotation=rot,
                theta_sign=theta_sign or 1, name=name, keep_largest=keep_largest)]
        else:
            particles = [read_particle_npz(p, name=name, pixel_size_nm=pixel_size_nm,
                                           keep_largest=keep_largest)]
        overrides = {k: v for k, v in (("rotation_rad", rotation_rad),
                                       ("strain_frame", strain_frame),
                                       ("theta_sign", theta_sign),
                                       ("pixel_size_nm", pixel_size_nm),
                                       ("name", name if kind == "stack" else None))
                     if v is not None}
        if overrides and kind != "mat":
            particles = [_override(q, overrides) for q in particles]
        return particles
    strain_paths = [p for p in paths if kinds[p] in ("py4dstem", "npz-strain")]
    comp_paths = [p for p in paths if kinds[p] == "composition"]
    if len(paths) != 2 or len(strain_paths) != 1 or len(comp_paths) != 1:
        def kind(p: Path) -> str:  # an HDF5 file read as composition holds no strain map
            hdf5 = kinds[p] == "composition" and p.suffix.lower() not in (".npz", ".tif", ".tiff")
            return f"{kinds[p]}: no py4DSTEM strain map found in it" if hdf5 else kinds[p]

        raise InputError(f"give one stack, .mat or particle .npz, or one strain file and one "
                         f"composition file; got {[f'{p} ({kind(p)})' for p in paths]}",
                         path=", ".join(map(str, paths)), field="inputs")
    sp, cp = strain_paths[0], comp_paths[0]
    if kinds[sp] == "py4dstem":
        strain = read_py4dstem_strain(sp, group=group)
    else:
        strain = read_strain_npz(sp)
    composition = read_composition_map(cp)
    return [combine_strain_and_composition(
        strain, composition, name=name or sp.stem, pixel_size_nm=pixel_size_nm,
        rotation_rad=rotation_rad, strain_frame=strain_frame, theta_sign=theta_sign or 1,
        strain_path=str(sp), keep_largest=keep_largest)]


def read_data(data: str | Path | Sequence[str | Path | Sequence[str | Path]],
              particles: str | Sequence[str] = "all", **read_options: Any,
              ) -> list[ParticleData]:
    """The config's `data` (a path, or a list of paths and [strain, composition] pairs) and
    `particles` ("all" or names) as one list of particles with unique names."""
    entries = [data] if isinstance(data, (str, Path)) else list(data)
    out: list[ParticleData] = []
    for entry in entries:
        inputs = [entry] if isinstance(entry, (str, Path)) else list(entry)
        out += read_particles(inputs, **read_options)
    names = [p.name for p in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"particle names {duplicates} occur in more than one input; rename "
                         "them (chemomech import --name)", field="particles")
    if particles != "all":
        wanted = [particles] if isinstance(particles, str) else list(particles)
        missing = [n for n in wanted if n not in names]
        if missing:
            raise InputError(f"particles {missing} not found (have {names})",
                             field="particles")
        out = [out[names.index(n)] for n in wanted]
    return out


def _override(p: ParticleData, values: dict[str, Any]) -> ParticleData:
    q = p.with_frame(values.get("rotation_rad", p.rotation_rad),
                     values.get("theta_sign", p.theta_sign), "frame set by the user")
    q.strain_frame = values.get("strain_frame", p.strain_frame)
    q.pixel_size_nm = values.get("pixel_size_nm", p.pixel_size_nm)
    q.name = values.get("name", p.name)
    return ParticleData(**{k: getattr(q, k) for k in q.__dataclass_fields__})
