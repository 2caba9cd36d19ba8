"""The package's layering: lower layers never import the layers built on them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "laudnet"

# What each layer may import from laudnet (besides itself).
ALLOWED = {
    "dynamic": {"errors"},
    "models": {"dynamic", "errors", "io", "_deprecation"},
}


def _laudnet_imports(path: Path) -> set[str]:
    """Top-level laudnet packages/modules a file imports (``laudnet.x...`` or relative)."""
    package = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = list(base) + (node.module.split(".") if node.module else [])
            else:
                target = (node.module or "").split(".")
            names = [target] if node.module or not node.level else [target + [a.name] for a in node.names]
            for parts in names:
                if parts and parts[0] == "laudnet" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "laudnet" and len(parts) > 1:
                    found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_lower_layers_do_not_import_upwards(layer):
    for path in sorted((ROOT / layer).rglob("*.py")):
        upward = _laudnet_imports(path) - ALLOWED[layer] - {layer}
        assert not upward, f"{path.relative_to(ROOT)} imports {sorted(upward)}"
