"""Config validation: defaults, unknown keys, bad values, path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from chemomech.config import dump_config, load_config
from chemomech.exceptions import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_minimal_config_gets_documented_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, "data: stack.h5\n"))
    assert cfg.data == [tmp_path / "stack.h5"]
    assert (cfg.model, cfg.legendre_degree, cfg.misfit) == ("M1", 2, "displacement")
    assert cfg.output == tmp_path / "results"
    assert cfg.mesh.size_px == 1.0 and cfg.optimiser.tao_type == "bqnls"


def test_unknown_keys_are_errors_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="legendre_dgree"):
        load_config(_write(tmp_path, "data: s.h5\nlegendre_dgree: 2\n"))
    with pytest.raises(ConfigError, match="mesh.size"):
        load_config(_write(tmp_path, "data: s.h5\nmesh: {size: 2}\n"))


@pytest.mark.parametrize("text, key", [
    ("data: s.h5\nmodel: M3\n", "model"),
    ("data: s.h5\nlegendre_degree: 11\n", "legendre_degree"),
    ("data: s.h5\nlegendre_degree: often\n", "legendre_degree"),
    ("data: s.h5\nedge_exclusion_px: -1\n", "edge_exclusion_px"),
    ("particles: all\n", "data"),
    ("- just\n- a list\n", "mapping"),
])
def test_bad_values_are_clear_errors(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key):
        load_config(_write(tmp_path, text))


def test_auto_degree_lists_and_round_trip(tmp_path):
    cfg = load_config(_write(tmp_path, "data: [a.h5, /abs/b.h5]\nlegendre_degree: auto\n"
                                       "particles: [p1, p2]\noutput: /tmp/out\n"))
    assert cfg.data == [tmp_path / "a.h5", Path("/abs/b.h5")]
    assert cfg.legendre_degree == "auto" and cfg.particles == ["p1", "p2"]
    again = load_config(_write(tmp_path, dump_config(cfg)))
    assert again == cfg


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_strain_composition_pairs_are_resolved(tmp_path):
    cfg = load_config(_write(tmp_path, "data: [[strain.h5, x.tif], stack.h5]\n"))
    assert cfg.data == [[tmp_path / "strain.h5", tmp_path / "x.tif"], tmp_path / "stack.h5"]
