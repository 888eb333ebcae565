"""The public surface and the layering (STYLE.md R1, R2, R3, R25).

Layer decision (R1): the brief orders the layers primitives < _transports < _framing/_auth/serializers
< _channel < _connect < facade.  The sans-I/O value modules (_endpoint, serializers, _framing, _auth)
contain no I/O and import only the shared internals, and transports are *handed* their values (a
transport's connect() takes an Endpoint, reports a Peer, and tcp:// runs the _auth handshake), so here
they rank below _transports.  What the rule protects is unchanged: a primitive never imports a
transport, a transport never imports a channel, the channel never imports the facade.
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

#: Importable by every module; they import nothing ranked (only each other).
SHARED = {"_errors", "_resource", "_names", "errors", "_native", "_version", "_wait", "_peer"}
#: Rank of each top-level module or package under ipcraft; a module may import its own rank or lower.
LAYERS = {
    "primitives": 0, "_unix_diag": 0,
    "_endpoint": 1, "serializers": 1, "_framing": 1, "_auth": 1,
    "_transports": 2, "_rings": 2,
    "_channel": 3, "_zerocopy": 3,
    "_connect": 4,
    "": 5, "__main__": 5, "aio": 5, "testing": 5, "_conformance": 5, "_cli": 5, "_bench": 5,
    "inventory": 5, "limits": 5,
}
#: Private packages behind the `ipcraft` command: their __all__ is their interface to _cli, not names
#: the library promises (they are still bound by the layering).
COMMAND_MACHINERY = {"_bench", "_cli"}
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


def top_level(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


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
                found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules or a.name in SHARED else target
                          for a in node.names}
            else:
                found.add(target)
    return found


def test_every_module_has_a_layer() -> None:
    """Each module is in SHARED or LAYERS, so the layering test sees it (add new modules there)."""
    missing = {m for m in module_files() if top_level(m) not in SHARED and top_level(m) not in LAYERS}
    assert not missing, f"modules without a layer: {sorted(missing)}"


def test_imports_only_point_down() -> None:
    """No module imports a module of a higher layer; the shared internals import only each other (R1)."""
    bad = []
    for module, path in module_files().items():
        me = top_level(module)
        for target in imports_of(module, path):
            it = top_level(target)
            if it in SHARED or it == me:
                continue
            if me in SHARED:
                bad.append(f"{module} (shared) imports {target}")
            elif it not in LAYERS:
                bad.append(f"{module} imports {target}, which has no layer")
            elif LAYERS[it] > LAYERS[me]:
                bad.append(f"{module} (layer {LAYERS[me]}) imports {target} (layer {LAYERS[it]})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_layering_test_sees_upward_imports(tmp_path: Path) -> None:
    """The import walker resolves relative and lazy imports (so the rule above cannot pass vacuously)."""
    f = tmp_path / "m.py"
    f.write_text("from .. import _channel\ndef f():\n    from .._connect import connect\nimport ipcraft.aio\n")
    assert imports_of("ipcraft._transports.m", f) == {"ipcraft._channel", "ipcraft._connect", "ipcraft.aio"}


@pytest.mark.parametrize("mod", public_modules(), ids=lambda m: m.__name__)
def test_public_module_has_a_tuple_all(mod: ModuleType) -> None:
    """Every public module has a tuple __all__ whose names exist, and lists every public class and
    function it defines (R2)."""
    assert isinstance(getattr(mod, "__all__", None), tuple), f"{mod.__name__}.__all__ is not a tuple"
    for name in mod.__all__:
        assert hasattr(mod, name), f"{mod.__name__}.__all__ names {name!r}, which does not exist"
    defined = {n for n, obj in vars(mod).items()
               if not n.startswith("_") and callable(obj) and getattr(obj, "__module__", None) == mod.__name__}
    unlisted = defined - set(mod.__all__)
    assert not unlisted, f"{mod.__name__} defines public names missing from __all__: {sorted(unlisted)}"


def test_each_public_name_has_one_home() -> None:
    """Each public object is exported by at most one leaf public module (the facades may re-export it),
    and every name a private module lists in __all__ is exported by some public module (R2)."""
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
    """No public submodule shares a name with something the facade exports (R3: ipcraft.pipe)."""
    subs = {m.name for m in pkgutil.iter_modules(ipcraft.__path__)}
    assert not subs & set(ipcraft.__all__), sorted(subs & set(ipcraft.__all__))


def test_import_ipcraft_loads_neither_click_nor_rich() -> None:
    """`import ipcraft` (and every public module) costs nothing of the command line's dependencies (R25)."""
    code = ("import sys, importlib, ipcraft, ipcraft.errors, ipcraft.serializers, ipcraft.testing\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'rich'))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"importing ipcraft loaded: {out.stdout.strip()}"
