"""The public surface and the layering.

The layers are the table in ipcraft's package docstring; this file parses that table and checks every
import of every module under src/ipcraft against it (lazy imports included), and that the import graph
has no cycle.  There is no list of exceptions: a module that needs one belongs in another layer.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import ipcraft

SRC = Path(ipcraft.__file__).parent



def layer_table(doc: str) -> list[tuple[str, list[str]]]:
    """The layer table of ipcraft's package docstring: ``[(layer, [module patterns])]``, top first."""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith("::")) + 1
    table = []
    for line in lines[start:]:
        if not line.strip():
            if table:
                break
            continue
        if not line.startswith("    "):
            break
        name, *patterns = line.split()
        table.append((name, patterns))
    return table


LAYERS = layer_table(ipcraft.__doc__ or "")


def layer_of(module: str, table: list[tuple[str, list[str]]] = LAYERS) -> int | None:
    """The rank of ``module`` (0 = bottom) in ``table``; an exact name wins over an ``x.*`` pattern."""
    rel = "ipcraft" if module == "ipcraft" else module.removeprefix("ipcraft.")
    exact = [rank for rank, (_, pats) in enumerate(reversed(table)) if rel in pats]
    if exact:
        assert len(exact) == 1, f"{rel} is named by several layers"
        return exact[0]
    matched = [rank for rank, (_, pats) in enumerate(reversed(table))
               if any(p.endswith(".*") and rel.startswith(p[:-1]) for p in pats)]
    assert len(matched) <= 1, f"{rel} matches patterns of several layers"
    return matched[0] if matched else None


#: Private packages behind the `ipcraft` command: their __all__ is their interface to _cli, not names
#: the library promises (they are still bound by the layering).
COMMAND_MACHINERY = {"_bench", "_cli", "_tour"}
#: Public packages whose __init__ re-exports (the others are leaf modules).
FACADES = {"ipcraft", "ipcraft.primitives"}


def module_files() -> dict[str, Path]:
    files = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def public_modules() -> list[ModuleType]:
    names = [n for n in module_files() if not any(p.startswith("_") for p in n.split("."))]
    return [importlib.import_module(n) for n in sorted(names)]


def imports_of(module: str, path: Path) -> set[str]:
    """Every ipcraft module that ``module`` imports, at any depth of the file (lazy imports too)."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ipcraft"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ipcraft":
                continue
            if node.module is None:  # from . import _framing: names that are modules, else the package
                modules = module_files()
                found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules or a.name == "_native" else target
                          for a in node.names}
            else:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the ipcraft modules it imports (itself excluded)."""
    return {m: imports_of(m, path) - {m} for m, path in module_files().items()}


def test_the_layer_table_is_there_and_every_module_has_a_layer() -> None:
    """The package docstring has the table, and each module (and ipcraft._native) is in one layer."""
    assert [name for name, _ in LAYERS][:1] == ["command"] and LAYERS[-1][0] == "foundation", LAYERS
    missing = sorted(m for m in [*module_files(), "ipcraft._native"] if layer_of(m) is None)
    assert not missing, f"modules without a layer in ipcraft's docstring table: {missing}"


