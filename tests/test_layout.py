"""The package's layers: imports flow one way (config -> io -> data -> models/losses/metrics -> training/inference -> cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import medgen

PACKAGE = Path(medgen.__file__).parent
# what each top-level part of medgen may import (besides itself, medgen/__init__ and medgen/errors)
ALLOWED = {
    "errors": set(),
    "config": set(),
    "io": {"config"},
    "data": {"config", "io"},
    "models": {"config", "io"},
    "losses": {"config", "io"},
    "metrics": {"config", "io"},
    "training": {"config", "io", "data", "models", "losses", "metrics"},
    "inference": {"config", "io", "data", "models", "losses", "metrics"},
    "cli": {"config", "io", "data", "models", "losses", "metrics", "training", "inference"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        found |= {n.split(".")[1] for n in names if n.startswith("medgen.")}
    return found


def test_imports_flow_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if part == "__init__":
            continue
        assert part in ALLOWED, f"{path}: new top-level part {part!r}; place it in the layers above"
        for target in _imports(path) - {part, "errors"}:
            if target not in ALLOWED[part]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports medgen.{target}")
    assert not wrong, wrong


def test_every_package_says_what_lives_in_it():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.relative_to(PACKAGE.parent)} has no docstring"


def _module_imports() -> dict[str, set[str]]:
    """Every medgen module and the medgen modules it imports anywhere in it (function-level imports too),
    without the packages that contain it (importing a sibling runs them anyway)."""
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}

    def module_of(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    edges = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [node.module])])
                if base.startswith("medgen"):
                    found |= {module_of(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base) for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {module_of(a.name) for a in node.names if a.name.startswith("medgen")}
        edges[name] = {t for t in found if t != name and not name.startswith(t + ".")}
    return edges


def test_no_module_imports_itself_through_others():
    """No import circle anywhere in the package, within a part or across parts."""
    edges = _module_imports()
    assert "medgen.training.base" in edges["medgen.training.vae"]  # the graph sees imports
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for target in sorted(edges[module]):
            visit(target, path + [module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])
