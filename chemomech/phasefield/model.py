r"""Free energy and weak forms of the Cahn–Hilliard model with coherency elasticity.

**Units.** Lengths in nm, energy densities (and stiffness, stress, chemical potential per
unit composition) in GPa = 1e9 J/m^3, the gradient coefficient kappa in GPa nm^2
(= 1e-9 J/m), time in units tau of the user's choice through the diffusivity D (nm^2/tau):
with D = 1e-14 cm^2/s (= 1 nm^2/s) and the default D = 1 nm^2/tau, tau is one second.

**Free energy** of a conserved Li fraction c in a particle Omega:

.. math::
    F[c, u] = \int_\Omega f(c) + \tfrac{\kappa}{2}|\nabla c|^2
        + \tfrac12 e : C : e\,dx, \qquad e = \varepsilon(u) - \varepsilon^*(c),

with the regular solution per formula unit (volume v, default LiFePO4 cell volume / 4),
:math:`f(c) = [\Omega c(1-c) + k_BT(c\ln c + (1-c)\ln(1-c))]/v`, the package's stiffness
(`chemomech.mechanics.materials.Material`, plane stress by default) and the shifted-Legendre
eigenstrain :math:`\varepsilon^* = R\,\mathrm{diag}(f_a(c), f_c(c))R^T` (default: Vegard's
law relative to LiFePO4, f(1) = 0, f_a(0) = -4.9 %, f_c(0) = +2.0 %).  In 3-D (platelet,
crystal b along the beam z) the full 3-D stiffness tensor is rotated about z and
:math:`\varepsilon^*_{zz} = f_b(c)` (Vegard: -3.6 % at c = 0); everything else is the same.

**Log guard (a documented regularisation, not SNES VI).** Below ``log_delta`` (default 1e-4)
:math:`s\ln s` is replaced by its second-order Taylor polynomial at delta (likewise for
1 - c), so f is C^2, finite for every real c and convex where the entropy dominates.
Newton iterates may then leave [0, 1] without NaNs; the equilibrium phases of the default
Omega (binodal 0.012 / 0.988) lie far above delta, so the regularisation does not change
them (`FreeEnergy.binodal` uses the exact logarithm).  The mobility
:math:`M\max(c(1-c), m_{min})` is guarded the same way.

**Dynamics** (theta-method; theta = 1 backward Euler, 1/2 Crank–Nicolson):

.. math::
    \int (c - c_n) q + \Delta t\, M(c_\theta) \nabla\mu_\theta\cdot\nabla q = 0, \quad
    \int (\mu - f'(c) - \partial_c\psi) r - \kappa\nabla c\cdot\nabla r = 0, \quad
    \int \sigma : \varepsilon(v) = 0,

:math:`\mu_\theta = \theta\mu + (1-\theta)\mu_n`, :math:`M = D\,v/k_BT` so that the
dilute-limit diffusivity is D; :math:`\partial_c\psi = -\sigma:\partial_c\varepsilon^*`
(plus :math:`\tfrac12 e:C'(c):e` for the composition-dependent stiffness), obtained by UFL
differentiation.  No flux and traction-free on the whole boundary (natural conditions).
The mu and u equations are scaled by 1/(kT/v) and 1/C_0 so the three residual blocks are
of comparable size (the solution does not depend on the scaling).  The 1-D equilibrium
profile and its slope width are analytic (`FreeEnergy.profile_position`,
`FreeEnergy.interface_width`); the tests compare the discrete solution with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import integrate, optimize

from chemomech.exceptions import InputError
from chemomech.mechanics import legendre
from chemomech.mechanics.materials import LATTICE_ANGSTROM, Material, vegard_misfit

#: Boltzmann constant (eV/K).
K_B_EV = 8.617333262e-5
#: 1 eV/nm^3 in GPa.
EV_PER_NM3_GPA = 1.602176634e-19 / 1e-27 / 1e9
#: Volume per formula unit of LiFePO4 (4 per orthorhombic cell), nm^3.
LFP_VOLUME_NM3 = float(np.prod(LATTICE_ANGSTROM["LiFePO4"])) / 4.0 / 1000.0


def vegard_law() -> tuple[list[float], list[float]]:
    """Legendre coefficients (a_0, a_1) of Vegard's law along a and c, LiFePO4 reference."""
    misfit = vegard_misfit("LiFePO4")
    return legendre.from_linear(misfit["a"], 0.0), legendre.from_linear(misfit["c"], 0.0)


