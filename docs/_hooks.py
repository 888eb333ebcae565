"""mkdocs hooks for the ipcraft site (named in mkdocs.yml; not a page).

* A fence whose info string carries the word ``illustrative`` (```` ```python illustrative ````) is one
  the tests do not run (``tests/test_readme.py``); the word is dropped here so the highlighter sees a
  plain language name.
* The marker ``<!-- ipcraft-cli-help -->`` becomes the ``--help`` text of ``ipcraft`` and of each of
  its commands, taken from the command itself at build time: the CLI reference cannot drift.
"""

from __future__ import annotations

import re
from typing import Any

_ILLUSTRATIVE = re.compile(r"^([ \t]*```[\w+-]+)[ \t]+illustrative\b", re.MULTILINE)
CLI_MARKER = "<!-- ipcraft-cli-help -->"


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
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown
