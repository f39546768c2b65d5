"""The package list, environment.yml and the Dockerfile name the same dependencies."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

#: Debian package -> conda-forge package; None: Debian-only tooling with no conda twin.
DEBIAN_TO_CONDA = {
    "python3-dolfinx-real": "fenics-dolfinx",
    "python3-gmsh": "python-gmsh",
    "python3-h5py": "h5py",
    "python3-scipy": "scipy",
    "python3-matplotlib": "matplotlib",
    "python3-skimage": "scikit-image",
    "python3-tifffile": "tifffile",
    "python3-yaml": "pyyaml",
    "python3-pydantic": "pydantic",
    "python3-pytest": "pytest",
    "python3-venv": None,
    "python3-pip": "pip",
    "python3-setuptools": "setuptools",
    "python3-dev": "python",
    "openmpi-bin": "mpich",
    "g++": "compilers",
    "ca-certificates": None,
}


def _lines(path: Path) -> list[str]:
    return [s for line in path.read_text().splitlines() if (s := line.strip())
            and not s.startswith("#")]


def _conda_env() -> tuple[set[str], set[str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = set(), set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip |= set(dep["pip"])
        else:
            conda.add(dep.split(">")[0].split("=")[0].split("<")[0])
    return conda, pip


def test_every_debian_package_is_mapped_and_in_environment_yml():
    debs = _lines(ROOT / "env" / "debian-packages.txt")
    assert set(debs) == set(DEBIAN_TO_CONDA), "update DEBIAN_TO_CONDA with the package list"
    conda, _ = _conda_env()
    missing = {c for c in DEBIAN_TO_CONDA.values() if c} - conda
    assert not missing, f"environment.yml lacks {missing}"


def test_pip_requirements_agree_with_environment_yml():
    _, pip = _conda_env()
    assert set(_lines(ROOT / "env" / "pip-requirements.txt")) == pip


def test_dockerfile_installs_both_lists():
    docker = (ROOT / "Dockerfile").read_text()
    assert "FROM debian:sid" in docker
    assert "env/debian-packages.txt" in docker and "env/pip-requirements.txt" in docker


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme.split("\n## ")[0], "README must open with `make test`"
    assert "make test" in (ROOT / ".ci" / "run").read_text()
