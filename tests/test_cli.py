"""The `chemomech` command line: every subcommand is wired, errors exit 2 with a message."""

from __future__ import annotations

import pytest

from chemomech.cli import COMMANDS, build_parser, main
from chemomech.io.stack import read_stack


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([name, "--help"])
        assert exit_.value.code == 0
    assert "invert" in capsys.readouterr().out


def test_import_then_mesh_the_real_particle(real_particle_path, tmp_path):
    stack = tmp_path / "lfp.h5"
    assert main(["import", str(real_particle_path), "-o", str(stack)]) == 0
    (particle,) = read_stack(stack)
    assert particle.mask.sum() == 14490 and particle.pixel_size_nm == 16.6
    mesh = tmp_path / "lfp.xdmf"
    assert main(["mesh", str(stack), "-o", str(mesh)]) == 0
    assert mesh.exists() and mesh.with_suffix(".h5").stat().st_size > 100_000


def test_domain_errors_exit_2_with_the_reason(tmp_path, caplog):
    missing = tmp_path / "nope.h5"
    assert main(["mesh", str(missing), "-o", str(tmp_path / "m.xdmf")]) == 2
    assert "nope.h5" in caplog.text
    config = tmp_path / "run.yaml"
    config.write_text("data: x.h5\nmodel: M0\nboundary_condition: dirichlet\n")  # M1, M2
    assert main(["invert", str(config)]) == 2
    assert "boundary_condition" in caplog.text


# ----------------------------------------------------------------- faults a new user meets

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.io  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _mat_copy(real_particle_path, path, change):
    """A copy of the reference .mat with `change(variables)` applied."""
    data = {k: v for k, v in scipy.io.loadmat(real_particle_path).items()
            if not k.startswith("__")}
    change(data)
    scipy.io.savemat(path, data)
    return path


def test_keep_largest_works_for_mat_input_and_the_error_names_the_flag(real_particle_path,
                                                                       tmp_path, caplog):
    def add_debris(d):  # a 3x3 blob above the particle (rows 8-219), off the border
        for key in ("FP", "LFP"):
            d[key][2:5, 60:63] = 1.0

    mat = _mat_copy(real_particle_path, tmp_path / "debris.mat", add_debris)
    stack = tmp_path / "s.h5"
    assert main(["import", str(mat), "-o", str(stack)]) == 2
    assert "fragmented into 2" in caplog.text and "--keep-largest" in caplog.text
    assert not stack.exists()
    assert main(["import", str(mat), "-o", str(stack), "--keep-largest"]) == 0
    (particle,) = read_stack(stack)
    assert particle.mask.sum() == 14490


def test_a_mask_touching_the_border_is_refused_at_import_naming_file_and_particle(
        real_particle_path, tmp_path, caplog):
    def crop(d):  # the particle reaches column 2: cut 5 columns off
        for key, value in d.items():
            if np.ndim(value) == 2 and value.shape == (225, 125):
                d[key] = value[:, 5:]

    mat = _mat_copy(real_particle_path, tmp_path / "cropped.mat", crop)
    assert main(["import", str(mat), "-o", str(tmp_path / "s.h5")]) == 2
    assert "cropped.mat" in caplog.text and "particle 'cropped' touches the image border" \
        in caplog.text


