"""Every ```python and ```sh block of README.md and of the docs site (docs/**/*.md) runs as written.

A block whose info string contains ``illustrative`` is not run (the page says which and why); every
other one is, so a block someone adds later is tested without touching this file.  A docs block that
only includes a file (mkdocs' snippets, ``--8<-- "examples/pipe.py"``) shows a file of ``examples/``,
which ``tests/test_examples.py`` runs; here it must name one that exists.  A ```text block right
after a runnable block of the docs is the output it shows the reader: each of its lines must be a line
the block prints, in that order.  Each block runs
in fresh mount, IPC and network namespaces (``unshare``, we are root): its own empty /tmp, /dev/shm
and /dev/mqueue, its own System V objects and abstract socket names, loopback up.  So the fixed
names a README uses (/tmp/demo.sock, mq://jobs) cannot collide with a parallel test run, and
whatever a block leaves behind is seen there: after the block, /dev/shm, /dev/mqueue and the System
V tables of its namespace must be empty.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
_FENCE = re.compile(r"^([ \t]*)```([^\n`]*)\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)
#: Info-string languages run as python or as sh (a block in another language, e.g. C, is not run).
_LANGS = {"python": "python", "py": "python", "sh": "sh", "bash": "sh", "shell": "sh"}
_LEFTOVERS = "__README_LEFTOVERS__"
#: A line of mkdocs' snippets extension: the block shows that file.
_SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')
#: A ```text block that directly follows a code block (blank lines between at most): its output.
_OUTPUT = re.compile(r"[ \t]*\n(?:[ \t]*\n)*[ \t]*```text[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)
#: block id -> the output lines its page shows (see the module docstring).
OUTPUTS: dict[str, list[str]] = {}

# Runs inside the namespaces: private mounts, then the block, then a look for what it left behind.
_PRELUDE = """set -e
mount --make-rprivate /
mount -t tmpfs tmpfs /dev/shm
mkdir /dev/shm/.outer-tmp && mount --bind /tmp /dev/shm/.outer-tmp
mount -t tmpfs tmpfs /tmp
for kept in $IPCRAFT_README_KEEP; do  # what the fresh /tmp would hide: this Python, the checkout
  mkdir -p "/tmp/$kept" && mount --bind "/dev/shm/.outer-tmp/$kept" "/tmp/$kept"
done
umount /dev/shm/.outer-tmp && rmdir /dev/shm/.outer-tmp
mkdir -p /dev/mqueue && mount -t mqueue mqueue /dev/mqueue
if command -v ip >/dev/null; then ip link set lo up; fi  # loopback, for tcp:// blocks
cd /tmp
"""
# sh blocks run under bash --posix (a POSIX shell whose `jobs` works inside $(...)).  Any failing
# command fails the block (set -e), and so does a background job: ``wait`` without
# arguments (which the shell makes always succeed) waits for each job and fails with the first failure.
_SH_STRICT = """set -e
wait() {
  if [ $# -gt 0 ]; then command wait "$@"; return; fi
  for job in $(jobs -p); do command wait "$job" || { echo "background job $job failed" >&2; exit 98; }; done
}
"""
_AFTER = f"""
left="$(ls -A /dev/shm /dev/mqueue | grep -v -e '^/dev' -e '^$' || true)"
left="$left$(tail -q -n +2 /proc/sysvipc/msg /proc/sysvipc/shm /proc/sysvipc/sem)"
if [ -n "$left" ]; then echo "{_LEFTOVERS}: $left" >&2; exit 99; fi
"""


def _kept_under_tmp() -> str:
    """The paths below /tmp (relative to it) that a block needs and a fresh /tmp would hide: this
    Python's environment, the installed package and the checkout (CI may clone under /tmp)."""
    import ipcraft

    tmp = Path("/tmp").resolve()
    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).parent,
             Path(ipcraft.__file__).parent, README.parent}
    kept = set()
    for p in paths:
        p = p.resolve()
        if p.is_relative_to(tmp) and p != tmp:
            kept.add(str(p.relative_to(tmp)))
    assert all(" " not in k for k in kept), f"a path with a space under /tmp: {kept}"
    return " ".join(sorted(kept))