def test_imports_only_point_down() -> None:
    """No module imports a module of a higher layer, lazily or not."""
    bad = []
    for module, targets in import_graph().items():
        mine = layer_of(module)
        assert mine is not None
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs is None:
                bad.append(f"{module} imports {target}, which has no layer")
            elif theirs > mine:
                bad.append(f"{module} ({LAYERS[-1 - mine][0]}) imports {target} ({LAYERS[-1 - theirs][0]})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` as a path that starts and ends at the same module, or None."""
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if color.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in color and (found := visit(nxt)):
                return found
        stack.pop()
        color[node] = 2
        return None

    for node in sorted(graph):
        if node not in color and (found := visit(node)):
            return found
    return None


def test_no_import_cycle() -> None:
    """The module import graph under src/ipcraft is acyclic (a cycle is reported as its path)."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_layering_rules_catch_what_they_must() -> None:
    """The checks cannot pass vacuously: the table parser, the ranks, an upward edge and a cycle."""
    table = layer_table("x::\n\n    top  a b.*\n    low  b.c z\n\nafter\n")
    assert table == [("top", ["a", "b.*"]), ("low", ["b.c", "z"])]
    assert layer_of("ipcraft.b.c", table) == 0 and layer_of("ipcraft.b.d", table) == 1
    assert layer_of("ipcraft.a", table) == 1 and layer_of("ipcraft.q", table) is None
    assert layer_of("ipcraft._transports.unix") == layer_of("ipcraft._transports.tcp")
    seam, scheme = layer_of("ipcraft._transports._contract"), layer_of("ipcraft._transports.unix")
    assert seam is not None and scheme is not None and seam < scheme
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_layering_test_sees_upward_imports(tmp_path: Path) -> None:
    """The import walker resolves relative and lazy imports (so the rule above cannot pass vacuously)."""
    f = tmp_path / "m.py"
    f.write_text("from .. import _channel\ndef f():\n    from .._connect import connect\nimport ipcraft.aio\n")
    assert imports_of("ipcraft._transports.m", f) == {"ipcraft._channel", "ipcraft._connect", "ipcraft.aio"}


@pytest.mark.parametrize("mod", public_modules(), ids=lambda m: m.__name__)
def test_public_module_has_a_tuple_all(mod: ModuleType) -> None:
    """Every public module has a tuple __all__ whose names exist, and lists every public class and
    function it defines."""
    assert isinstance(getattr(mod, "__all__", None), tuple), f"{mod.__name__}.__all__ is not a tuple"
    for name in mod.__all__:
        assert hasattr(mod, name), f"{mod.__name__}.__all__ names {name!r}, which does not exist"
    defined = {n for n, obj in vars(mod).items()
               if not n.startswith("_") and callable(obj) and getattr(obj, "__module__", None) == mod.__name__}
    unlisted = defined - set(mod.__all__)
    assert not unlisted, f"{mod.__name__} defines public names missing from __all__: {sorted(unlisted)}"


def test_each_public_name_has_one_home() -> None:
    """Each public object is exported by at most one leaf public module (the facades may re-export it),
    and every name a private module lists in __all__ is exported by some public module."""
    exporters: dict[int, set[str]] = {}
    for mod in public_modules():
        for name in mod.__all__:
            obj = getattr(mod, name)
            if isinstance(obj, (str, int, float, tuple)):
                continue
            exporters.setdefault(id(obj), set()).add(mod.__name__)
    for _key, mods in exporters.items():
        leaves = mods - FACADES
        assert len(leaves) <= 1, f"one object is exported by several public modules: {sorted(mods)}"
    for module in module_files():
        if not any(p.startswith("_") for p in module.split(".")) or module.endswith("__main__"):
            continue
        if module.split(".")[1] in COMMAND_MACHINERY:
            continue
        mod = importlib.import_module(module)
        for name in getattr(mod, "__all__", ()):
            assert id(getattr(mod, name)) in exporters, f"{module}.{name} is not exported by any public module"


def test_no_module_shadows_a_facade_function() -> None:
    """No public submodule shares a name with something the facade exports (ipcraft.pipe must stay the function)."""
    subs = {m.name for m in pkgutil.iter_modules(ipcraft.__path__)}
    assert not subs & set(ipcraft.__all__), sorted(subs & set(ipcraft.__all__))


def test_import_ipcraft_loads_neither_click_nor_rich() -> None:
    """`import ipcraft` (and every public module) costs nothing of the command line's dependencies."""
    code = ("import sys, importlib, ipcraft, ipcraft.errors, ipcraft.serializers, ipcraft.testing\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'rich'))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"importing ipcraft loaded: {out.stdout.strip()}"
