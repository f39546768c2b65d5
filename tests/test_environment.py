"""The package lists, environment.yml, the Dockerfile and apptainer.def agree.

The container routes are built and run by scripts/container-test (make container-test,
not part of CI); these tests keep their recipes in step with the lists and the docs.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

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


def _dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert match, f"Dockerfile lacks a default for ARG {name}"
    return match.group(1)


def _def_sections() -> dict[str, str]:
    """apptainer.def as {section: body}; the header is under 'header'."""
    sections, name = {"header": []}, "header"
    for line in (ROOT / "apptainer.def").read_text().splitlines():
        if line.startswith("%"):
            name = line[1:].split()[0]
            sections[name] = []
        elif not line.lstrip().startswith("#"):
            sections[name].append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


def test_dockerfile_installs_both_lists_from_a_dated_snapshot():
    docker = (ROOT / "Dockerfile").read_text()
    date = _dockerfile_arg("DEBIAN_DATE")
    assert re.fullmatch(r"20\d{6}", date)
    assert "FROM debian:sid-${DEBIAN_DATE}" in docker
    assert _dockerfile_arg("DEBIAN_MIRROR") == (
        "http://snapshot.debian.org/archive/debian/${DEBIAN_DATE}T000000Z")
    assert 'echo "deb $DEBIAN_MIRROR sid main" > /etc/apt/sources.list' in docker
    assert "env/debian-packages.txt" in docker and "env/pip-requirements.txt" in docker
    assert "xargs apt-get install" in docker and "pip install --no-cache-dir -r" in docker
    # the CA bundle is an optional secret: used only when given
    assert docker.count("--mount=type=secret,id=ca_bundle") == 2
    assert "[ -s /run/secrets/ca_bundle ]" in docker


def test_apptainer_def_uses_the_same_lists_and_snapshot():
    sec = _def_sections()
    header = dict(line.split(":", 1) for line in sec["header"].splitlines() if ":" in line)
    header = {k.strip(): v.strip() for k, v in header.items()}
    assert header["Bootstrap"] == "debootstrap" and header["OSVersion"] == "sid"
    assert header["MirrorURL"] == "{{ MIRROR }}"
    args = dict(line.strip().split("=", 1) for line in sec["arguments"].splitlines() if "=" in line)
    date = _dockerfile_arg("DEBIAN_DATE")
    assert args["DEBIAN_DATE"] == date, "apptainer.def and the Dockerfile pin different dates"
    assert args["MIRROR"] == f"http://snapshot.debian.org/archive/debian/{date}T000000Z"
    files = [line.split() for line in sec["files"].splitlines() if line.strip()]
    assert {src for src, _ in files} == {"env/debian-packages.txt", "env/pip-requirements.txt"}
    dest = {PurePosixPath(src).name: d for src, d in files}
    post = sec["post"]
    assert f"grep -v '^\\s*#' {dest['debian-packages.txt']} | xargs apt-get install" in post
    pip = "pip install --no-cache-dir --disable-pip-version-check -r"
    assert f"{pip} {dest['pip-requirements.txt']}" in post
    assert 'echo "deb {{ MIRROR }} sid main" > /etc/apt/sources.list' in post
    assert "export PATH=/opt/venv/bin:$PATH" in sec["environment"]
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", (ROOT / "apptainer.def").read_text()))
    assert used == set(args), "every {{ argument }} needs a default in %arguments, and vice versa"


def _docker_run_command(text: str) -> str:
    (line,) = {m.strip(" #") for m in re.findall(r"^.*docker run .* make test$", text, re.M)}
    return line


def test_one_documented_run_command_mounts_the_shared_data_at_the_clones_sibling():
    docker = (ROOT / "Dockerfile").read_text()
    command = _docker_run_command(docker)
    for page in ("README.md", "docs/containers.md"):
        documented = (ROOT / page).read_text()
        assert _docker_run_command(documented) == command, f"{page} disagrees"
    mount = re.search(r'-v "?[^\s:"]*/shared"?:(/[^\s:]+)', command)
    assert mount, f"the run command does not mount the shared data: {command}"
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", docker, re.M)
    assert re.search(rf"^COPY \. {workdir}$", docker, re.M), "the clone is not the WORKDIR"
    # tests/conftest.py reads <clone>/../shared/data
    assert PurePosixPath(workdir).parent / "shared" == PurePosixPath(mount.group(1))
    assert command.endswith("make test")


def _dockerignore_regexes() -> list[re.Pattern]:
    """.dockerignore patterns as regexes on paths relative to the context (no `!` rules)."""
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pat = line.strip().rstrip("/")
        if not pat or pat.startswith("#"):
            continue
        assert not pat.startswith("!"), "exceptions are not modelled here"
        rx = re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        out.append(re.compile(rf"{rx}(?:/.*)?"))
    return out


def test_dockerignore_drops_history_outputs_and_caches_but_no_source():
    rxs = _dockerignore_regexes()

    def ignored(rel: str) -> bool:
        return any(rx.fullmatch(rel) for rx in rxs)

    for rel in (".git/HEAD", "results/demo/summary.json", "chemomech/__pycache__/a.pyc",
                "tests/__pycache__/b.pyc", ".pytest_cache/v", ".ruff_cache/x",
                "bench/results/a.tmp", "chemomech.egg-info/PKG-INFO"):
        assert ignored(rel), f"{rel} would be copied into the image"
    kept = [p.relative_to(ROOT).as_posix() for top in (
        "chemomech", "tests", "scripts", "env", "forms", "meshes", "examples", "bench", ".ci")
        for p in (ROOT / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    kept += ["Makefile", "pyproject.toml", "README.md", "environment.yml", "apptainer.def"]
    assert any(k.endswith(".h5") for k in kept) and ".ci/run" in kept
    assert not [k for k in kept if ignored(k)]


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme.split("\n## ")[0], "README must open with `make test`"
    assert "make test" in (ROOT / ".ci" / "run").read_text()
