"""MkDocs hooks for mito's site: every command's --help on cli.md, and no page left out of the nav.

Runs at build time on the installed mito, offline. A page added to docs/ without a nav line is listed under Guides
(mkdocs would otherwise only mention it at INFO level and leave it unreachable).
"""

from __future__ import annotations

from typing import Any

MARK = "<!-- mito-help -->"
WIDTH = 80  # the width every help is tested to read at (tests/test_cli_help.py)


def on_files(files: Any, config: Any) -> Any:
    """Append documentation pages that the nav does not name to the Guides section."""
    named: set[str] = set()

    def walk(items: Any) -> None:
        for item in items if isinstance(items, list) else [items]:
            if isinstance(item, dict):
                for v in item.values():
                    walk(v)
            elif isinstance(item, str):
                named.add(item)

    nav = config.get("nav") or []
    walk(nav)
    missing = sorted(f.src_uri for f in files.documentation_pages() if f.src_uri not in named)
    if missing:
        guides = next(item["Guides"] for item in nav if isinstance(item, dict) and "Guides" in item)
        guides.extend(missing)
    return files


def _help(path: tuple[str, ...]) -> str:
    from typer.testing import CliRunner

    from mito.cli import app

    r = CliRunner().invoke(
        app, [*path, "--help"], prog_name="mito", env={"COLUMNS": str(WIDTH), "TERMINAL_WIDTH": str(WIDTH), "NO_COLOR": "1"}
    )
    if r.exit_code != 0:
        raise RuntimeError(f"mito {' '.join(path)} --help exited {r.exit_code}: {r.output}")
    return r.output.strip("\n")


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    for name, cmd in getattr(group, "commands", {}).items():
        out += _commands(cmd, (*path, name))
    return out


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the mark on cli.md with one section per command, its --help in a code block."""
    if MARK not in markdown:
        return markdown
    import typer

    from mito.cli import app

    parts = []
    for path in _commands(typer.main.get_command(app)):
        title = " ".join(("mito", *path))
        parts.append(f"## `{title}`\n\n```text\n{_help(path)}\n```\n")
    return markdown.replace(MARK, "\n".join(parts))