def vegard_law_b() -> list[float]:
    """Legendre coefficients of Vegard's law along b (the zone axis; 3-D only), about -3.6 %."""
    lfp, fp = LATTICE_ANGSTROM["LiFePO4"], LATTICE_ANGSTROM["FePO4"]
    return legendre.from_linear(fp[1] / lfp[1] - 1.0, 0.0)


#: Voigt index of the tensor index pair (crystal order 1 = a, 2 = b, 3 = c).
_VOIGT = {(0, 0): 0, (1, 1): 1, (2, 2): 2, (1, 2): 3, (2, 1): 3, (0, 2): 4, (2, 0): 4,
          (0, 1): 5, (1, 0): 5}
#: Image axes (x', y', z) of the unrotated crystal: a along x', c along y', b along z (beam).
_IMAGE_FROM_CRYSTAL = (0, 2, 1)


def stiffness_tensor_3d(voigt: np.ndarray, rotation_rad: float) -> np.ndarray:
    r"""3x3x3x3 image-frame stiffness (GPa) of a 6x6 Voigt matrix (crystal a, b, c) for a
    platelet with b along the beam z and crystal a at `rotation_rad` from image x:
    :math:`C'_{ijkl} = Q_{ip}Q_{jq}Q_{kr}Q_{ls}C_{pqrs}`, Q = rotation about z after the
    axis permutation (a, c, b) -> (x, y, z)."""
    C = np.zeros((3, 3, 3, 3))
    for i, j, k, l in np.ndindex(3, 3, 3, 3):
        C[i, j, k, l] = voigt[_VOIGT[i, j], _VOIGT[k, l]]
    perm = list(_IMAGE_FROM_CRYSTAL)
    C = C[np.ix_(perm, perm, perm, perm)]
    Q = np.eye(3)
    c, s = math.cos(rotation_rad), math.sin(rotation_rad)
    Q[:2, :2] = [[c, -s], [s, c]]
    return np.einsum("ip,jq,kr,ls,pqrs->ijkl", Q, Q, Q, Q, C)


def _xlogx(s, delta: float, backend):
    r""":math:`s\ln s` for s >= delta, its Taylor polynomial of degree 2 at delta below."""
    if backend is np:
        s = np.asarray(s, float)
        safe = np.log(np.maximum(s, delta))
        quad = (delta * math.log(delta) + (1.0 + math.log(delta)) * (s - delta)
                + (s - delta) ** 2 / (2.0 * delta))
        return np.where(s >= delta, s * safe, quad)
    ufl = backend
    quad = (delta * math.log(delta) + (1.0 + math.log(delta)) * (s - delta)
            + (s - delta) ** 2 / (2.0 * delta))
    return ufl.conditional(ufl.ge(s, delta), s * ufl.ln(ufl.max_value(s, delta)), quad)


