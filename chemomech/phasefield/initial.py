r"""Initial composition fields: a seeded smooth random perturbation of a fixed mean.

:math:`c_0(x) = \bar X + A\,g(x) + b`, with :math:`g = \sqrt{2/K}\sum_{k=1}^{K} \cos(k_k\cdot x
+ \phi_k)` (K plane waves of random direction, wavelength uniform in
[`wavelength_nm` / 2, 2 `wavelength_nm`] and random phase, from ``numpy.random.default_rng(seed)``)
and b the constant that makes :math:`\int c_0 = \bar X |\Omega|` exactly.  The field is
a function of the coordinates only, so it does not depend on the mesh partition or the number
of MPI ranks.  c_0 is clipped to [0.02, 0.98] before the mean is restored.
"""

from __future__ import annotations

import numpy as np

from chemomech.exceptions import InputError


def random_waves(seed: int, wavelength_nm: float, n_waves: int = 24):
    """A callable g(x) (x of shape (3, n), nm) of unit RMS: a sum of seeded plane waves."""
    if not wavelength_nm > 0:
        raise InputError(f"must be > 0, got {wavelength_nm}", field="wavelength_nm")
    rng = np.random.default_rng(seed)
    angles = rng.uniform(0.0, 2.0 * np.pi, n_waves)
    lengths = rng.uniform(0.5 * wavelength_nm, 2.0 * wavelength_nm, n_waves)
    phases = rng.uniform(0.0, 2.0 * np.pi, n_waves)
    k = 2.0 * np.pi / lengths
    kx, ky = k * np.cos(angles), k * np.sin(angles)

    def g(x: np.ndarray) -> np.ndarray:
        arg = np.outer(kx, x[0]) + np.outer(ky, x[1]) + phases[:, None]
        return np.sqrt(2.0 / n_waves) * np.cos(arg).sum(axis=0)

    return g


def set_initial_composition(forms, mean_x: float, profile, amplitude: float = 0.05) -> None:
    r"""Set c of ``forms.w`` to :math:`\bar X + A\,\mathrm{profile}(x)`, clipped, with its exact
    mean :math:`\bar X`; mu and u are zeroed (the first solve makes them consistent)."""
    from dolfinx import fem

    if not 0.0 < mean_x < 1.0:
        raise InputError(f"mean X must lie in (0, 1), got {mean_x}", field="mean_x")
    if amplitude < 0:
        raise InputError(f"must be >= 0, got {amplitude}", field="amplitude")
    w = forms.w
    w.x.array[:] = 0.0
    V, dofs = forms.W.sub(0).collapse()
    c = fem.Function(V)
    c.interpolate(lambda x: np.clip(mean_x + amplitude * profile(x), 0.02, 0.98))
    w.x.array[dofs] = c.x.array
    shift = mean_x - forms.mass() / forms.volume
    w.x.array[dofs] += shift
    w.x.scatter_forward()


def interpolate_composition(forms, source, padding_nm: float = 1e-6) -> None:
    r"""Set c of ``forms.w`` to the c of ``source.w`` (another `PhaseFieldForms` of the same
    particle on a different mesh), interpolated between the non-matching meshes, plus the
    constant that makes its mean equal to the source's, :math:`\int c / |\Omega|`, exactly
    (mass conserved across the transfer); mu and u are zeroed (the dt = 0 solve makes them
    consistent).  Collective.  `padding_nm` widens the cell search boxes so that nodes on
    a boundary both meshes share are found."""
    from dolfinx import fem

    V, dofs = forms.W.sub(0).collapse()
    c_source = source.w.sub(0).collapse()
    cells = np.arange(forms.mesh.topology.index_map(forms.mesh.topology.dim).size_local,
                      dtype=np.int32)
    data = fem.create_interpolation_data(V, c_source.function_space, cells, padding_nm)
    c = fem.Function(V)
    c.interpolate_nonmatching(c_source, cells, data)
    w = forms.w
    w.x.array[:] = 0.0
    w.x.array[dofs] = c.x.array
    w.x.array[dofs] += source.mass() / source.volume - forms.mass() / forms.volume
    w.x.scatter_forward()
