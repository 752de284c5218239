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
