"""The gauge and the identifiability block (singular values, unidentified directions)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from chemomech.exceptions import InputError
from chemomech.inverse.identifiability import (
    Gauge,
    coefficient_labels,
    identifiability,
    regression_normal_matrix,
)
from chemomech.mechanics import legendre


def test_gauge_transform_satisfies_the_gauge_for_every_free_vector():
    gauge = Gauge(X=0.3, f_a=0.01, f_c=-0.02)
    T, t = gauge.transform(3)
    assert T.shape == (8, 6)
    for z in np.random.default_rng(0).standard_normal((5, 6)):
        a = T @ z + t
        assert legendre.evaluate(a[:4], 0.3) == pytest.approx(0.01, abs=1e-14)
        assert legendre.evaluate(a[4:], 0.3) == pytest.approx(-0.02, abs=1e-14)
        assert np.allclose(a[[1, 2, 3, 5, 6, 7]], z)  # z are the degree >= 1 coefficients
    with pytest.raises(InputError, match="nothing to fit"):
        gauge.transform(0)
    with pytest.raises(InputError, match="gauge"):
        Gauge(X=1.5)


def test_unidentified_directions_in_words_and_the_warning(caplog):
    assert coefficient_labels(1) == ["constant part of f_a", "linear part of f_a",
                                     "constant part of f_c", "linear part of f_c"]
    rng = np.random.default_rng(1)
    G = rng.standard_normal((50, 4))
    G[:, 2] = G[:, 0]  # a_{0,a} and a_{0,c} act identically: their difference is invisible
    with caplog.at_level(logging.WARNING):
        block = identifiability(G.T @ G, 1)
    assert block["unidentified"] == ["+0.71 (constant part of f_a) -0.71 (constant part of "
                                     "f_c)"] or block["unidentified"] == [
        "+0.71 (constant part of f_c) -0.71 (constant part of f_a)"]
    assert block["condition_number"] > 1e12 and "exceeds" in block["warning"]
    assert "exceeds" in caplog.text
    G[:, 2] = 0.0  # the constant of f_c alone has no effect
    block = identifiability(G.T @ G, 1)
    assert block["unidentified"] == ["constant part of f_c"]
    ok = identifiability(regression_normal_matrix(rng.uniform(0, 1, 500), 3), 3, label="M0")
    assert ok["unidentified"] == [] and ok["warning"] is None
    assert 1.0 <= ok["condition_number"] < 100.0  # orthogonal basis, near-uniform X