@dataclass(frozen=True, slots=True)
class FreeEnergy:
    r"""Regular-solution free energy per volume and the gradient coefficient.

    `omega_eV`: interaction per formula unit (eV; default 0.115 eV, Cogswell & Bazant,
    ACS Nano 6, 2215 (2012)); `temperature_K`; `volume_nm3`: volume per formula unit;
    `kappa`: gradient coefficient (GPa nm^2); `log_delta`: the log guard.  Needs
    Omega > 2 kT (a miscibility gap).
    """

    kappa: float
    omega_eV: float = 0.115
    temperature_K: float = 298.15
    volume_nm3: float = LFP_VOLUME_NM3
    log_delta: float = 1e-4

    def __post_init__(self):
        if not self.kappa > 0:
            raise InputError(f"must be > 0, got {self.kappa}", field="kappa")
        if not (self.temperature_K > 0 and self.volume_nm3 > 0):
            raise InputError("temperature and volume per formula unit must be > 0",
                             field="temperature_K")
        if not self.omega_eV > 2.0 * K_B_EV * self.temperature_K:
            raise InputError(f"Omega = {self.omega_eV} eV is not above 2 kT = "
                             f"{2 * K_B_EV * self.temperature_K:.4g} eV: no miscibility gap",
                             field="omega_eV")
        if not 0 < self.log_delta < 1e-2:
            raise InputError(f"must lie in (0, 0.01), got {self.log_delta}", field="log_delta")

    @property
    def omega(self) -> float:
        """Omega / v (GPa)."""
        return self.omega_eV / self.volume_nm3 * EV_PER_NM3_GPA

    @property
    def kT(self) -> float:
        """k_B T / v (GPa)."""
        return K_B_EV * self.temperature_K / self.volume_nm3 * EV_PER_NM3_GPA

    def density(self, c, backend=np):
        """f(c) (GPa), regularised below `log_delta`; numpy (default) or UFL (backend=ufl)."""
        d = self.log_delta
        mixing = _xlogx(c, d, backend) + _xlogx(1.0 - c, d, backend)
        return self.omega * c * (1.0 - c) + self.kT * mixing

    def _exact_derivative(self, c: float) -> float:
        return self.omega * (1.0 - 2.0 * c) + self.kT * math.log(c / (1.0 - c))

    def binodal(self) -> tuple[float, float]:
        r"""Equilibrium phases (exact log): :math:`\ln\frac{c}{1-c} = \frac{\Omega}{kT}(2c-1)`."""
        lo = optimize.brentq(self._exact_derivative, 1e-300, 0.5 - self.spinodal_offset())
        return lo, 1.0 - lo

    def spinodal_offset(self) -> float:
        """Half width of the spinodal: f'' = 0 at c = 1/2 -/+ this."""
        return 0.5 * math.sqrt(1.0 - 2.0 * self.kT / self.omega)

    def barrier(self) -> float:
        """Delta f_max = f(1/2) - f(c_alpha) (GPa): the symmetric free energy has mu_eq = 0."""
        c_a, _ = self.binodal()
        return float(self.density(0.5) - self.density(c_a))

    def interface_width(self) -> float:
        r"""Slope width :math:`w = \Delta c / \max|c'| = \Delta c\sqrt{\kappa / (2\Delta f_{max})}`
        (nm) of the flat equilibrium interface (no elasticity); for a tanh profile
        c = c_a + (Delta c / 2)(1 + tanh(2x/w)) it is w, the study's and the synth's width."""
        c_a, c_b = self.binodal()
        return (c_b - c_a) * math.sqrt(self.kappa / (2.0 * self.barrier()))

    @classmethod
    def for_width(cls, width_nm: float, **kwargs) -> FreeEnergy:
        """The free energy whose flat interface has slope width `width_nm` (sets kappa)."""
        if not width_nm > 0:
            raise InputError(f"must be > 0, got {width_nm}", field="interface_width_nm")
        unit = cls(kappa=1.0, **kwargs)
        return cls(kappa=(width_nm / unit.interface_width()) ** 2, **kwargs)

    def profile_position(self, c: np.ndarray) -> np.ndarray:
        r"""Analytic 1-D equilibrium profile as x(c) (nm), x(1/2) = 0:
        :math:`x(c) = \int_{1/2}^{c} \sqrt{\kappa / (2\Delta f(s))}\,ds`,
        :math:`\Delta f = f(s) - f(c_\alpha)` (mu_eq = 0 by symmetry)."""
        c_a, _ = self.binodal()
        f_a = float(self.density(c_a))

        def integrand(s: float) -> float:
            return math.sqrt(self.kappa / (2.0 * (float(self.density(s)) - f_a)))

        return np.array([integrate.quad(integrand, 0.5, float(ci), limit=200)[0]
                         for ci in np.atleast_1d(c)])


