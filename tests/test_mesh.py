"""Meshes from pixel masks: geometry (areas, holes, tags), mask repair and bad input."""

from __future__ import annotations

import dolfinx
import numpy as np
import pytest
import ufl
from dolfinx import fem
from mpi4py import MPI

from chemomech.exceptions import InputError
from chemomech.mechanics.mesh import (
    HOLE_TAG,
    OUTER_TAG,
    check_composition,
    mesh_from_mask,
    repair_mask,
    split_particles,
    trace_boundaries,
)

H = 2.5  # nm per pixel


def annulus(n: int = 44, r_out: float = 16.0, r_in: float = 0.0) -> np.ndarray:
    """Pixels whose centre lies at radius in [r_in, r_out) from the image centre."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    r = np.hypot(i - (n - 1) / 2, j - (n - 1) / 2)
    return (r < r_out) & (r >= r_in)


def _integral(mesh, integrand) -> float:
    return mesh.comm.allreduce(fem.assemble_scalar(fem.form(integrand)))


@pytest.mark.mpi
def test_annulus_area_perimeters_and_hole_survive():
    """Mesh area = pixel area (boundary half a pixel outside the centres) ~ pi (R^2 - r^2)."""
    mask = annulus(r_out=16.0, r_in=6.0)
    pm = mesh_from_mask(mask, H, MPI.COMM_WORLD)
    area = _integral(pm.mesh, 1.0 * ufl.dx(domain=pm.mesh))
    assert area == pytest.approx(pm.area_nm2, rel=1e-12)
    assert area == pytest.approx(mask.sum() * H**2, rel=0.01)
    assert area == pytest.approx(np.pi * (16.0**2 - 6.0**2) * H**2, rel=0.02)
    ds = ufl.Measure("ds", domain=pm.mesh, subdomain_data=pm.facet_tags)
    outer = _integral(pm.mesh, 1.0 * ds(OUTER_TAG))
    inner = _integral(pm.mesh, 1.0 * ds(HOLE_TAG))
    # a polygon through pixel-edge midpoints: perimeter within 6 % of the circle
    assert outer == pytest.approx(2 * np.pi * 16.0 * H, rel=0.06)
    assert inner == pytest.approx(2 * np.pi * 6.0 * H, rel=0.06)
    # the hole is empty: no cell centre within the hole radius
    c = (np.array(mask.shape) - 1) / 2 * H
    mids = dolfinx.mesh.compute_midpoints(pm.mesh, 2, np.arange(
        pm.mesh.topology.index_map(2).size_local, dtype=np.int32))[:, :2]
    assert np.all(np.hypot(*(mids - c).T) > 5.0 * H)
    assert len(pm.boundaries_nm) == 2


def test_every_pixel_centre_is_inside_the_simplified_boundary():
    from matplotlib.path import Path

    mask = annulus(r_out=15.0, r_in=5.0)
    outer, hole = trace_boundaries(mask, simplify_tol_px=0.25)
    centres = np.argwhere(mask).astype(float)
    assert Path(outer).contains_points(centres).all()
    assert not Path(hole).contains_points(centres).any()
    assert len(outer) < 0.6 * 4 * 2 * np.pi * 15  # the staircase is simplified


def test_mesh_size_controls_the_number_of_cells():
    """Cells ~ (1 / size)^2, and the size is the edge length: equilateral triangles of edge
    1 px are 2 / sqrt(3) = 2.31 per px^2 (more near the staircase boundary, whose short
    segments are kept; before the size was honoured gmsh spread them inwards: 3.7 per px^2)."""
    mask = annulus(n=90, r_out=40.0)
    coarse = mesh_from_mask(mask, H, MPI.COMM_SELF, mesh_size_px=2.0)
    fine = mesh_from_mask(mask, H, MPI.COMM_SELF, mesh_size_px=1.0)
    n_fine = fine.mesh.topology.index_map(2).size_global
    assert 3.0 < n_fine / coarse.mesh.topology.index_map(2).size_global < 5.0
    assert 2.31 < n_fine / mask.sum() < 2.7
    fine.mesh.topology.create_connectivity(1, 2)  # the mesher leaves edges to who needs them
    edges = fine.mesh.h(1, np.arange(fine.mesh.topology.index_map(1).size_local,
                                     dtype=np.int32)) / H
    assert 0.85 < np.median(edges) < 1.15
    x = fine.mesh.geometry.x[fine.mesh.geometry.dofmaps[0]][:, :, :2]
    angles = []
    for k in range(3):
        u, v = x[:, (k + 1) % 3] - x[:, k], x[:, (k + 2) % 3] - x[:, k]
        angles.append(np.degrees(np.arccos(np.sum(u * v, axis=1) / np.linalg.norm(u, axis=1)
                                           / np.linalg.norm(v, axis=1))))
    assert min(map(np.min, angles)) > 20.0  # 22 deg on the demo twins (1:4 split of 2 px)


def test_refinement_where_the_composition_gradient_is_high():
    mask = annulus(r_out=16.0)
    i = np.arange(mask.shape[0])[:, None] * np.ones(mask.shape)
    X = 0.5 * (1 + np.tanh((i - 21.5) / 2.0))  # interface along x = 21.5 px
    pm = mesh_from_mask(mask, H, MPI.COMM_SELF, refine=X, refine_size_px=0.5)
    base = mesh_from_mask(mask, H, MPI.COMM_SELF)
    mids = dolfinx.mesh.compute_midpoints(pm.mesh, 2, np.arange(
        pm.mesh.topology.index_map(2).size_local, dtype=np.int32))[:, 0] / H
    near = np.abs(mids - 21.5) < 2
    far = np.abs(mids - 21.5) > 6
    size = pm.mesh.h(2, np.arange(len(mids), dtype=np.int32))
    assert np.median(size[near]) < 0.7 * np.median(size[far])
    assert pm.mesh.topology.index_map(2).size_global > base.mesh.topology.index_map(
        2).size_global


def test_islands_are_dropped_with_a_warning_and_particles_split():
    mask = annulus(n=60, r_out=12.0)
    mask[2:5, 2:5] = True  # a 9-pixel island
    with pytest.warns(UserWarning, match="dropped 1 island"):
        pm = mesh_from_mask(mask, H, MPI.COMM_SELF, min_island_px=20)
    assert not pm.mask[2:5, 2:5].any()
    assert pm.mask.sum() == annulus(n=60, r_out=12.0).sum()

    two = np.zeros((40, 80), bool)
    two[5:30, 5:30] = True
    two[5:25, 45:70] = True
    with pytest.raises(InputError, match="split_particles"):
        mesh_from_mask(two, H, MPI.COMM_SELF)
    parts = split_particles(two)
    assert [p.sum() for p in parts] == [625, 500]


def test_one_pixel_bridge_is_opened_or_rejected():
    mask = np.zeros((30, 50), bool)
    mask[5:25, 5:20] = True
    mask[5:25, 30:45] = True
    mask[15, 20:30] = True  # one-pixel bridge joining two blocks
    with pytest.raises(InputError, match="separate particles"):
        repair_mask(mask)  # after the opening, two particles remain
    with pytest.raises(InputError, match="one-pixel-wide"):
        repair_mask(mask, thin="raise")
    spur = np.zeros((30, 30), bool)
    spur[5:25, 5:20] = True
    spur[15, 20:26] = True  # a one-pixel spur is removed
    assert repair_mask(spur).sum() == 300


@pytest.mark.parametrize("bad, match", [
    (np.zeros((20, 20)), "empty"),
    (np.ones((20, 20)), "border"),
    (np.zeros(20), "2-D"),
    (np.full((20, 20), np.nan), "NaN"),
])
def test_bad_masks_are_input_errors(bad, match):
    with pytest.raises(InputError, match=match):
        mesh_from_mask(bad, H, MPI.COMM_SELF)


def test_bad_composition_and_pixel_size_are_input_errors():
    mask = annulus(r_out=10.0)
    X = np.full(mask.shape, 0.5)
    X[mask.nonzero()[0][0], mask.nonzero()[1][0]] = np.nan
    with pytest.raises(InputError, match="NaN"):
        mesh_from_mask(mask, H, MPI.COMM_SELF, refine=X)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        check_composition(np.full(mask.shape, 1.2), mask)
    check_composition(np.where(mask, 0.3, np.nan), mask)  # NaN outside is fine
    with pytest.raises(InputError, match="pixel size"):
        mesh_from_mask(mask, 0.0, MPI.COMM_SELF)


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["disc_with_hole", "platelet"])
def test_example_meshes_read_back_with_their_tags(name):
    """meshes/<name>.xdmf: area within 1 % of the pixel area of the mask it was made from."""
    import importlib.util
    from pathlib import Path

    from dolfinx.io import XDMFFile

    folder = Path(__file__).resolve().parents[1] / "meshes"
    spec = importlib.util.spec_from_file_location("make_examples", folder / "make_examples.py")
    examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(examples)
    make_mask, h = examples.EXAMPLES[name]
    with XDMFFile(MPI.COMM_WORLD, folder / f"{name}.xdmf", "r") as xdmf:
        mesh = xdmf.read_mesh(name="particle")
        mesh.topology.create_connectivity(1, 2)
        facets = xdmf.read_meshtags(mesh, name="facets")
    area = _integral(mesh, 1.0 * ufl.dx(domain=mesh))
    assert area == pytest.approx(repair_mask(make_mask()).sum() * h**2, rel=0.01)
    tags = MPI.COMM_WORLD.allgather(set(np.unique(facets.values).tolist()))
    expected = {OUTER_TAG, HOLE_TAG} if name == "disc_with_hole" else {OUTER_TAG}
    assert set().union(*tags) == expected


def test_real_particle_mesh_holds_every_pixel_centre(real_particle_path):
    """LFP50_P2 (particle = FP + LFP > 0.10): holes kept, no pixel centre outside the mesh."""
    from scipy.io import loadmat

    from chemomech.mechanics.fields import PixelSampler

    data = loadmat(real_particle_path)
    mask = (data["FP"] + data["LFP"]) > 0.10
    pm = mesh_from_mask(mask, 16.6, MPI.COMM_SELF)
    assert abs(pm.mask.sum() - mask.sum()) < 0.01 * mask.sum()  # repairs are marginal
    assert len(pm.boundaries_nm) > 2  # the particle has holes
    assert pm.area_nm2 == pytest.approx(pm.mask.sum() * 16.6**2, rel=0.01)
    V = fem.functionspace(pm.mesh, ("Lagrange", 1))
    sampler = PixelSampler(V, pm.pixel_points_nm())
    assert sampler.num_outside == 0
    assert len(sampler.owned) == pm.mask.sum()


def test_a_mesh_size_that_would_take_minutes_is_refused_before_gmsh():
    """0.01 px on a 1250 px particle: ~3e7 cells (gmsh ran for minutes at 2.5 GB, deaf to
    SIGTERM); refused at once, naming the key.  Refinement counts its own size."""
    mask = annulus(r_out=20.0)
    with pytest.raises(InputError, match=r"mesh.size_px.*about 3\.\de\+07 cells"):
        mesh_from_mask(mask, H, MPI.COMM_SELF, mesh_size_px=0.01)
    X = np.where(mask, 0.5, np.nan)
    with pytest.raises(InputError, match="mesh size 0.01 px"):
        mesh_from_mask(mask, H, MPI.COMM_SELF, mesh_size_px=1.0, refine=X, refine_size_px=0.01)


def test_split_triangles_is_gmsh_refine():
    """The numpy 1:4 split gives gmsh's refine: the same triangles (as point sets), the same
    orientation, every child a quarter of its parent's area."""
    from chemomech.mechanics.mesh import (
        _build_gmsh_model,
        _triangles,
        gmsh_session,
        split_triangles,
        trace_boundaries,
    )

    mask = np.zeros((30, 26), bool)
    mask[4:26, 5:22] = True
    mask[12:16, 10:14] = False  # a hole
    loops = [loop * H for loop in trace_boundaries(mask, 0.25)]
    with gmsh_session("particle", MPI.COMM_SELF) as gmsh:
        _build_gmsh_model(gmsh, loops, H, None, H)
        cells, nodes = split_triangles(*_triangles(gmsh))
        gmsh.model.mesh.refine()
        ref_cells, ref_nodes = _triangles(gmsh)

    def triangles(c, x):
        return {tuple(sorted(map(tuple, t))) for t in np.round(x[c] / H * 1e6).astype(int)}

    def areas(c, x):
        a, b, d = x[c[:, 0]], x[c[:, 1]], x[c[:, 2]]
        return 0.5 * ((b[:, 0] - a[:, 0]) * (d[:, 1] - a[:, 1])
                      - (d[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1]))

    assert len(cells) == len(ref_cells) and len(nodes) == len(ref_nodes)
    assert triangles(cells, nodes) == triangles(ref_cells, ref_nodes)
    assert np.all(np.sign(areas(cells, nodes)) == np.sign(areas(ref_cells, ref_nodes)[0]))
    n = len(cells) // 4
    quarters = areas(cells, nodes).reshape(4, n)
    assert np.allclose(quarters, quarters[0], rtol=1e-9)


def test_remesh_keeps_the_polygon():
    """remesh meshes the same repaired mask and polygon: at the same size it is mesh_from_mask
    again; at twice the size a quarter of the cells, with the same area."""
    from chemomech.mechanics.mesh import remesh

    mask = np.zeros((30, 26), bool)
    mask[4:26, 5:22] = True
    pm = mesh_from_mask(mask, H, MPI.COMM_SELF)
    again = remesh(pm, 1.0)
    coarse = remesh(pm, 2.0)
    n = pm.mesh.topology.index_map(2).size_global
    assert again.mesh.topology.index_map(2).size_global == n
    assert 3.0 < n / coarse.mesh.topology.index_map(2).size_global < 5.0
    assert coarse.area_nm2 == pytest.approx(pm.area_nm2, rel=1e-12)
    assert np.array_equal(coarse.mask, pm.mask)
