"""The user guide builds without warnings and documents every CLI flag and config key."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

from chemomech_reference import config_rows, subparsers  # noqa: E402

from chemomech.cli import build_parser  # noqa: E402
from chemomech.config import RunConfig  # noqa: E402


def _text(path: Path) -> str:
    """The visible text of an HTML page (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text()))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    run = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q",
                          "-b", "html", str(ROOT / "docs"), str(out)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, f"sphinx failed or warned:\n{run.stderr[-4000:]}"
    problems = [line for line in run.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not problems, "\n".join(problems)
    return out


def test_every_page_is_built_and_the_notes_are_not(site):
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    for page in ("index.html", "getting-started.html", "configuration.html", "cli.html",
                 "formats.html", "troubleshooting.html", "api.html", "notebooks.html",
                 "verification.html", "performance.html", "reliability.html",
                 "containers.html",
                 *(f"steps/{s}.html" for s in ("import", "composition", "registration",
                                               "correlative", "invert", "study",
                                               "dislocations", "analyse", "xrd",
                                               "phasefield"))):
        assert page in pages
    assert not any(p.startswith("notes-") for p in pages)
    assert "make demo" in _text(site / "index.html") and "make test" in _text(site / "index.html")


def test_every_cli_flag_appears(site):
    text = _text(site / "cli.html")
    parser = build_parser()
    for name, sub in {"": parser, **subparsers(parser)}.items():
        assert not name or f"chemomech {name}" in text
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in text, f"`chemomech {name}` flag {flag} is not in the guide"


def test_every_config_key_appears_with_its_default(site):
    text = _text(site / "configuration.html")
    rows = config_rows(RunConfig)
    assert len(rows) > 40
    for key, _, default, meaning in rows:
        assert key in text, f"config key {key} is not in the guide"
        assert default in text
        assert meaning, f"config key {key} has no description (Field(description=...))"
    # nested blocks are expanded to dotted keys
    assert "mesh.size_px" in text and "dislocations.regularisation.alpha" in text


def test_api_reference_documents_the_forms(site):
    text = _text(site / "api.html")
    for name in ("chemomech.mechanics.forms.eigenstrain", "chemomech.inverse.problem.M1Model",
                 "chemomech.io.progress.Progress"):
        assert name in text


def test_docstring_escapes_keep_markup_and_protect_plain_notation():
    from chemomech_reference import plain_text_escapes, separate_lists

    assert plain_text_escapes("* |b| and :math:`|\\nabla X|` in ``a|b``") == \
        "* \\|b\\| and :math:`|\\nabla X|` in ``a|b``"
    assert plain_text_escapes("prefix chemomech_m1_ (OUTPUT.partial-*)") == \
        "prefix chemomech_m1\\_ (OUTPUT.partial-\\*)"
    assert separate_lists(["Text:", "  - a", "    more", "  - b", "After."]) == \
        ["Text:", "", "  - a", "    more", "  - b", "", "After."]