def test_file_system_errors_are_one_line_with_status_2(real_particle_path, tmp_path, caplog):
    (tmp_path / "file").write_text("x")
    assert main(["import", str(real_particle_path), "-o", str(tmp_path / "file" / "s.h5")]) == 2
    assert "file/s.h5" in caplog.text or "file" in caplog.text.splitlines()[-1]
    assert "Traceback" not in caplog.text


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([str(REPO / "scripts" / "in-env"), sys.executable, "-c", code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": str(REPO)})


def test_sigterm_to_the_wrapper_stops_the_worker():
    """scripts/in-env execs into the command: same PID, so the signal reaches the worker."""
    proc = _python("import os, sys, time\nprint(os.getpid(), flush=True)\ntime.sleep(120)\n"
                   "print('worker still running', flush=True)")
    worker = int(proc.stdout.readline())
    assert worker == proc.pid
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM and "still running" not in out
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)


def test_sigint_prints_one_line_and_removes_the_temporary_file(real_particle_path, tmp_path):
    """SIGINT (and SIGTERM, handled the same) while a stack file is being written."""
    code = (
        "import sys, time\n"
        "import chemomech.io.stack as stack\n"
        "from chemomech.cli import main\n"
        "write = stack._write_particle\n"
        "def slow(group, p):\n"
        "    write(group, p)\n"
        "    print('writing', group.file.filename, flush=True)\n"
        "    t = time.time()\n"
        "    while time.time() - t < 60:  # busy, like h5py compressing a large map\n"
        "        pass\n"
        "stack._write_particle = slow\n"
        f"sys.exit(main(['import', {str(real_particle_path)!r}, '-o', "
        f"{str(tmp_path / 's.h5')!r}]))\n")
    proc = _python(code)
    line = proc.stdout.readline()
    assert line.startswith("writing"), proc.stderr.read()
    tmp = Path(line.split()[1])
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT
    assert err.strip().splitlines()[-1].endswith("interrupted by SIGINT"), err
    assert "Traceback" not in err
    assert not tmp.exists() and list(tmp_path.iterdir()) == []


def _square_stack(path, side: int, name: str):
    """A stack of one square particle of side x side pixels (X = 0.5, no strain)."""
    from chemomech.io.stack import ParticleData, write_stack

    mask = np.zeros((12, 12), bool)
    lo = (12 - side) // 2
    mask[lo:lo + side, lo:lo + side] = True
    zero = np.zeros(mask.shape)
    return write_stack(path, ParticleData(name=name, X=np.full(mask.shape, 0.5), e_xx=zero,
                                          e_yy=zero, e_xy=zero, theta=zero, mask=mask,
                                          pixel_size_nm=10.0))


def test_mesh_of_a_too_small_particle_names_particle_file_and_flag(tmp_path, caplog):
    """The mesher's "no particle of at least N px" named neither the particle nor the flag."""
    stack = _square_stack(tmp_path / "s.h5", 4, "speck")
    out = tmp_path / "m.xdmf"
    with pytest.warns(UserWarning, match="dropped 1 island"):
        assert main(["mesh", str(stack), "-o", str(out), "--min-island-px", "30"]) == 2
    line = caplog.text.strip().splitlines()[-1]
    assert "s.h5" in line and "particle 'speck' (16 px)" in line and "--min-island-px" in line
    assert not out.exists()
    for bad in (tmp_path / "m.h5", tmp_path / "no" / "m.xdmf"):  # was RuntimeError after meshing
        assert main(["mesh", str(stack), "-o", str(bad)]) == 2
        assert "--output" in caplog.text.strip().splitlines()[-1]
    assert "Traceback" not in caplog.text


def test_degree_flags_bins_and_analyze_particle_names_are_checked(tmp_path, capsys, caplog):
    """demo --degree nine was a ValueError traceback; analyze --particles nope analysed
    nothing with status 0; analyze --bins 0 was a ValueError."""
    parser = build_parser()
    for argv in (["demo", "--degree", "nine"], ["demo", "--degree", "9"],
                 ["invert", "c.yaml", "--degree", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(argv)
        assert exit_.value.code == 2
        assert "--degree" in capsys.readouterr().err
    assert parser.parse_args(["demo", "--degree", "auto"]).degree == "auto"
    assert parser.parse_args(["demo"]).degree == 2
    stack = _square_stack(tmp_path / "s.h5", 6, "p")
    out = tmp_path / "a"
    assert main(["analyze", str(stack), "-o", str(out), "--particles", "nope"]) == 2
    assert "['nope'] not found" in caplog.text
    assert main(["analyze", str(stack), "-o", str(out), "--bins", "0"]) == 2
    assert "--bins" in caplog.text.strip().splitlines()[-1] and not out.exists()


def test_petsc_options_reach_tao_through_the_environment(tmp_path):
    """docs/troubleshooting.md: `PETSC_OPTIONS=-chemomech_m1_tao_monitor chemomech invert`
    shows TAO's iterations (as a command-line flag it is refused by argparse)."""
    from chemomech.io.stack import ParticleData, write_stack

    i, j = np.meshgrid(np.arange(24), np.arange(24), indexing="ij")
    mask = (i - 11.5) ** 2 + (j - 11.5) ** 2 < 100
    X = np.clip(i / 23, 0, 1)
    zero = np.zeros(mask.shape)
    stack = write_stack(tmp_path / "s.h5", ParticleData(
        name="p", X=X, e_xx=-0.02 * (1 - X), e_yy=0.01 * (1 - X), e_xy=zero, theta=zero,
        mask=mask, pixel_size_nm=20.0))
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {stack}\nlegendre_degree: 1\nm0_degree: 1\noutput: out\n"
                      "uncertainty: {method: gauss_newton}\n")
    command = [str(REPO / "scripts" / "in-env"), sys.executable, "-m", "chemomech", "invert",
               str(config)]
    env = os.environ | {"PYTHONPATH": str(REPO), "PETSC_OPTIONS": "-chemomech_m1_tao_monitor"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Iteration information for chemomech_m1_ solve" in done.stdout
    refused = subprocess.run(command + ["-chemomech_m1_tao_monitor"], capture_output=True,
                             text=True, env=env, timeout=300)
    assert refused.returncode == 2 and "unrecognized arguments" in refused.stderr
