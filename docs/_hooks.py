"""mkdocs hooks for the ipcraft site (named in mkdocs.yml; not a page).

* A fence whose info string carries the word ``illustrative`` (```` ```python illustrative ````) is one
  the tests do not run (``tests/test_readme.py``); the word is dropped here so the highlighter sees a
  plain language name.
* A link to a file of the repository outside ``docs/`` (the wire format's link to ``c/ipcraft.h``)
  cannot be followed on the site, so it becomes its text: the file is named, not linked.
* The marker ``<!-- ipcraft-cli-help -->`` becomes the ``--help`` text of ``ipcraft`` and of each of
  its commands, taken from the command itself at build time: the CLI reference cannot drift.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

_ILLUSTRATIVE = re.compile(r"^([ \t]*```[\w+-]+)[ \t]+illustrative\b", re.MULTILINE)
CLI_MARKER = "<!-- ipcraft-cli-help -->"
_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")


def unlink_outside(markdown: str, src_path: str) -> str:
    """Replace each relative link of the page ``src_path`` (relative to docs/) that leaves docs/ by its text."""
    def one(m: re.Match[str]) -> str:
        target = m.group(2)
        if "://" in target or target.startswith(("#", "/", "mailto:")):
            return m.group(0)
        where = posixpath.normpath(posixpath.join(posixpath.dirname(src_path), target.split("#")[0]))
        return m.group(1) if where.startswith("../") or where == ".." else m.group(0)
    return _LINK.sub(one, markdown)


def cli_reference(width: int = 78) -> str:
    """Markdown: one section per command with its ``--help`` text, as click prints it at ``width``
    columns (78: click's own width in any terminal of 80 columns or more)."""
    import click

    from ipcraft._cli import cli as main

    def help_of(cmd: click.Command, ctx: click.Context) -> str:
        return "```text\n" + cmd.get_help(ctx).rstrip() + "\n```\n"

    settings = {**main.context_settings, "terminal_width": width, "max_content_width": width}
    with click.Context(main, info_name="ipcraft", **settings) as root:
        parts = ["## `ipcraft`\n", help_of(main, root)]
        assert isinstance(main, click.Group)
        for name in main.list_commands(root):
            cmd = main.get_command(root, name)
            if cmd is None or cmd.hidden:
                continue
            with click.Context(cmd, info_name=name, parent=root, **{**settings, **cmd.context_settings}) as ctx:
                parts += [f"## `ipcraft {name}`\n", help_of(cmd, ctx)]
    return "\n".join(parts)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    markdown = _ILLUSTRATIVE.sub(r"\1", markdown)
    page = kwargs.get("page")
    if page is not None:
        markdown = unlink_outside(markdown, page.file.src_uri)
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown
