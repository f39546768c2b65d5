"""py4DSTEM strain maps (DESIGN §6): the 2019 layout, v0.12 realslices and v0.14 EMD arrays."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from chemomech.exceptions import InputError
from chemomech.io.stack import (
    open_hdf5,
)

logger = logging.getLogger(__name__)

#: Label aliases of py4DSTEM strain slices -> our field names.
STRAIN_LABELS = {"e_xx": ("e_xx", "exx"), "e_yy": ("e_yy", "eyy"), "e_xy": ("e_xy", "exy"),
                 "theta": ("theta",), "mask": ("mask",)}
LENGTH_UNITS_NM = {"nm": 1.0, "a": 0.1, "å": 0.1, "angstrom": 0.1, "angstroms": 0.1,
                   "um": 1e3, "µm": 1e3, "pm": 1e-3}




@dataclass
class StrainMaps:
    """Strain maps (dimensionless, rad; NaN where not measured) with an optional validity mask,
    pixel size (nm), the frame the file states and an optional dark-field image.

    `rotation_rad` / `strain_frame` are what the file says (None: it says nothing, and the
    maps are taken as image-frame strain).
    """

    e_xx: np.ndarray
    e_yy: np.ndarray
    e_xy: np.ndarray
    theta: np.ndarray
    mask: np.ndarray | None = None
    pixel_size_nm: float | None = None
    source: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    rotation_rad: float | None = None
    strain_frame: str | None = None
    dark_field: np.ndarray | None = None


#: py4DSTEM of 2019 names a rotated strain map `strain_map_rotated_by_<degrees>`.
ROTATED_BY = re.compile(r"_rotated_by_(-?\d+(?:\.\d+)?)(?:_?deg)?$")
#: Per-label datasets of the 2019 layout's strain group.
LABELS_2019 = ("e_xx", "e_yy", "e_xy", "theta")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_labels(dataset: h5py.Dataset) -> list[str]:
    return [_text(v) for v in np.asarray(dataset[()]).ravel()]


def _is_label_dim(dataset: h5py.Dataset) -> bool:
    return dataset.dtype.kind in ("S", "O", "U") or _text(dataset.attrs.get("name", b"")) \
        == "_labels_"


def _length_nm(value: float, units: str) -> float | None:
    """value (in `units`) in nm, or None when the units are not a length (e.g. 'pixels')."""
    factor = LENGTH_UNITS_NM.get(units.strip().lower())
    return value * factor if factor is not None and value > 0 else None


def _dim_pixel_size_nm(group: h5py.Group, key: str) -> float | None:
    """Pixel size from an EMD dim vector [x0, x1, ...] whose units are a length, else None."""
    if key not in group or not isinstance(group[key], h5py.Dataset):
        return None
    dim = group[key]
    values = np.asarray(dim[()], dtype=float).ravel() if dim.dtype.kind in "fiu" else None
    if values is None or values.size < 2:
        return None
    return _length_nm(float(values[1] - values[0]), _text(dim.attrs.get("units", b"")))


def _calibration_pixel_size_nm(f: h5py.File, gpath: str) -> float | None:
    """py4DSTEM 0.14: R_pixel_size and R_pixel_units of /<root>/metadatabundle/calibration."""
    root = gpath.strip("/").split("/")[0]
    cal = f.get(f"/{root}/metadatabundle/calibration")
    if not isinstance(cal, h5py.Group) or "R_pixel_size" not in cal:
        return None
    size = np.asarray(cal["R_pixel_size"][()], dtype=float).ravel()
    units = _text(cal["R_pixel_units"][()]) if "R_pixel_units" in cal else "pixels"
    return _length_nm(float(size[0]), units) if size.size == 1 else None


def find_strain_groups(f: h5py.File) -> list[tuple[str, str]]:
    """(group path, layout) of every strain map: a 3-D `data` array with strain labels
    ("v0.12" under realslices/, else "emd"), or a realslices/ group holding one 2-D dataset
    per label ("2019")."""
    found: list[tuple[str, str]] = []

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Group):
            return
        if all(isinstance(obj.get(k), h5py.Dataset) and obj[k].ndim == 2 for k in LABELS_2019):
            found.append((obj.name, "2019"))
            return
        data = obj.get("data")
        if not isinstance(data, h5py.Dataset) or data.ndim != 3:
            return
        for key in obj:
            if key.startswith("dim") and isinstance(obj[key], h5py.Dataset) \
                    and _is_label_dim(obj[key]):
                labels = {lbl.lower() for lbl in _decode_labels(obj[key])}
                if {"exx", "e_xx"} & labels:
                    found.append((obj.name, "v0.12" if "/realslices/" in obj.name
                                  else "emd"))
                return

    f.visititems(visit)
    return found


def _select_group(candidates: list[tuple[str, str]], group: str | None, path: Path,
                  ) -> tuple[str, str]:
    """The one strain map named by `group`: its full path ('/a/b', 'a/b') or its last path
    component ('b'); without `group` the file must hold exactly one."""
    names = [c[0] for c in candidates]
    if group is not None:
        want = group.strip()
        if "/" in want.strip("/") or want.startswith("/"):
            candidates = [c for c in candidates if c[0] == "/" + want.strip("/")]
        else:
            candidates = [c for c in candidates if c[0].rsplit("/", 1)[-1] == want]
    if not candidates:
        what = f"named {group!r} (strain maps in the file: {names})" if group else \
            "(a 3-D 'data' array labelled e_xx/exx, e_yy, e_xy, theta, or the 2019 layout)"
        raise InputError(f"no py4DSTEM strain map {what}", path=str(path),
                         field=group or "data")
    if len(candidates) > 1:
        raise InputError(f"several strain maps {[c[0] for c in candidates]}; choose one with "
                         "--group NAME (its last path component or its full path)",
                         path=str(path), field="group")
    return candidates[0]


def _read_array_layout(g: h5py.Group, path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Slices of a labelled `data` array: (N, Rx, Ry) in EMD 0.14, (Rx, Ry, N) in 0.12."""
    label_key = next(k for k in g if k.startswith("dim") and _is_label_dim(g[k]))
    labels = [lbl.lower() for lbl in _decode_labels(g[label_key])]
    try:
        data = np.asarray(g["data"][()], dtype=float)
    except OSError as err:
        raise InputError(f"unreadable data (truncated?): {err}", path=str(path),
                         field=f"{g.name}/data") from None
    first, last = data.shape[0] == len(labels), data.shape[-1] == len(labels)
    if not (first or last):
        raise InputError(f"{len(labels)} labels {labels} but data shape {data.shape}",
                         path=str(path), field=f"{g.name}/{label_key}")
    axis = 0 if first and ("/realslices/" not in g.name or not last) else data.ndim - 1
    return {lbl: np.take(data, k, axis=axis) for k, lbl in enumerate(labels)}, labels