@dataclass(frozen=True, slots=True)
class Elasticity:
    """Coherency elasticity: stiffness (`Material`), crystal orientation and the eigenstrain law.

    `coefficients_a`, `coefficients_c`: shifted-Legendre coefficients of f_a, f_c (default
    Vegard); `coefficients_b`: f_b along the zone axis, used in 3-D only; `rotation_rad`:
    image x to crystal a (ccw); `enabled=False` drops elasticity.  In 3-D the full tensor
    of `material.stiffness` is used (`reduction` does not apply; "mixed" is linear in X).
    """

    material: Material = field(default_factory=Material)
    rotation_rad: float = 0.0
    coefficients_a: Sequence[float] = field(default_factory=lambda: vegard_law()[0])
    coefficients_c: Sequence[float] = field(default_factory=lambda: vegard_law()[1])
    enabled: bool = True
    coefficients_b: Sequence[float] = field(default_factory=vegard_law_b)

    def ufl_stiffness(self, dim: int, X):
        """Image-frame stiffness as UFL: 2-D ac-plane reduction, or the 3-D tensor."""
        import ufl

        from chemomech.mechanics.materials import voigt_stiffness

        if dim == 2:
            return self.material.ufl_tensor(self.rotation_rad, X=X)
        if self.material.stiffness == "mixed":
            lfp = stiffness_tensor_3d(voigt_stiffness("LiFePO4"), self.rotation_rad)
            fp = stiffness_tensor_3d(voigt_stiffness("FePO4"), self.rotation_rad)
            return X * ufl.as_tensor(lfp.tolist()) + (1 - X) * ufl.as_tensor(fp.tolist())
        voigt = (0.5 * (voigt_stiffness("LiFePO4") + voigt_stiffness("FePO4"))
                 if self.material.stiffness == "average"
                 else voigt_stiffness(self.material.stiffness))
        return ufl.as_tensor(stiffness_tensor_3d(voigt, self.rotation_rad).tolist())

    def ufl_eigenstrain(self, dim: int, X):
        r"""Image-frame eigenstrain: :math:`R\,\mathrm{diag}(f_a, f_c)R^T` in 2-D, with
        :math:`\varepsilon^*_{zz} = f_b` in 3-D (R the rotation about z)."""
        import ufl

        from chemomech.mechanics.forms import eigenstrain, shifted_legendre_series

        e2 = eigenstrain(X, self.coefficients_a, self.coefficients_c, self.rotation_rad)
        if dim == 2:
            return e2
        f_b = shifted_legendre_series(X, self.coefficients_b)
        return ufl.as_matrix([[e2[0, 0], e2[0, 1], 0], [e2[1, 0], e2[1, 1], 0], [0, 0, f_b]])

    def stiffness_scale(self) -> float:
        """C_0 = Q_aa of the crystal tensor at X = 1/2 (GPa): scales the u residual."""
        return float(self.material.crystal_tensor(0.5)[0, 0, 0, 0])


@dataclass(frozen=True, slots=True)
class Kinetics:
    """Time discretisation and mobility: `diffusivity` D (nm^2/tau), `theta` in [1/2, 1],
    `mobility_floor` m_min of the guarded degenerate mobility M max(c(1-c), m_min)."""

    diffusivity: float = 1.0
    theta: float = 1.0
    mobility_floor: float = 1e-6

    def __post_init__(self):
        if not self.diffusivity > 0:
            raise InputError(f"must be > 0, got {self.diffusivity}", field="diffusivity")
        if not 0.5 <= self.theta <= 1.0:
            raise InputError(f"must lie in [0.5, 1], got {self.theta}", field="theta")
        if not 0 < self.mobility_floor < 0.25:
            raise InputError(f"must lie in (0, 0.25), got {self.mobility_floor}",
                             field="mobility_floor")