def markdown_blocks(path: Path = README) -> list[tuple[str, str, str]]:
    """(id, kind, code) of every ```python / ```sh block of ``path``, illustrative ones included.

    kind is ``python``, ``sh``, ``illustrative``, or ``included`` (a block made only of snippet lines;
    its code is then the included paths, one a line).
    """
    text = path.read_text()
    prefix = "" if path == README else f"{path.relative_to(DOCS)}:"
    blocks = []
    for m in _FENCE.finditer(text):
        info = m.group(2).split()
        if not info or info[0] not in _LANGS:
            continue
        line = text.count("\n", 0, m.start()) + 1
        code = textwrap.dedent(m.group(3))
        included = [_SNIPPET.match(x) for x in code.splitlines() if x.strip()]
        if included and all(included):
            kind, code = "included", "".join(f"{x.group(1)}\n" for x in included if x)
        else:
            kind = "illustrative" if "illustrative" in info[1:] else _LANGS[info[0]]
        bid = f"{prefix}line{line}-{kind}"
        shown = _OUTPUT.match(text, m.end())
        if shown and kind in ("python", "sh"):
            OUTPUTS[bid] = textwrap.dedent(shown.group(1)).splitlines()
        blocks.append((bid, kind, code))
    return blocks


def readme_blocks() -> list[tuple[str, str, str]]:
    """The blocks of README.md (see :func:`markdown_blocks`)."""
    return markdown_blocks(README)


def docs_blocks() -> list[tuple[str, str, str]]:
    """The blocks of every page of the docs site, page by page."""
    return [b for page in sorted(DOCS.rglob("*.md")) for b in markdown_blocks(page)]


def run_block(lang: str, code: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as written (sh, or the test's own python) in fresh namespaces."""
    if lang == "python":
        body = f'"{sys.executable}" - <<\'__README_PY__\'\n{code}__README_PY__\n'
    else:
        body = _SH_STRICT + code + "\n"
    script = _PRELUDE + body + _AFTER
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "TMPDIR": "/tmp", "COLUMNS": "160", "IPCRAFT_README_KEEP": _kept_under_tmp()}
    env.pop("IPCRAFT_SESSION_TOKEN", None)
    env.pop("PYTHONUNBUFFERED", None)  # output buffered as a reader's would be when piped: a child must flush
    return subprocess.run(["unshare", "--mount", "--ipc", "--net", "--fork", "bash", "--posix", "-c", script],
                          capture_output=True, text=True, timeout=timeout, env=env)


BLOCKS = readme_blocks()
RUNNABLE = [pytest.param(lang, code, id=bid) for bid, lang, code in BLOCKS if lang in ("python", "sh")]
DOC_BLOCKS = docs_blocks()
DOC_RUNNABLE = [pytest.param(lang, code, OUTPUTS.get(bid, []), id=bid)
                for bid, lang, code in DOC_BLOCKS if lang in ("python", "sh")]


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="needs unshare(1) and root for private namespaces")
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("lang", "code"), RUNNABLE)
def test_readme_block_runs_as_written(lang: str, code: str) -> None:
    """The block exits 0 and leaves no IPC object behind in its namespaces."""
    proc = run_block(lang, code)
    assert _LEFTOVERS not in proc.stderr, proc.stderr
    assert proc.returncode == 0, f"status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    if "ipcraft relay" in code:  # the command block: what the receivers printed, in order
        lines = proc.stdout.splitlines()
        assert [x for x in lines if x in ("one", "two", "three", "hello", "world")] == \
            ["one", "two", "three", "hello", "world"], proc.stdout
    if "child got" in code:
        assert "child got {'done': 42, 'peer_pid': " in proc.stdout


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare(1) and root")
@pytest.mark.timeout(60)
def test_readme_example_runs_over_shm_as_the_readme_says() -> None:
    """"Change the URL to shm://demo and the same code runs over shared memory": it does."""
    (code,) = [c for _, lang, c in BLOCKS if lang == "python" and "unix:///tmp/demo.sock" in c]
    proc = run_block("python", code.replace("unix:///tmp/demo.sock", "shm://demo"))
    assert proc.returncode == 0, proc.stderr
    assert "child got {'done': 42, 'peer_pid': " in proc.stdout


