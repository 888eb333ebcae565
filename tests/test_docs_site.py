"""The docs site's own machinery: the generated CLI reference, the menu, and the examples it shows.

Building the site (``mkdocs build --strict``) is CI's job (``.ci/run``); these checks need no mkdocs
and catch the drifts a build would not: a command whose help the reference lacks, a page missing
from the menu, an example no chapter shows.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _hooks():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("ipcraft_docs_hooks", DOCS / "_hooks.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _help(*args: str) -> str:
    env = dict(os.environ, COLUMNS="200")  # click caps its width at 80 columns
    proc = subprocess.run([sys.executable, "-m", "ipcraft", *args, "--help"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.timeout(120)
def test_cli_reference_is_the_commands_own_help() -> None:
    """Each command's --help, as the command prints it, is in the generated reference, word for word."""
    ref = _hooks().cli_reference()
    commands = re.findall(r"^  ([a-z]+)\s{2,}", _help().split("Commands:")[1], re.MULTILINE)
    assert {"bench", "send", "recv", "relay", "tour"} <= set(commands)
    assert _help().strip().splitlines()[1:] == \
        ref.split("## `ipcraft`\n")[1].split("```")[1].removeprefix("text\n").strip().splitlines()[1:]
    for name in commands:
        own = _after_usage(_help(name))  # the usage lines name the program differently
        assert f"## `ipcraft {name}`" in ref
        section = ref.split(f"## `ipcraft {name}`\n")[1].split("```")[1].removeprefix("text\n")
        assert _after_usage(section) == own and len(own) > 3, name


def _after_usage(text: str) -> list[str]:
    """The lines of a help text after its usage lines (which end at the first blank line)."""
    lines = text.strip().splitlines()
    return lines[lines.index(""):]


def test_the_hook_drops_the_illustrative_marker_and_fills_the_cli_marker() -> None:
    hooks = _hooks()
    out = hooks.on_page_markdown("```sh illustrative\nrm -rf /\n```\n  ```python\nx\n```\n" + hooks.CLI_MARKER)
    assert out.startswith("```sh\nrm -rf /\n```\n  ```python\n") and "## `ipcraft tour`" in out


def test_links_that_leave_the_docs_become_their_text() -> None:
    """The site cannot serve c/ipcraft.h; a link to it from docs/spec becomes its text, others stay links."""
    unlink = _hooks().unlink_outside
    page = "See [`c/ipcraft.h`](../../c/ipcraft.h), [frames](frame.md#header) and [x](https://example.org/a)."
    assert unlink(page, "spec/README.md") == \
        "See `c/ipcraft.h`, [frames](frame.md#header) and [x](https://example.org/a)."
    assert unlink("[up](../index.md)", "spec/README.md") == "[up](../index.md)"


def test_every_page_is_in_the_menu_and_every_menu_entry_is_a_page() -> None:
    nav = set(re.findall(r"^\s+- (?:.+?: )?([\w./-]+\.md)$", (ROOT / "mkdocs.yml").read_text(), re.MULTILINE))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert nav == pages


def test_every_example_is_shown_by_a_page() -> None:
    """The mechanism and pattern chapters include each file of examples/ (README's own aside)."""
    shown = set(re.findall(r'--8<-- "examples/([\w.]+)"', "".join(p.read_text() for p in DOCS.rglob("*.md"))))
    examples = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert examples - shown == {"two_processes.py", "pipe_workers.py"}  # README's example and its sibling
    assert shown <= examples


def test_the_choosing_pages_figures_are_the_readmes() -> None:
    """The bench figures quoted in the docs' "How fast" table are rows of README's, with its command
    (the busy-machine table after it comes from another command, which it quotes)."""
    readme = (ROOT / "README.md").read_text()
    page = (DOCS / "explanation" / "choosing.md").read_text().split("### On a busy machine")[0]
    rows = [line for line in page.splitlines() if re.match(r"^\| (?!subject|---)[^|]+\| [\d.]+ \|", line)]
    assert len(rows) >= 10
    assert [r for r in rows if r not in readme] == []
    command = re.search(r"`(ipcraft bench [^`]+)` on this project's machine", readme)
    assert command and f"`{command.group(1)}` on this project's machine" in page
