"""The `chemomech` command line: every subcommand is wired, errors exit 2 with a message."""

from __future__ import annotations

import pytest

pytest.importorskip("dolfinx")

from chemomech.cli import COMMANDS, build_parser, main  # noqa: E402
from chemomech.io.stack import read_stack  # noqa: E402


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
    config.write_text("data: x.h5\nboundary_condition: dirichlet\n")
    assert main(["invert", str(config)]) == 2
    assert "boundary_condition" in caplog.text