def test_readme_blocks_are_found_wherever_they_are() -> None:
    """The parser sees indented fences and bash/shell/py spellings, and the README's own blocks."""
    sample = "x\n  ```bash\n  echo hi\n  ```\n```py illustrative\nimport nothing\n```\n```c\nint x;\n```\n"
    found = [(m.group(2).split()[0], textwrap.dedent(m.group(3))) for m in _FENCE.finditer(sample)]
    assert found == [("bash", "echo hi\n"), ("py", "import nothing\n"), ("c", "int x;\n")]
    assert sum(1 for _, lang, _ in BLOCKS if lang != "illustrative") >= 2
    assert any(lang == "illustrative" for _, lang, _ in BLOCKS)


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare(1) and root")
@pytest.mark.timeout(60)
def test_a_leftover_object_fails_the_block() -> None:
    """The leak check of run_block sees an object a block forgets (so a passing block means clean)."""
    proc = run_block("python", "import posix_ipc\nposix_ipc.MessageQueue('/forgotten', posix_ipc.O_CREX)\n")
    assert proc.returncode == 99 and "forgotten" in proc.stderr, proc.stderr


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare(1) and root")
@pytest.mark.timeout(60)
def test_a_failing_command_fails_an_sh_block_even_in_the_background() -> None:
    """set -e for the foreground, and the runner's wait for background jobs."""
    assert run_block("sh", "false\necho after\n").returncode != 0
    proc = run_block("sh", "sh -c 'sleep 0.2; exit 3' &\ntrue &\nwait\necho after\n")
    assert proc.returncode == 98 and "after" not in proc.stdout, proc.stderr
    assert run_block("sh", "true &\nwait\necho after\n").stdout == "after\n"


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="needs unshare(1) and root for private namespaces")
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("lang", "code", "shown"), DOC_RUNNABLE)
def test_docs_block_runs_as_written(lang: str, code: str, shown: list[str]) -> None:
    """A docs block exits 0, leaves no IPC object behind, and prints the output its page shows."""
    proc = run_block(lang, code)
    assert _LEFTOVERS not in proc.stderr, proc.stderr
    assert proc.returncode == 0, f"status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr  # a forked peer that failed after its parent was done
    printed = proc.stdout.splitlines()
    assert [line for line in printed if line in shown] == shown, f"the page shows {shown}, the block printed {printed}"


def test_docs_blocks_are_found_and_includes_name_examples() -> None:
    """The docs have runnable blocks, and every included file is an example that test_examples runs."""
    kinds = [kind for _, kind, _ in DOC_BLOCKS]
    assert kinds.count("python") + kinds.count("sh") >= 5 and "included" in kinds
    for bid, kind, code in DOC_BLOCKS:
        if kind == "included":
            for rel in code.split():
                path = ROOT / rel
                assert path.is_file() and path.parent == ROOT / "examples" and path.suffix == ".py", (bid, rel)
    sample = '```python\n--8<-- "examples/pipe.py"\n```\n'
    assert [m.group(3) for m in _FENCE.finditer(sample)] == ['--8<-- "examples/pipe.py"\n']
    assert sum(1 for bid in OUTPUTS if not bid.startswith("line")) >= 5  # pages that show their output
    shown = "```python\nprint(1)\n```\n\n```text\n1\n```\n"
    m = next(_FENCE.finditer(shown))
    assert (o := _OUTPUT.match(shown, m.end())) is not None and o.group(1) == "1\n"
