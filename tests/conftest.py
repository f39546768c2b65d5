"""Shared fixtures and the no-silent-skip rules of the test suite.

* The real particle is read from ``../shared/data`` (relative to the repository root), or from
  the directory in ``CHEMOMECH_SHARED_DATA``.  Where it is absent the test **fails** under
  ``CI=true`` (or ``CHEMOMECH_REQUIRE_DATA=1``, which `scripts/run-tests` sets) and skips
  otherwise (a bare ``pytest`` on a clone without ``../shared``).
* DOLFINx and pyadjoint are imported plainly by the tests: without them collection fails.
* With ``CHEMOMECH_NO_SKIPS=1`` (set by `scripts/run-tests`, hence by ``make test``) any skip
  whose reason does not match `ALLOWED_SKIPS` makes the session fail, and is printed.
* Tests marked ``mpi_only`` compare a distributed run with a serial one: they are deselected
  (not skipped) on one rank and run by the ``mpirun`` pass of `scripts/run-tests`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mpi4py import MPI

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CHEMOMECH_SHARED_DATA",
                                  REPO_ROOT.parent / "shared" / "data")).resolve()
REAL_PARTICLE = SHARED_DATA / "LFP50_P2.mat"

#: Skip reasons tolerated by `scripts/run-tests` (substring match), with why.
ALLOWED_SKIPS: dict[str, str] = {
    "no C compiler": "the ffcx test compiles the generated C when a compiler exists; the "
                     "Python side of that test (ffcx output, assembled vector) still runs",
}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def data_required() -> bool:
    """True under CI=true or CHEMOMECH_REQUIRE_DATA=1: missing shared data is a failure."""
    return _truthy("CI") or _truthy("CHEMOMECH_REQUIRE_DATA")


@pytest.fixture(scope="session")
def real_particle_path() -> Path:
    """Path of LFP50_P2.mat; fails (CI) or skips (local bare pytest) when it is absent."""
    if not REAL_PARTICLE.exists():
        message = (f"real data not present at {REAL_PARTICLE} (set CHEMOMECH_SHARED_DATA or "
                   "provide ../shared/data)")
        if data_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return REAL_PARTICLE


def pytest_configure(config):
    config.addinivalue_line("markers", "mpi_only: needs >= 2 ranks (deselected on one rank)")


def pytest_collection_modifyitems(config, items):
    if MPI.COMM_WORLD.size > 1:
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("mpi_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def pytest_sessionfinish(session, exitstatus):
    if not _truthy("CHEMOMECH_NO_SKIPS"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    bad = [r for r in skipped
           if not any(allowed in _skip_reason(r) for allowed in ALLOWED_SKIPS)]
    if bad:
        lines = [f"  {r.nodeid}: {_skip_reason(r)}" for r in bad]
        print("\nrun-tests: skips outside the allow-list (tests/conftest.py ALLOWED_SKIPS):\n"
              + "\n".join(lines))
        session.exitstatus = 1
