"""Under MPI an exception on one rank ends the job on every rank within seconds, with the
failing rank's message (chemomech.io.parallel); run with mpirun from a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from mpi4py import MPI

from chemomech.synth import make_default_dataset

REPO = Path(__file__).resolve().parents[1]
HANG_BOUND_S = 30  # the only time bound: a hang would last until the allocation ends

pytestmark = pytest.mark.skipif(MPI.COMM_WORLD.size > 1,
                                reason="starts mpirun itself; run these tests serially")


def mpirun(args: list[str], cwd: Path, n: int = 2, timeout: float = HANG_BOUND_S
           ) -> subprocess.CompletedProcess:
    """`mpirun -n n python3 ARGS` in its own process group, killed after `timeout` s."""
    assert shutil.which("mpirun"), "mpirun is part of the environment"
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(["mpirun", "-n", str(n), sys.executable, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the MPI job did not end within {timeout} s:\n{out}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "job.py"
    path.write_text("import logging, sys\nfrom mpi4py import MPI\n"
                    "from chemomech.exceptions import InputError\n"
                    "from chemomech.io.parallel import exit_on_error, stage\n"
                    "logging.basicConfig(level=logging.INFO)\n"
                    "comm = MPI.COMM_WORLD\n" + textwrap.dedent(body))
    return str(path)


def test_a_rank_raising_inside_a_collective_ends_the_job(tmp_path):
    job = script(tmp_path, """
        def main():
            if comm.rank == 1:
                raise ValueError("boom on rank 1")
            comm.allreduce(1)  # rank 0 would wait here for ever
            return 0
        sys.exit(exit_on_error(main))
    """)
    done = mpirun([job], tmp_path)
    assert done.returncode != 0
    assert "rank 1: ValueError: boom on rank 1" in done.stdout


def test_a_domain_error_in_a_stage_ends_every_rank_with_status_2(tmp_path):
    job = script(tmp_path, """
        def main():
            with stage("meshing"):
                if comm.rank == 1:
                    raise InputError("mask too small", path="p.h5", field="mask")
            comm.allreduce(1)
            return 0
        sys.exit(exit_on_error(main))
    """)
    done = mpirun([job], tmp_path)
    assert done.returncode == 2
    assert "rank 1 failed (meshing): file p.h5, field 'mask': mask too small" in done.stdout
    assert "MPI_ABORT" not in done.stdout  # both ranks left the same way, no abort needed


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two small twin particles (248 and 352 pixels)."""
    return make_default_dataset(tmp_path_factory.mktemp("two") / "two.h5", seed=3,
                                n_particles=2, comm=MPI.COMM_SELF, length_nm=700.0,
                                width_nm=450.0, pixel_size_nm=25.0)


def test_invert_with_one_failing_particle_under_mpi_ends_within_seconds(two, tmp_path):
    stack = two
    # the particles have 248 and 352 pixels: only the smaller one fails to mesh (on one rank)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(
        {"data": str(stack), "model": "M1", "output": "out", "mesh": {"min_island_px": 300}}))
    done = mpirun(["-m", "chemomech", "invert", "run.yaml"], tmp_path)
    assert done.returncode == 2, done.stdout
    assert "twin00_X03" in done.stdout and "at least 300 px" in done.stdout
    assert not (tmp_path / "out").exists()
    log = (tmp_path / "out.failed" / "log.txt").read_text().splitlines()
    assert " ERROR " in log[-1] and "twin00_X03" in log[-1]


def test_sigterm_to_mpirun_ends_the_job_and_leaves_no_half_run(two, tmp_path):
    """What a batch scheduler does at the time limit: SIGTERM to mpirun mid-run."""
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(
        {"data": str(two), "model": "M1", "output": "out",
         "uncertainty": {"method": "gauss_newton"}}))
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(["mpirun", "-n", "2", sys.executable, "-m", "chemomech", "invert",
                             "run.yaml"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(600):  # until rank 0 logs the meshing (or the run ends)
        logs = list(tmp_path.glob("out.partial-*/log.txt"))
        if proc.poll() is not None or (logs and "meshing" in logs[0].read_text()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=HANG_BOUND_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"mpirun did not end within {HANG_BOUND_S} s of SIGTERM")
    assert proc.returncode != 0
    assert not (tmp_path / "out").exists()  # no run, rather than half of one
    done = mpirun(["-m", "chemomech", "invert", "run.yaml"], tmp_path, timeout=600)  # a run
    assert done.returncode == 0, done.stdout
    assert (tmp_path / "out" / "summary.json").exists()
    assert not list(tmp_path.glob("out.partial-*")) and not (tmp_path / "out.failed").exists()


def test_a_bug_on_rank_1_alone_reaches_the_failed_runs_log(two, tmp_path):
    """Not a stage error: rank 1 raises inside the fit, where rank 0 waits in a collective.
    The job aborts, and rank 0 cannot clean up: rank 1 itself moves the run to OUTPUT.failed,
    whose log.txt ends with its error (not only on stderr)."""
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(
        {"data": str(two), "model": "M1", "output": "out",
         "uncertainty": {"method": "gauss_newton"}}))
    job = script(tmp_path, """
        from chemomech.cli import main
        from chemomech.inverse.problem import M1Model
        fit = M1Model.fit
        def broken(self, *args, **kwargs):
            if comm.rank == 1:
                raise ZeroDivisionError("injected on rank 1")
            return fit(self, *args, **kwargs)
        M1Model.fit = broken
        sys.exit(main(["invert", "run.yaml"]))
    """)
    done = mpirun([job], tmp_path, timeout=120)
    assert done.returncode != 0, done.stdout
    assert "rank 1: ZeroDivisionError: injected on rank 1" in done.stdout
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("out.partial-*")), "the failing rank moves the run away"
    log = (tmp_path / "out.failed" / "log.txt").read_text().splitlines()
    assert "ERROR chemomech: rank 1: ZeroDivisionError: injected on rank 1" in log[-1]
