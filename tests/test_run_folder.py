"""The output folder of `chemomech invert` holds exactly one complete run or none: atomic
replacement, OUTPUT.previous / OUTPUT.failed, the lock, stale temporaries, and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mpi4py import MPI

from chemomech.cli import main
from chemomech.exceptions import ConfigError
from chemomech.io.results import RunFolder
from chemomech.synth import make_default_dataset

REPO = Path(__file__).resolve().parents[1]


def fake_run(folder: RunFolder, label: str) -> None:
    """Write a complete-looking run into the open partial folder."""
    (folder.path / "summary.json").write_text(json.dumps({"label": label}))
    (folder.path / "config.yaml").write_text(f"label: {label}\n")


def label_of(path: Path) -> str:
    return json.loads((path / "summary.json").read_text())["label"]


def test_commit_replaces_the_run_and_keeps_the_previous_one(tmp_path):
    out = tmp_path / "out"
    for label in ("first", "second", "third"):
        folder = RunFolder(out)
        partial = folder.open()
        assert partial.name.startswith("out.partial-") and label_of_or_none(out) != label
        fake_run(folder, label)
        folder.commit()
        assert label_of(out) == label and not partial.exists()
    assert label_of(tmp_path / "out.previous") == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out", "out.previous"]


def label_of_or_none(path: Path) -> str | None:
    return label_of(path) if (path / "summary.json").exists() else None


def test_a_failed_run_leaves_the_old_run_and_its_own_folder_as_failed(tmp_path):
    out = tmp_path / "out"
    folder = RunFolder(out)
    folder.open()
    fake_run(folder, "good")
    folder.commit()
    folder = RunFolder(out)
    folder.open()
    (folder.path / "log.txt").write_text("half\n")
    assert folder.fail() == tmp_path / "out.failed"
    assert label_of(out) == "good" and (tmp_path / "out.failed" / "log.txt").exists()
    # a later successful run removes the failed one, and stale partial folders
    stale = tmp_path / "out.partial-killed"
    (stale / "figures").mkdir(parents=True)
    (stale / ".fields.x1y2.h5").write_text("temporary")
    folder = RunFolder(out)
    folder.open()
    assert not stale.exists() and not (tmp_path / "out.failed").exists()
    fake_run(folder, "better")
    folder.commit()
    assert label_of(out) == "better" and label_of(tmp_path / "out.previous") == "good"


def test_a_second_run_into_the_same_folder_fails_at_once(tmp_path):
    first = RunFolder(tmp_path / "out")
    first.open()
    with pytest.raises(ConfigError, match=r"in use by another run \(pid \d+"):
        RunFolder(tmp_path / "out").open()
    first.close()
    second = RunFolder(tmp_path / "out")
    second.open()
    second.close()


def test_folders_that_cannot_hold_a_run_are_refused(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    with pytest.raises(ConfigError, match="does not hold a chemomech run"):
        RunFolder(mine).open()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        RunFolder(tmp_path / "file").open()
    with pytest.raises(ConfigError, match="cannot create its parent folder"):
        RunFolder(tmp_path / "file" / "out").open()
    with pytest.raises(ConfigError, match="output /proc/chemomech-out"):
        RunFolder("/proc/chemomech-out").open()
    assert (mine / "chapter1.tex").read_text() == "precious"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One small twin particle (~250 pixels) and two configs (degree 1 and 2) into one output."""
    folder = tmp_path_factory.mktemp("tiny")
    stack = make_default_dataset(folder / "tiny.h5", seed=3, n_particles=1, comm=MPI.COMM_SELF,
                                 length_nm=700.0, width_nm=450.0, pixel_size_nm=25.0)
    for degree in (1, 2):
        (folder / f"degree{degree}.yaml").write_text(yaml.safe_dump(
            {"data": str(stack), "model": "M1", "legendre_degree": degree, "output": "out",
             "uncertainty": {"method": "gauss_newton"}}))
    return folder


