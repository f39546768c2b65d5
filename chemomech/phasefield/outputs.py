r"""Outputs of a phase-field run: the stack file, the XDMF time series and the figures.

**Stack** (DESIGN §3, `chemomech.io.stack.write_stack`): the equilibrium composition c and the
displacement gradient sampled at the pixel centres of the meshed mask (x = i h, y = j h) as
the detector sees them, stored in the crystal frame with theta_sign = +1:
:math:`H_{cr} = R^T\nabla u\,R = [[e_{aa}, e_{ac} + \theta], [e_{ac} - \theta, e_{cc}]]`
(the convention of `chemomech.synth`).  ``truth/`` holds the clean maps, the law that made
them (``coefficients_a``, ``coefficients_c``), the displacement (nm), the chemical potential
(GPa), the free-energy parameters, the energies and the run statistics.  Optional Gaussian
noise (``noise_strain``, ``noise_composition``, seeded) goes on the stored maps only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from chemomech.mechanics.materials import rotation_matrix

logger = logging.getLogger(__name__)


def _to_image(values: np.ndarray, indices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    image = np.full(shape, np.nan)
    image[indices[:, 0], indices[:, 1]] = values
    return image


def sample_state(forms, particle_mesh) -> dict[str, np.ndarray]:
    """Images [i, j] (NaN outside) of X, mu, u_x, u_y and the crystal-frame e_xx, e_yy, e_xy,
    theta of the current state; collective, the same arrays on every rank."""
    import ufl

    from chemomech.mechanics.fields import PixelSampler, sample_expression

    comm = forms.mesh.comm
    c, mu, u = forms.subfunctions()
    points = particle_mesh.pixel_points_nm()
    s_c = PixelSampler(c.function_space, points)
    s_u = PixelSampler(u.function_space, points)
    values = (s_c.gather(s_c(c)), s_c.gather(s_c(mu)), s_u.gather(s_u(u)),
              s_u.gather(sample_expression(ufl.grad(u), s_u).reshape(-1, 4)))
    c_px, mu_px, u_px, grad_px = comm.bcast(values, root=0)
    R = rotation_matrix(forms.elasticity.rotation_rad)
    H = np.einsum("pi,npq,qj->nij", R, grad_px.reshape(-1, 2, 2), R)  # R^T H R
    idx = particle_mesh.pixel_indices()
    shape = particle_mesh.mask.shape
    maps = {"X": c_px[:, 0], "mu": mu_px[:, 0], "u_x": u_px[:, 0], "u_y": u_px[:, 1],
            "e_xx": H[:, 0, 0], "e_yy": H[:, 1, 1], "e_xy": 0.5 * (H[:, 0, 1] + H[:, 1, 0]),
            "theta": 0.5 * (H[:, 0, 1] - H[:, 1, 0])}
    return {k: _to_image(v, idx, shape) for k, v in maps.items()}


def particle_data(name: str, maps: dict[str, np.ndarray], particle_mesh, forms, history,
                  *, noise_strain: float = 0.0, noise_composition: float = 0.0,
                  seed: int = 0, extra_truth: dict | None = None):
    """A `chemomech.io.stack.ParticleData` of the sampled maps, the truth under ``truth``."""
    from chemomech import __version__
    from chemomech.io.stack import STRAIN_FIELDS, ParticleData

    mask = particle_mesh.mask
    rng = np.random.default_rng(np.random.SeedSequence([seed, 18]))
    stored = {k: maps[k] + (rng.normal(0.0, noise_strain, mask.shape) if noise_strain else 0.0)
              for k in STRAIN_FIELDS}
    X = maps["X"] + (rng.normal(0.0, noise_composition, mask.shape)
                     if noise_composition else 0.0)
    X = np.where(mask, np.clip(X, 0.0, 1.0), np.nan)
    fe, el = forms.free_energy, forms.elasticity
    tdim = forms.mesh.topology.dim
    truth = {"coefficients_a": np.asarray(el.coefficients_a, float),
             "coefficients_c": np.asarray(el.coefficients_c, float),
             **{k: maps[k] for k in ("X", "mu", "u_x", "u_y", "u_z", *STRAIN_FIELDS)
                if k in maps},
             "legendre": "f_i(X) = sum_n c_n P_n(2X - 1), crystal frame, reference LiFePO4",
             "mean_X": float(np.nanmean(maps["X"][mask])),
             "mean_X_domain": float(forms.mass() / forms.volume),
             "noise_strain": float(noise_strain), "noise_composition": float(noise_composition),
             "seed": int(seed), "stiffness": el.material.stiffness,
             "reduction": el.material.reduction,
             "free_energy": {"omega_eV": fe.omega_eV, "temperature_K": fe.temperature_K,
                             "volume_nm3": fe.volume_nm3, "kappa_GPa_nm2": fe.kappa,
                             "log_delta": fe.log_delta,
                             "interface_width_nm": fe.interface_width(),
                             "binodal": np.asarray(fe.binodal())},
             "energy_GPa_nm2": history.steps[-1].energy,
             "run": {k: v for k, v in history.summary().items() if not isinstance(v, dict)},
             "num_cells": int(forms.mesh.topology.index_map(tdim).size_global),
             "dim": int(forms.mesh.geometry.dim),
             **(extra_truth or {})}
    if tdim == 3:
        truth["coefficients_b"] = np.asarray(el.coefficients_b, float)
    return ParticleData(name=name, X=X, **stored, mask=mask, thickness=maps.get("thickness"),
                        pixel_size_nm=particle_mesh.pixel_size_nm,
                        rotation_rad=el.rotation_rad, strain_frame="crystal", theta_sign=1,
                        reference="LiFePO4",
                        source=f"chemomech {__version__} phasefield (seed {seed}, mean X "
                               f"{truth['mean_X_domain']:.3f}, w {fe.interface_width():.3g} nm)",
                        truth=truth)


class XdmfSeries:
    """XDMF/HDF5 time series of X, mu and u (ParaView); collective, use as a context manager."""

    def __init__(self, path: str | Path, mesh):
        from dolfinx.io import XDMFFile

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = XDMFFile(mesh.comm, str(self.path), "w")
        self.file.write_mesh(mesh)

    def write(self, forms, t: float) -> None:
        """Append the current (c, mu, u) at time t (P2 u interpolated to P1 for XDMF)."""
        from dolfinx import fem

        for part in forms.subfunctions():
            V = part.function_space
            if V.ufl_element().embedded_superdegree > 1:
                P1 = fem.functionspace(V.mesh, ("Lagrange", 1, V.value_shape))
                linear = fem.Function(P1, name=part.name)
                linear.interpolate(part)
                part = linear
            self.file.write_function(part, t)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> XdmfSeries:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def energy_figure(history, path: str | Path) -> Path:
    """Free energy terms (GPa nm^2) against time (tau), log time axis; rank 0 only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chemomech.io.results import atomic_path

    t = history.series("t")[1:]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
    for key in ("total", "chemical", "gradient", "elastic"):
        ax.plot(t, history.series(f"energy.{key}")[1:], label=key)
    ax.set_xscale("log")
    ax.set_xlabel("time (tau)")
    ax.set_ylabel("free energy (GPa nm$^2$)")
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)