def _mask_2019(value: np.ndarray) -> np.ndarray:
    """The 2019 mask: strings 'TRUE'/'FALSE' (bytes or str), or numbers/booleans."""
    value = np.asarray(value)
    if value.dtype.kind in ("S", "O", "U"):
        text = np.char.upper(np.char.strip(value.astype("U")))
        unknown = sorted(set(text.ravel()) - {"TRUE", "FALSE"})
        if unknown:
            raise InputError(f"mask strings must be 'TRUE' or 'FALSE', got {unknown[:3]}",
                             field="mask_realspace")
        return text == "TRUE"
    return np.asarray(value, dtype=float) > 0.5


def _read_2019_layout(g: h5py.Group) -> tuple[dict[str, np.ndarray], list[str],
                                                             np.ndarray | None]:
    """One dataset per label, the string mask and the dark field beside it (realslices/)."""
    slices = {k: np.asarray(g[k][()], dtype=float) for k in g
              if isinstance(g[k], h5py.Dataset) and g[k].ndim == 2}
    parent = g.parent
    mask = parent.get("mask_realspace/realslice")
    if isinstance(mask, h5py.Dataset):
        slices["mask"] = _mask_2019(mask[()]).astype(float)
    dark = parent.get("DF_image/realslice")
    dark_field = np.asarray(dark[()], dtype=float) if isinstance(dark, h5py.Dataset) else None
    return slices, sorted(slices), dark_field


