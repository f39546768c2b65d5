"""Shared fixtures: the real particle from ../shared/data (skipped cleanly where absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_PARTICLE = SHARED_DATA / "LFP50_P2.mat"


@pytest.fixture(scope="session")
def real_particle_path() -> Path:
    """Path of LFP50_P2.mat; skips the test when the shared data are not present."""
    if not REAL_PARTICLE.exists():
        pytest.skip(f"real data not present at {REAL_PARTICLE}")
    return REAL_PARTICLE