def final_state_figure(maps: dict[str, np.ndarray], pixel_size_nm: float,
                       path: str | Path) -> Path:
    """Maps of X and the crystal-frame e_aa, e_cc, e_ac of the final state; rank 0 only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chemomech.io.results import atomic_path

    keys = (("X", "X (Li fraction)"), ("e_xx", "e_aa"), ("e_yy", "e_cc"), ("e_xy", "e_ac"))
    nx, ny = maps["X"].shape
    extent = (-0.5 * pixel_size_nm, (nx - 0.5) * pixel_size_nm,
              -0.5 * pixel_size_nm, (ny - 0.5) * pixel_size_nm)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), constrained_layout=True)
    for ax, (key, title) in zip(axes, keys, strict=True):
        im = ax.imshow(maps[key].T, origin="lower", extent=extent,
                       cmap="viridis" if key == "X" else "RdBu_r")
        ax.set_title(title)
        ax.set_xlabel("x (nm)")
        fig.colorbar(im, ax=ax, shrink=0.8)
    axes[0].set_ylabel("y (nm)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)


def _evaluate_points(function, points: np.ndarray) -> np.ndarray:
    """Values (n, value size) of `function` at 3-D points, NaN where no cell holds the point;
    collective, the same array on every rank (a point shared by ranks: the lowest rank's)."""
    from dolfinx import geometry

    mesh = function.function_space.mesh
    tree = geometry.bb_tree(mesh, mesh.topology.dim)
    candidates = geometry.compute_collisions_points(tree, points)
    colliding = geometry.compute_colliding_cells(mesh, candidates, points)
    found, cells = [], []
    for k in range(len(points)):
        links = colliding.links(k)
        if len(links):
            found.append(k)
            cells.append(links[0])
    size = int(np.prod(function.ufl_shape)) if function.ufl_shape else 1
    values = (function.eval(points[found], np.asarray(cells, np.int32)).reshape(-1, size)
              if found else np.zeros((0, size)))
    parts = mesh.comm.allgather((np.asarray(found, int), values))
    out = np.full((len(points), size), np.nan)
    for idx, vals in reversed(parts):  # lower ranks last: they win
        out[idx] = vals
    return out


def sample_state_3d(forms, mask: np.ndarray, pixel_size_nm: float, thickness_nm: float,
                    n_z: int = 8) -> dict[str, np.ndarray]:
    r"""Thickness-projected images, as the detector sees them along the beam (z): at each
    pixel centre the mean over the n_z Gauss-Legendre points in z in [0, t] that lie in the
    material (pores excluded) of c, mu, u and the crystal-frame in-plane gradient of u;
    ``thickness`` is the material length along the beam (nm).  Collective."""
    import ufl
    from dolfinx import fem

    c, mu, u = forms.subfunctions()
    degree = max(u.function_space.ufl_element().embedded_superdegree - 1, 0)
    G = fem.functionspace(forms.mesh, ("Discontinuous Lagrange", degree, (3, 3)))
    grad_u = fem.Function(G)
    grad_u.interpolate(fem.Expression(ufl.grad(u), G.element.interpolation_points))
    idx = np.argwhere(mask)
    h, t = float(pixel_size_nm), float(thickness_nm)
    z_ref, weights = np.polynomial.legendre.leggauss(n_z)
    z = 0.5 * t * (z_ref + 1.0)
    points = np.zeros((len(idx) * n_z, 3))
    points[:, 0] = np.repeat(idx[:, 0] * h, n_z)
    points[:, 1] = np.repeat(idx[:, 1] * h, n_z)
    points[:, 2] = np.tile(z, len(idx))
    w = np.tile(0.5 * weights, len(idx)).reshape(-1, n_z)  # sums to 1 over z
    fields = {"c": c, "mu": mu, "u": u, "grad": grad_u}
    averaged, inside = {}, None
    for key, f in fields.items():
        vals = _evaluate_points(f, points).reshape(len(idx), n_z, -1)
        inside = np.isfinite(vals[..., 0])
        weight = np.where(inside, w, 0.0)
        total = weight.sum(axis=1)
        averaged[key] = (np.nansum(vals * weight[..., None], axis=1)
                         / np.where(total > 0, total, np.nan)[:, None])
    thickness = np.where(inside, w, 0.0).sum(axis=1) * t
    R = rotation_matrix(forms.elasticity.rotation_rad)
    H = np.einsum("pi,npq,qj->nij", R, averaged["grad"].reshape(-1, 3, 3)[:, :2, :2], R)
    maps = {"X": averaged["c"][:, 0], "mu": averaged["mu"][:, 0], "u_x": averaged["u"][:, 0],
            "u_y": averaged["u"][:, 1], "u_z": averaged["u"][:, 2],
            "e_xx": H[:, 0, 0], "e_yy": H[:, 1, 1], "e_xy": 0.5 * (H[:, 0, 1] + H[:, 1, 0]),
            "theta": 0.5 * (H[:, 0, 1] - H[:, 1, 0]), "thickness": thickness}
    return {k: _to_image(v, idx, mask.shape) for k, v in maps.items()}