def read_py4dstem_strain(path: str | Path, *, group: str | None = None) -> StrainMaps:
    """Strain maps from a py4DSTEM file (DESIGN §6), NaN where py4DSTEM measured nothing.

    Layouts: 0.14 EMD (N, Rx, Ry) labelled e_xx/exx, e_yy/eyy, e_xy/exy, theta, mask, error
    (the never-written `error` slice is dropped; the pixel size comes from
    /<root>/metadatabundle/calibration R_pixel_size, R_pixel_units); 0.12 (Rx, Ry, N) with
    labels in dim3; and the 2019 layout realslices/<name>/{e_xx, e_yy, e_xy, theta} with the
    mask realslices/mask_realspace/realslice ('TRUE'/'FALSE') and the dark field
    realslices/DF_image/realslice.  A 2019 group named `..._rotated_by_<deg>` holds the
    image-frame strain in axes rotated counter-clockwise by <deg> degrees from image x (as
    py4DSTEM's get_rotated_strain_map with x axis (cos, sin)): crystal-frame strain with
    rotation_rad = radians(<deg>) (DESIGN §2).  Outside the mask, and wherever py4DSTEM left
    its unfitted e_xx = e_yy = 1 (exactly), the maps are NaN and the mask is 0.
    `group`: which strain map, by its last path component or full path.
    """
    path = Path(path)
    dark_field = None
    rotation = None
    with open_hdf5(path) as f:
        gpath, layout = _select_group(find_strain_groups(f), group, path)
        g = f[gpath]
        if layout == "2019":
            slices, labels, dark_field = _read_2019_layout(g)
            pixel = None
            hit = ROTATED_BY.search(gpath.rsplit("/", 1)[-1])
            rotation = float(np.radians(float(hit.group(1)))) if hit else None
        else:
            slices, labels = _read_array_layout(g, path)
            spatial = sorted(k for k in g if k.startswith("dim") and not _is_label_dim(g[k]))
            pixel = _dim_pixel_size_nm(g, spatial[0]) if spatial else None
            if pixel is None:
                pixel = _calibration_pixel_size_nm(f, gpath)
    slices.pop("error", None)
    maps: dict[str, np.ndarray] = {}
    for ours, aliases in STRAIN_LABELS.items():
        hit_label = next((a for a in aliases if a in slices), None)
        if hit_label is None and ours != "mask":
            raise InputError(f"no slice labelled {aliases} (labels: {labels})", path=str(path),
                             field=gpath)
        if hit_label is not None:
            maps[ours] = slices.pop(hit_label)
    unfitted = (maps["e_xx"] == 1.0) & (maps["e_yy"] == 1.0)
    mask = ~unfitted if "mask" not in maps else (np.nan_to_num(maps["mask"]) > 0.5) & ~unfitted
    strain = {k: np.where(mask, maps[k], np.nan) for k in ("e_xx", "e_yy", "e_xy", "theta")}
    if dark_field is not None and dark_field.shape != mask.shape:
        logger.warning("%s: DF_image %s does not match the strain maps %s: ignored", path,
                       dark_field.shape, mask.shape)
        dark_field = None
    frame = f", crystal frame rotated by {np.degrees(rotation):g} deg" if rotation is not None \
        else ""
    source = f"{path.name}: py4DSTEM {layout} strain map {gpath}{frame}"
    logger.info("read %s (labels %s, pixel size %s nm, %d measured pixels)", source, labels,
                pixel, int(mask.sum()))
    return StrainMaps(**strain, mask=mask, pixel_size_nm=pixel, source=source, extra=slices,
                      rotation_rad=rotation,
                      strain_frame="crystal" if rotation is not None else None,
                      dark_field=dark_field)
