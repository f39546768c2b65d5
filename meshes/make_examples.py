"""Regenerate the example particle meshes in meshes/ (XDMF + HDF5, coordinates in nm).

    scripts/in-env python3 meshes/make_examples.py

disc_with_hole   disc of radius 20 px with an off-centre hole of radius 6 px, 10 nm pixels
platelet         a tilted elliptical platelet, 60 x 30 px, 16.6 nm pixels (the real
                 particle's pixel size), with a one-pixel spur that the mesher removes

Each file holds the mesh "particle" and its facet tags "facets" (1 = outer boundary,
2 = hole boundary); read them with dolfinx.io.XDMFFile.read_mesh / read_meshtags.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from mpi4py import MPI

from chemomech.mechanics.mesh import mesh_from_mask

HERE = Path(__file__).resolve().parent


def disc_with_hole() -> np.ndarray:
    """Disc of radius 20 px with a hole of radius 6 px, in a 48 x 48 image."""
    i, j = np.meshgrid(np.arange(48), np.arange(48), indexing="ij")
    return (np.hypot(i - 23.5, j - 23.5) < 20) & (np.hypot(i - 28.0, j - 20.0) >= 6)


def platelet() -> np.ndarray:
    """Tilted ellipse (semi-axes 30 and 15 px, 0.4 rad) with a one-pixel spur."""
    i, j = np.meshgrid(np.arange(72), np.arange(48), indexing="ij")
    p, q = i - 35.5, j - 23.5
    c, s = np.cos(0.4), np.sin(0.4)
    mask = ((c * p + s * q) / 30) ** 2 + ((-s * p + c * q) / 15) ** 2 < 1
    mask[36, 5:12] = True  # a spur: removed by the 2x2 opening
    return mask


EXAMPLES = {"disc_with_hole": (disc_with_hole, 10.0), "platelet": (platelet, 16.6)}


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    comm = MPI.COMM_WORLD
    for name, (make_mask, pixel_nm) in EXAMPLES.items():
        pm = mesh_from_mask(make_mask(), pixel_nm, comm, mesh_size_px=1.5)
        pm.write_xdmf(HERE / f"{name}.xdmf")


if __name__ == "__main__":
    main()
