"""End to end: a synthetic pattern with known densities through `run_xrd` (the CLI function).

Forward model: Krivoglaz-Wilkens dislocation broadening of systems D (300/um^2) and H
(500/um^2) of LiFePO4 with Stroh contrast factors, 1 um spheres, a Gaussian instrument that
the analysis learns from a synthetic LaB6 pattern, background and Poisson noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from chemomech.exceptions import ConfigError, InputError
from chemomech.xrd.config import load_config, run_xrd
from chemomech.xrd.synthetic import EXAMPLE_REFLECTIONS, write_example_dataset

EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "xrd" / "config.yaml"


def _config(tmp_path: Path, **changes) -> Path:
    cfg = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    cfg["samples"] = [{"name": "LFP", "pattern": "LiFePO4.xye", "phase": "LiFePO4"}]
    cfg["instrument"]["standard"] = "lab6.xye"
    cfg["bootstrap"] = 200
    cfg.update(changes)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("xrd")
    write_example_dataset(folder, "LiFePO4", seed=0)
    return folder


def test_synthetic_densities_are_recovered(dataset):
    """True systems within 15 %, wrong systems below 10 % of the total, outputs written."""
    summary = json.loads(run_xrd(_config(dataset), dataset / "out").read_text())
    fit = summary["samples"]["LFP"]["fit"]
    rho = fit["densities_per_um2"]
    assert rho["D"] == pytest.approx(300.0, rel=0.15)
    assert rho["H"] == pytest.approx(500.0, rel=0.15)
    assert rho["A"] + rho["J"] < 0.1 * fit["total_density_per_um2"]
    assert fit["data_explained"] > 0.99
    lo, hi = fit["ci95_per_um2"]["H"]
    assert lo < 500.0 < hi
    assert summary["samples"]["LFP"]["best_combinations"][0]["data_explained"] > 0.99
    assert {"D", "H"} <= set(summary["samples"]["LFP"]["best_combinations"][0]["systems"])
    for name in ("summary.json", "table1.md", "config.yaml", "figures/effective_density.png",
                 "figures/variance_LFP.png"):
        assert (dataset / "out" / name).stat().st_size > 0
    assert "| D |" in (dataset / "out" / "table1.md").read_text().replace("(100) ", "")


def test_config_errors_are_clear(dataset, tmp_path):
    bad = _config(dataset, windw=0.5)
    with pytest.raises(ConfigError, match="windw"):
        load_config(bad)
    cfg = yaml.safe_load(_config(dataset).read_text())
    del cfg["instrument"]
    path = dataset / "noinst.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(InputError, match="no instrument profile"):
        load_config(path)
    few = _config(dataset, reflections=[list(h) for h in EXAMPLE_REFLECTIONS[:3]])
    with pytest.raises(InputError, match="3 reflections cannot determine 4"):
        run_xrd(few, tmp_path / "out")
    overlap = _config(dataset, space_group="Pnma")
    with pytest.raises(InputError, match="overlapping peak"):
        run_xrd(overlap, tmp_path / "out2")
