"""Claims equal their sources: the benchmark numbers quoted in the README are those of the
JSON files named beside them, and every benchmark file the README or the guide names exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_benchmark_file_named_in_the_readme_and_guide_exists():
    named = {(page.name, m) for page in PAGES
             for m in re.findall(r"bench/results/[\w./-]+?\.json", page.read_text())}
    assert named, "the README names its benchmark files"
    missing = sorted(f"{page}: {path}" for page, path in named if not (ROOT / path).is_file())
    assert not missing, missing


def test_the_readme_study_table_is_bench_results_study_json():
    readme = (ROOT / "README.md").read_text()
    rows = json.loads((ROOT / "bench/results/study.json").read_text())["rows"]
    change = {(r["bc"], r["misfit"], r["N"]): r["change"] for r in rows}
    table = re.findall(r"^\| (traction_free|dirichlet) \| (displacement|strain) \|(.*)$",
                       readme, flags=re.MULTILINE)
    assert len(table) == 4, "the README shows the four boundary x misfit rows"
    for bc, misfit, cells in table:
        quoted = [float(c.strip().rstrip("%").strip())
                  for c in cells.split("|")[:3]]
        for N, value in zip((1, 2, 3), quoted, strict=True):
            assert abs(value - change[bc, misfit, N]) <= 0.05 + 1e-9, (bc, misfit, N)
