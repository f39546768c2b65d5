r"""What the data determine: the gauge of the law and the spectrum of the Gauss-Newton matrix.

Scaled Gauss-Newton matrix.  The coefficients :math:`a_{n,i}` of
:math:`f_i(X) = \sum_n a_{n,i} P_n(2X - 1)` are rescaled to the orthonormal basis of
:math:`L^2(0, 1)`, :math:`b_{n,i} = a_{n,i}/\sqrt{2n+1}` (so :math:`|b|` is the
:math:`L^2(0,1)` norm of a change of :math:`(f_a, f_c)`), and
:math:`S = D N D`, :math:`D = \mathrm{diag}(\sqrt{2n+1})`, N = G^T G (`M1Model.normal_equations`).
Its singular values s_1 >= ... are reported relative to s_1; the condition number is
s_1 / s_min.  A direction with s_k / s_1 < 1 / `CONDITION_THRESHOLD` (1e-6) is
*unidentified*: a change of the law along it of unit L2 norm changes the misfit by less than
1e-6 of the best-determined one, so its standard deviation is more than 1000 times larger.
Directions are named in words ("constant part of f_a") when one coefficient spans them, as
combinations otherwise.

Gauge.  With the whole boundary prescribed (``boundary_condition: dirichlet``) and a constant
stiffness, a uniform eigenstrain loads no interior DOF (its stress is divergence-free), so the
constant parts of f_a and f_c are exactly unidentified.  The gauge fixes them:
:math:`f_i(X_g) = v_i`, default :math:`X_g = 1, v_i = 0` (strain measured against LiFePO4).
The gauge eliminates :math:`a_{0,i} = v_i - \sum_{n\ge1} a_{n,i} P_n(2X_g - 1)`, i.e.
:math:`a = T z + t` with z the coefficients of degree >= 1; fits, covariances and bands are
taken in z and mapped back (the band of f at X_g then has zero width, by construction).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from chemomech.exceptions import InputError
from chemomech.mechanics import legendre

logger = logging.getLogger(__name__)

#: Warn when the condition number of the fitted parameterisation exceeds this (some
#: direction's standard deviation is then > 1000x that of the best-determined one, for unit
#: L2 changes of the law); directions with relative singular value below its inverse are
#: reported as unidentified.
CONDITION_THRESHOLD = 1e6

_PART = {0: "constant", 1: "linear", 2: "quadratic", 3: "cubic"}


@dataclass(frozen=True)
class Gauge:
    """The gauge f_a(X) = f_a, f_c(X) = f_c at X (default: f(1) = 0, LiFePO4 reference)."""

    X: float = 1.0
    f_a: float = 0.0
    f_c: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.X <= 1.0 or not np.isfinite([self.f_a, self.f_c]).all():
            raise InputError(f"gauge needs X in [0, 1] and finite values, got {self}",
                             field="gauge")

    def transform(self, degree: int) -> tuple[np.ndarray, np.ndarray]:
        """(T, t) with a = T z + t for the free coefficients z (degree >= 1 of f_a, then f_c)."""
        if degree < 1:
            raise InputError("legendre_degree 0 with a gauge leaves nothing to fit (the gauge "
                             "fixes the constant, the only coefficient)", field="legendre_degree")
        n = degree + 1
        P = legendre.vandermonde(np.array([self.X]), degree)[0]
        T = np.zeros((2 * n, 2 * degree))
        t = np.zeros(2 * n)
        for i, value in enumerate((self.f_a, self.f_c)):
            rows, cols = i * n + np.arange(1, n), i * degree + np.arange(degree)
            T[rows, cols] = 1.0
            T[i * n, cols] = -P[1:]
            t[i * n] = value
        return T, t

    def summary(self) -> dict:
        """JSON-ready description."""
        return {"X": self.X, "f_a": self.f_a, "f_c": self.f_c,
                "meaning": f"f_a({self.X:g}) = {self.f_a:g}, f_c({self.X:g}) = {self.f_c:g}"}


def coefficient_labels(degree: int) -> list[str]:
    """Words for the coefficients a_{n,a}, a_{n,c}: 'constant part of f_a', ..."""
    return [f"{_PART.get(n, f'degree-{n}')} part of f_{d}" for d in ("a", "c")
            for n in range(degree + 1)]


def _scaling(degree: int) -> np.ndarray:
    """D = diag(sqrt(2n+1)) for (a_{.,a}, a_{.,c})."""
    return np.tile(np.sqrt(2.0 * np.arange(degree + 1) + 1.0), 2)


def _spectrum(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values (descending) and right singular vectors (columns) of symmetric S."""
    w, V = np.linalg.eigh(0.5 * (S + S.T))
    order = np.argsort(np.abs(w))[::-1]
    return np.abs(w[order]), V[:, order]


