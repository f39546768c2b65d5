"""Sphinx configuration of the chemomech user guide (`make docs` -> build/docs/html)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "_ext"))

project = "chemomech"
author = "the chemomech developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.mathjax",
              "sphinx.ext.viewcode", "chemomech_reference"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
# Other helpers' notes are folded into README.md by the lead, not into the guide.
exclude_patterns = ["notes-*.md", "_build", "_generated"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False}
autodoc_typehints = "description"
html_theme = "furo"
html_title = "chemomech user guide"
html_static_path = ["_static"]
# DOLFINx/PETSc need MPI at import; autodoc imports the modules for real (no mocks),
# so a docstring that does not build is a warning, and `make docs` runs with -W.
nitpicky = False
# Formulas are typeset by MathJax from its CDN (the default); offline, they show as TeX.
# defaults are shown as Python literals (`'all'`): no typographic quotes
smartquotes = False
