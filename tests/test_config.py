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
    ("data: s.h5\nparticles: []\n", "particles"),  # selected nothing, crashed in the run
    ("data: s.h5\nmodel: M0\nlegendre_degree: 1\n", "m0_degree"),  # was silently ignored
    ("- just\n- a list\n", "mapping"),
    ("data: s.h5\nlegendre_degree: true\n", "legendre_degree"),  # was read as degree 1
    ("data: s.h5\nmesh: {fe_degree: true}\n", "mesh.fe_degree"),
    ("data: s.h5\noptimiser: {max_it: 2.5}\n", "optimiser.max_it"),
    ("data: s.h5\nparticles: [a, b, a]\n", "particles listed twice"),  # was fitted twice
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


@pytest.mark.parametrize("text, key", [
    ("gauge: LiFePO4\n", "gauge"),  # traction-free: the constants are determined
    ("gauge: {X: 0.5, f_a: 0.01}\n", "gauge"),
    ("boundary_condition: dirichlet\ngauge: none\n", "gauge"),  # singular
    ("boundary_condition: dirichlet\nlegendre_degree: 0\n", "legendre_degree"),
    ("b_law: vegard\n", "b_law"),  # plane stress: f_b has no effect
    ("reduction: plane_strain\nb_law: sometimes\n", "b_law"),
    ("model: M0\nboundary_condition: dirichlet\n", "boundary_condition"),
    ("fragmented_data: ignore\n", "fragmented_data"),
    ("frame: {check: false, adopt: true}\n", "frame.*adopt"),  # adopt was silently ignored
    ("misfit: strain\nuncertainty: {method: integrated_noise}\n",  # crashed in the bands
     "uncertainty.method"),
    ("dislocations: {bands: false}\n", "dislocations.bands"),  # M1: was silently ignored
    ("model: M0\ndislocations: {theta_weight: 0.5}\n", "dislocations.theta_weight"),
])
def test_unsupported_study_combinations_are_refused_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key):
        load_config(_write(tmp_path, "data: s.h5\n" + text))


def test_study_options_validate_and_round_trip(tmp_path):
    from chemomech.inverse.identifiability import Gauge

    cfg = load_config(_write(tmp_path, "data: s.h5\nboundary_condition: dirichlet\n"
                                       "stiffness: mixed\nreduction: plane_strain\n"
                                       "b_law: [-0.02, 0.02]\ngauge: {X: 0.0, f_a: -0.05}\n"))
    assert cfg.material_options() == {"stiffness": "mixed", "reduction": "plane_strain",
                                      "b_law": (-0.02, 0.02)}
    assert cfg.gauge_object() == Gauge(X=0.0, f_a=-0.05, f_c=0.0)
    assert load_config(_write(tmp_path, dump_config(cfg))) == cfg
    default = load_config(_write(tmp_path, "data: s.h5\nboundary_condition: dirichlet\n"))
    assert default.gauge_object() == "auto" and default.material_options()["b_law"] is None
    strain = load_config(_write(tmp_path, "data: s.h5\nreduction: plane_strain\n"))
    assert strain.material_options()["b_law"] is None  # Vegard in Material


def test_the_study_example_config_is_valid():
    path = Path(__file__).resolve().parents[1] / "examples" / "lfp50_p2_study.yaml"
    cfg = load_config(path)
    assert cfg.boundary_condition == "dirichlet" and cfg.gauge == "LiFePO4"


def test_dislocations_options_need_m2_but_a_model_override_drops_the_block(tmp_path, caplog):
    """An M1 config with M2 options is refused naming the key; `invert --model M1` on an M2
    config drops its dislocations block with a warning (comparing models from one file)."""
    m2 = _write(tmp_path, "data: s.h5\nmodel: M2\ndislocations: {theta_weight: 0.5}\n")
    assert load_config(m2).dislocations.theta_weight == 0.5
    with caplog.at_level("WARNING"):
        config = load_config(m2, model="M1")
    assert config.model == "M1" and config.dislocations.theta_weight == 1.0
    assert "dislocations block is not used" in caplog.text
    m1 = _write(tmp_path, "data: s.h5\nmodel: M1\ndislocations: {theta_weight: 0.5}\n")
    with pytest.raises(ConfigError, match="dislocations.theta_weight: acts only with model: M2"):
        load_config(m1, model="M1")
    assert load_config(_write(tmp_path, "data: s.h5\ndislocations: {}\n")).model == "M1"