def _words(null: np.ndarray, labels: list[str]) -> list[str]:
    """Name the subspace spanned by the columns of `null` (orthonormal) in words."""
    if null.shape[1] == 0:
        return []
    weight = np.sum(null**2, axis=1)  # |P_null e_i|^2
    single = sorted([i for i in np.argsort(-weight) if weight[i] > 0.9][: null.shape[1]])
    words = [labels[i] for i in single]
    rest = null.copy()
    for i in single:  # remove the named coordinates from the subspace
        e = np.zeros(len(labels))
        e[i] = 1.0
        v = rest @ (rest.T @ e)
        v /= np.linalg.norm(v)
        rest = rest - np.outer(v, v @ rest)
    u, s, _ = np.linalg.svd(rest, full_matrices=False)
    for k in range(null.shape[1] - len(single)):
        vec = u[:, k] * np.sign(u[np.argmax(np.abs(u[:, k])), k])
        terms = [f"{vec[i]:+.2f} ({labels[i]})" for i in np.argsort(-np.abs(vec))
                 if abs(vec[i]) > 0.1]
        words.append(" ".join(terms))
    return words


def identifiability(normal_matrix: np.ndarray, degree: int, transform: np.ndarray | None = None,
                    gauge: Gauge | None = None, threshold: float = CONDITION_THRESHOLD,
                    label: str = "M1") -> dict:
    """The `identifiability` block of summary.json (module docstring), with a warning when the
    condition number of the fitted parameterisation exceeds `threshold`.

    `normal_matrix`: G^T G over the full coefficients (2(N+1) square); `transform`: the gauge's
    T (then the fitted matrix is T^T N T, scaled by D restricted to the free coefficients).
    """
    N = np.asarray(normal_matrix, float)
    labels = coefficient_labels(degree)
    D = _scaling(degree)
    if N.shape != (D.size, D.size):
        raise InputError(f"normal matrix {N.shape} does not match degree {degree}",
                         field="normal_matrix")
    s, V = _spectrum(D[:, None] * N * D[None, :])
    s1 = s[0] if s.size and s[0] > 0 else 1.0
    rel = s / s1
    null = V[:, rel < 1.0 / threshold]
    cond = float(s[0] / s[-1]) if s[-1] > 0 else float("inf")
    out = {"scaling": "coefficients in the orthonormal Legendre basis of L2(0, 1)",
           "largest_singular_value": float(s[0]) if s.size else 0.0,
           "singular_values_relative": rel.tolist(),
           "condition_number": cond,
           "threshold": threshold,
           "unidentified": _words(null, labels)}
    fitted_cond = cond
    if transform is not None:
        T = np.asarray(transform, float)
        Dz = _free_scaling(degree)  # the free coefficients are those of degree >= 1
        Sz = Dz[:, None] * (T.T @ N @ T) * Dz[None, :]
        sz, _ = _spectrum(Sz)
        fitted_cond = float(sz[0] / sz[-1]) if sz[-1] > 0 else float("inf")
        out["gauge"] = gauge.summary() if gauge is not None else None
        out["fixed_by_gauge"] = ["constant part of f_a", "constant part of f_c"]
        out["condition_number_gauged"] = fitted_cond
        out["singular_values_gauged_relative"] = (sz / sz[0]).tolist() if sz[0] > 0 else []
    else:
        out["gauge"] = None
    out["warning"] = None
    if not fitted_cond < threshold:
        out["warning"] = (f"{label}: condition number {fitted_cond:.3g} of the scaled "
                          f"Gauss-Newton matrix exceeds {threshold:.0e}; unidentified: "
                          f"{', '.join(out['unidentified']) or 'none named'}")
        logger.warning("%s", out["warning"])
    return out


def _free_scaling(degree: int) -> np.ndarray:
    """D restricted to the gauge's free coefficients (degree >= 1 of f_a, then f_c)."""
    return np.tile(np.sqrt(2.0 * np.arange(1, degree + 1) + 1.0), 2)


def regression_normal_matrix(X: np.ndarray, degree: int) -> np.ndarray:
    """N = blockdiag(V^T V, V^T V) of the direct regression M0 over the pixel values X."""
    V = legendre.vandermonde(np.clip(np.asarray(X, float).ravel(), 0.0, 1.0), degree)
    block = V.T @ V
    n = degree + 1
    N = np.zeros((2 * n, 2 * n))
    N[:n, :n] = N[n:, n:] = block
    return N