def test_cli_errors_are_one_line_and_the_log_ends_with_the_error(tiny, tmp_path, caplog):
    config = tmp_path / "bad.yaml"
    config.write_text("data: missing.h5\nmodel: M1\noutput: out\n")
    assert main(["invert", str(config)]) == 2
    assert "data: no such file" in caplog.text and "missing.h5" in caplog.text
    assert list(tmp_path.iterdir()) == [config]  # checked before the folder is touched
    config.write_text(f"data: {tiny / 'tiny.h5'}\nmodel: M2\noutput: out\n"
                      "dislocations: {slip_systems: [Z9]}\n")
    assert main(["invert", str(config)]) == 2
    assert "Z9" in caplog.text.splitlines()[-1]
    assert list(tmp_path.iterdir()) == [config]
    config.write_text(f"data: {tiny / 'tiny.h5'}\nmodel: M1\noutput: out\n"
                      "mesh: {min_island_px: 100000}\n")
    assert main(["invert", str(config)]) == 2
    assert not (tmp_path / "out").exists()
    last = (tmp_path / "out.failed" / "log.txt").read_text().splitlines()[-1]
    assert " ERROR " in last and "twin00_X50" in last and "tiny.h5" in last
    for text, key in (("data: []\n", "data"),
                      (f"data: {tiny / 'tiny.h5'}\nmesh: {{simplify_tol_px: 0.7}}\n",
                       "mesh.simplify_tol_px"),
                      (f"data: {tiny / 'tiny.h5'}\ndislocations: {{alpha_decades: [-3, 2]}}\n",
                       "dislocations.alpha_decades"),
                      (f"data: {tiny / 'tiny.h5'}\noutput: {config}/out\n",
                       "cannot create its parent folder")):
        caplog.clear()
        config.write_text(text)
        assert main(["invert", str(config)]) == 2
        assert key in caplog.text and "Traceback" not in caplog.text
    with pytest.raises(SystemExit) as exit_:
        main(["invert", str(config), "--degree", "two"])
    assert exit_.value.code == 2


def test_the_lock_stops_a_second_invert(tiny, caplog):
    holder = RunFolder(tiny / "out")
    holder.open()
    try:
        assert main(["invert", str(tiny / "degree1.yaml")]) == 2
    finally:
        holder.close()
    assert "is in use by another run" in caplog.text


def _invert(config: Path) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "chemomech", "invert", str(config)],
                            cwd=config.parent, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(folder: Path, text: str | None, proc: subprocess.Popen) -> None:
    """Until a partial folder's log.txt contains `text` (None: until the partial exists)."""
    for _ in range(1200):
        if proc.poll() is not None:
            return
        logs = list(folder.glob("out.partial-*/log.txt"))
        if logs and (text is None or any(text in p.read_text() for p in logs)):
            return
        time.sleep(0.05)


def _check_one_complete_run(folder: Path, degrees: set[int]) -> int:
    summary = json.loads((folder / "out" / "summary.json").read_text())
    config = yaml.safe_load((folder / "out" / "config.yaml").read_text())
    assert summary["legendre_degree"] == config["legendre_degree"] in degrees
    assert len(summary["coefficients"]["a"]) == summary["legendre_degree"] + 1
    assert (folder / "out" / "fields.h5").exists()
    assert not list(folder.glob("out.partial-*")) and not list(folder.glob("**/.fields.*"))
    return summary["legendre_degree"]


def test_sigterm_at_any_point_leaves_the_old_or_the_new_complete_run(tiny):
    assert main(["invert", str(tiny / "degree1.yaml")]) == 0
    assert _check_one_complete_run(tiny, {1}) == 1
    for point in ("at once", None, "particle(s)", "meshing", "M1 TAO", "done in"):
        proc = _invert(tiny / "degree2.yaml")
        if point != "at once":
            _wait_for(tiny, point, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        degree = _check_one_complete_run(tiny, {1, 2})
        if proc.returncode == 0 or degree == 2:  # the signal came after the new run was in
            break
        assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), err
        if proc.returncode > 0:  # the handler ran: one line, no traceback
            assert err.strip().splitlines()[-1].endswith("interrupted by SIGTERM"), err
            assert "Traceback" not in err
        failed_log = tiny / "out.failed" / "log.txt"
        if point not in ("at once", None) and failed_log.exists():
            assert failed_log.read_text().splitlines()[-1].endswith("interrupted by SIGTERM")
    assert main(["invert", str(tiny / "degree2.yaml")]) == 0
    assert _check_one_complete_run(tiny, {2}) == 2
    assert not (tiny / "out.failed").exists()
