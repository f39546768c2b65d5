"""Reference pages generated from the code when the guide is built, so they cannot drift.

At ``builder-inited`` this writes Markdown into ``docs/_generated/`` (not in git), which the
pages pull in with ``{include}``: ``configuration.md`` walks the pydantic model
`chemomech.config.RunConfig` (nested models become dotted keys), ``cli.md`` the argparse
parsers of `chemomech.cli`, ``api.md`` an ``automodule`` for every module of the package.
"""

from __future__ import annotations

import argparse
import pkgutil
import re
import typing
from pathlib import Path, PurePath

from pydantic import BaseModel


def _type_name(annotation) -> str:
    """A short readable type: `float | 'auto'`, `list[str]`, ..."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # StrictInt and the like: the base type
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "block"
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "None")


def _model_class(annotation):
    """The pydantic model inside an annotation (a block, or a block among alternatives)."""
    candidates = [annotation, *typing.get_args(annotation)]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)),
                None)


def config_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every field, blocks expanded."""
    rows = []
    for name, field in model.model_fields.items():
        key = prefix + name
        sub = _model_class(field.annotation)
        value = str(field.default) if isinstance(field.default, PurePath) else field.default
        default = "(required)" if field.is_required() else repr(value)
        if isinstance(field.default, BaseModel):
            default = "(block)"
        doc = (field.description or "").replace("\n", " ")
        if not doc and sub is not None and sub.__doc__:
            doc = sub.__doc__.strip().split("\n")[0]
        rows.append((key, _type_name(field.annotation), default, doc))
        if sub is not None:
            rows.extend(config_rows(sub, key + "."))
    return rows


def _escape(text: str) -> str:
    """A table cell: pipes escaped, backticks dropped, brackets escaped (no Markdown links)."""
    return (text.replace("|", "\\|").replace("`", "'").replace("[", "\\[")
            .replace("]", "\\]"))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """A MyST pipe table (cells escaped)."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"`{row[0]}`", *(_escape(c) for c in row[1:])]
        out.append("| " + " | ".join(cells) + " |")
    return out


def configuration_markdown() -> list[str]:
    """Table of every RunConfig key (dotted for blocks) with type, default and meaning."""
    from chemomech.config import RunConfig

    return _table(("key", "type", "default", "meaning"), config_rows(RunConfig))


def cli_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str, str]]:
    """(flags, default, help) of every optional and positional argument of one parser."""
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        flags = ", ".join(action.option_strings) or action.dest
        default = "" if action.default in (None, argparse.SUPPRESS, False) else repr(action.default)
        text = (action.help or "") % {"default": action.default} if action.help else ""
        if action.choices:
            text += f" (choices: {', '.join(map(str, action.choices))})"
        rows.append((flags, default, text))
    return rows


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of `chemomech`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_markdown() -> list[str]:
    """One section per subcommand of `chemomech` with its flags, defaults and help."""
    from chemomech.cli import COMMANDS, build_parser

    parser = build_parser()
    out = ["## `chemomech` (global options)", "",
           *_table(("flag", "default", "meaning"), cli_rows(parser))]
    for name, sub in subparsers(parser).items():
        out += ["", f"## `chemomech {name}`", "", COMMANDS[name][3] + ".", "",
                "```text", *sub.format_usage().strip().splitlines(), "```", "",
                *_table(("argument", "default", "meaning"), cli_rows(sub))]
    return out


#: sub-packages in the order of the data flow (DESIGN §5); the rest is the top level
PACKAGE_ORDER = ("io", "correlative", "mechanics", "inverse", "dislocations", "analysis",
                 "xrd", "phasefield")


def package_modules() -> dict[str, list[str]]:
    """Every module of chemomech, grouped by sub-package ('' = top level)."""
    import chemomech

    groups: dict[str, list[str]] = {}
    for info in pkgutil.walk_packages(chemomech.__path__, "chemomech."):
        name = info.name
        if name.endswith("__main__") or info.ispkg:
            continue
        sub = name.split(".")[1]
        groups.setdefault(sub if sub in PACKAGE_ORDER else "", []).append(name)
    return groups


def api_markdown() -> list[str]:
    """An automodule of every module, by sub-package in the order of the data flow."""
    groups = package_modules()
    out: list[str] = []
    for sub in (*PACKAGE_ORDER, ""):
        if sub not in groups:
            continue
        out += ["", f"## `chemomech.{sub}`" if sub else "## Top level", ""]
        for module in sorted(groups[sub]):
            out += ["```{eval-rst}", f".. automodule:: {module}", "```", ""]
    return out


GENERATED = {"configuration.md": configuration_markdown, "cli.md": cli_markdown,
             "api.md": api_markdown}


def generate(app) -> None:
    """Write the generated pages under docs/_generated/ (only when their text changed)."""
    folder = Path(app.srcdir) / "_generated"
    folder.mkdir(exist_ok=True)
    for name, make in GENERATED.items():
        text = "\n".join(make()) + "\n"
        path = folder / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


#: a backtick span (`x`, ``x``, :math:`x`): kept as written
_LITERAL = re.compile(r"(:\w+:)?(``.*?``|`[^`]*`)")


def plain_text_escapes(line: str) -> str:
    """Escape the plain-text notation of the docstrings that reStructuredText would misread,
    outside backtick spans: ``|x|`` (a norm, not a substitution), a word ending in ``_``
    (a name, not a link target) and a lone ``*`` (not emphasis)."""
    bullet = re.match(r"\s*[*-] ", line)  # a list item's marker is kept as written
    last = bullet.end() if bullet else 0
    out = [line[:last]]
    for match in _LITERAL.finditer(line, last):
        out.append(_escape_plain(line[last:match.start()]))
        out.append(match.group(0))
        last = match.end()
    out.append(_escape_plain(line[last:]))
    return "".join(out)


def _escape_plain(text: str) -> str:
    text = text.replace("|", "\\|")
    if text.count("*") == 1:  # a lone star (a glob, a product) is not emphasis
        text = text.replace("*", "\\*")
    return re.sub(r"(\w)_(?=\W|$)", r"\1\\_", text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _is_item(line: str) -> bool:
    return line.lstrip().startswith(("* ", "- "))


def separate_lists(lines: list[str]) -> list[str]:
    """Blank lines around bullet lists written flush against their paragraph (the plain-text
    habit of the docstrings), which reStructuredText otherwise rejects."""
    out: list[str] = []
    list_indent = None  # indentation of the items of the open list
    for line in lines:
        blank = not line.strip()
        if list_indent is not None and not blank and _indent(line) <= list_indent \
                and not (_is_item(line) and _indent(line) == list_indent):
            list_indent = None
            if out and out[-1].strip():
                out.append("")
        if list_indent is None and _is_item(line):
            if out and out[-1].strip():
                out.append("")
            list_indent = _indent(line)
        out.append(line)
    return out


def process_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    """autodoc hook (in place): `separate_lists`, then `plain_text_escapes` on every line
    except in literal blocks (the indented lines after a line ending in ``::``)."""
    lines[:] = separate_lists(lines)
    literal_below = None  # indentation of the paragraph that opened a literal block
    for k, line in enumerate(lines):
        if literal_below is not None and line.strip() and _indent(line) <= literal_below:
            literal_below = None
        if literal_below is None:
            lines[k] = plain_text_escapes(line)
            if line.rstrip().endswith("::"):
                literal_below = _indent(line)


def setup(app):
    """Generate the reference pages before the sources are read; escape the docstrings."""
    app.connect("builder-inited", generate)
    app.connect("autodoc-process-docstring", process_docstring)
    return {"parallel_read_safe": True, "version": "1"}
