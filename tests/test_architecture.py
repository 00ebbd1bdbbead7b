"""The package's shape: no import cycles, no import from a module above, layers in one
direction, and a command line that starts without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "zeroshot"

# Lower layers never import higher ones (the CLI is a client of everything, nothing imports it).
LAYERS = [
    {"_version", "errors", "paths", "precision", "prompts", "scoring", "metrics"},
    {"checkpoints", "models", "hf", "heads", "runtimes"},
    {"data"},
    {"encode"},
    {"output"},
    {"store"},
    {"tasks"},
    {"train", "scale"},  # optional: fine-tuning, few-shot heads and Ray scale-out sit beside the library, which never imports them
    {"cli", "__main__"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import of a zeroshot module in ``path``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text("utf-8"))
    top_level = {id(node) for node in tree.body}
    type_checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                     and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target]
            if is_package(target):  # "from . import x" may import the submodule x
                targets += [f"{target}.{a.name}" for a in node.names
                            if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                            or is_package(f"{target}.{a.name}")]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            if target == "zeroshot" or target.startswith("zeroshot."):
                found.append((target, id(node) in top_level))
    return found


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(name: str) -> int:
    head = name.split(".")[1] if name.count(".") else ""
    for index, members in enumerate(LAYERS):
        if head in members:
            return index
    raise AssertionError(f"module {name} is in no layer of this test; add it to LAYERS")


def test_no_module_imports_a_package_above_it():
    """Not ``from . import __version__`` or ``from zeroshot import X`` inside the package: the root
    and each package ``__init__`` are for users, modules import the module that defines a name."""
    offenders = []
    for name, path in all_modules().items():
        for target, _ in imports_of(path):
            if target != name and is_package(target) and name.startswith(target + "."):
                offenders.append(f"{name} imports {target}")
            if target == "zeroshot" and name != "zeroshot":
                offenders.append(f"{name} imports the root package")
    assert not offenders, offenders


def test_layers_point_one_way():
    offenders = [f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
                 for name, path in all_modules().items() if name != "zeroshot"
                 for target, _ in imports_of(path) if target != "zeroshot" and layer(target) > layer(name)]
    assert not offenders, offenders


@pytest.mark.parametrize("optional", ["zeroshot.train", "zeroshot.scale"])
def test_the_library_core_never_imports_an_optional_package(optional):
    """``zeroshot.train`` and ``zeroshot.scale`` are optional: only the CLI (and the package
    itself) may import them, even lazily."""
    offenders = [f"{name} imports {target}" for name, path in all_modules().items()
                 if not name.startswith((optional, "zeroshot.cli"))
                 for target, _ in imports_of(path) if target.startswith(optional)]
    assert not offenders, offenders


def test_no_import_cycles():
    graph = {name: {t for t, top in imports_of(path) if top and t != name and t in all_modules()}
             for name, path in all_modules().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_checks_would_catch_a_cycle(tmp_path, monkeypatch):
    """The walker sees relative imports (so the tests above can fail)."""
    found = dict(imports_of(PACKAGE / "tasks" / "classify.py"))
    assert "zeroshot.encode.embed" in found and "zeroshot.output.journal" in found


def test_cli_starts_without_torch():
    code = ("import sys, zeroshot, zeroshot.cli; "
                        "print(sorted(m for m in ('torch', 'open_clip', 'numpy', 'pandas', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