class PhaseFieldForms:
    r"""The mixed (c, mu, u) space of P1 x P1 x [P_k]^d on `mesh` and the UFL forms.

    ``w``: the unknown at t_{n+1}, ``w_n``: the last accepted state, ``dt``: the step (a
    Constant, tau); ``residual``/``jacobian``: the scaled weak form and its Gateaux
    derivative; ``energy``: the total free energy form (GPa nm^d), ``mass``: int c.
    `sources` (optional): a UFL form in the test functions added to the residual (used by
    the manufactured-solution test).  Every term (residual, hence Jacobian, and energies) is
    integrated at `quadrature_degree` (default 4): with Vegard's law and a constant stiffness
    the polynomial terms have degree <= 2 (P1 c, mu; P1/P2 u) and are exact; the log terms,
    higher Legendre laws and C(c) are integrated approximately.  UFL's
    own estimate of the Jacobian's degree is 5 in 2-D but 10 in 3-D with P2 u (measured:
    11.6 s against ~1 s per Jacobian assembly at 125 k DOFs).
    """

    def __init__(self, mesh, free_energy: FreeEnergy, elasticity: Elasticity | None = None,
                 kinetics: Kinetics | None = None, u_degree: int = 1, sources=None,
                 quadrature_degree: int = 4):
        import basix.ufl
        import ufl
        from dolfinx import default_scalar_type, fem

        from chemomech.mechanics.forms import epsilon, sigma

        self.mesh = mesh
        self.free_energy = fe = free_energy
        self.elasticity = el = elasticity if elasticity is not None else Elasticity()
        self.kinetics = kin = kinetics if kinetics is not None else Kinetics()
        gdim = mesh.geometry.dim
        if gdim not in (2, 3):
            raise InputError(f"need a 2-D or 3-D mesh, got {gdim}-D", field="dim")
        cell = mesh.basix_cell()
        P1 = basix.ufl.element("Lagrange", cell, 1)
        Pu = basix.ufl.element("Lagrange", cell, u_degree, shape=(gdim,))
        self.W = fem.functionspace(mesh, basix.ufl.mixed_element([P1, P1, Pu]))
        self.w = fem.Function(self.W, name="state")
        self.w_n = fem.Function(self.W, name="state_n")
        self.dt = fem.Constant(mesh, default_scalar_type(1.0))

        c, mu, u = ufl.split(self.w)
        c_n, mu_n, _ = ufl.split(self.w_n)
        q, r, v = ufl.TestFunctions(self.W)
        cv = ufl.variable(c)
        theta = kin.theta
        c_mid = theta * c + (1.0 - theta) * c_n
        mu_mid = theta * mu + (1.0 - theta) * mu_n
        M = kin.diffusivity / fe.kT  # nm^2 / (GPa tau)
        mobility = M * ufl.max_value(c_mid * (1.0 - c_mid), kin.mobility_floor)

        f_chem = fe.density(cv, backend=ufl)
        if el.enabled:
            C = el.ufl_stiffness(gdim, cv)
            e_el = epsilon(u) - el.ufl_eigenstrain(gdim, cv)
            psi = 0.5 * ufl.inner(sigma(e_el, C), e_el)
            self.stress = sigma(e_el, C)
        else:
            psi = 0.0 * cv
            self.stress = None
        dfdc = ufl.diff(f_chem, cv)
        dpsidc = ufl.diff(psi, cv) if el.enabled else 0.0
        e0, C0 = fe.kT, el.stiffness_scale()

        dx = ufl.dx(domain=mesh, metadata={"quadrature_degree": quadrature_degree})
        F_c = (c - c_n) * q * dx + self.dt * mobility * ufl.inner(ufl.grad(mu_mid),
                                                                   ufl.grad(q)) * dx
        F_mu = ((mu - dfdc - dpsidc) * r - fe.kappa * ufl.inner(ufl.grad(c), ufl.grad(r))
                ) / e0 * dx
        F = F_c + F_mu
        if el.enabled:
            F += ufl.inner(self.stress, epsilon(v)) / C0 * dx
        else:  # keep u determined: a zero-stiffness field would be singular
            F += ufl.inner(epsilon(u), epsilon(v)) * dx
        if sources is not None:
            F += sources(q, r, v)
        self.residual = F
        self.jacobian = ufl.derivative(F, self.w, ufl.TrialFunction(self.W))

        grad_energy = 0.5 * fe.kappa * ufl.inner(ufl.grad(c), ufl.grad(c))
        self.energy_density = {"chemical": f_chem, "gradient": grad_energy, "elastic": psi}
        self._energy_forms = {k: fem.form(e * dx) for k, e in self.energy_density.items()}
        self._mass_form = fem.form(c * dx)
        self._volume = mesh.comm.allreduce(
            fem.assemble_scalar(fem.form(1.0 * ufl.dx(domain=mesh))))

    @property
    def volume(self) -> float:
        """Area of the particle (nm^2)."""
        return self._volume

    def energies(self) -> dict[str, float]:
        """The free energy terms of the current state ``w`` and their sum (GPa nm^2)."""
        from dolfinx import fem

        out = {k: self.mesh.comm.allreduce(fem.assemble_scalar(f))
               for k, f in self._energy_forms.items()}
        out["total"] = sum(out.values())
        return out

    def mass(self) -> float:
        """int c dx (nm^2) of the current state."""
        from dolfinx import fem

        return self.mesh.comm.allreduce(fem.assemble_scalar(self._mass_form))

    def subfunctions(self):
        """(c, mu, u) of ``w`` as collapsed Functions named "X", "mu", "u"."""
        parts = [self.w.sub(k).collapse() for k in range(3)]
        for part, name in zip(parts, ("X", "mu", "u"), strict=True):
            part.name = name
        return parts
