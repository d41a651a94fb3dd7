"""app/ speaks HTTP: it reaches PyTorch only through models/ and only to load a model, FAISS and
pymilvus only when a store opens, and its routers reach index/ and models/ only through the
services."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

# the start-up path resolves the model's weights through open_clip before loading it, and
# checks XMR_INDEX with FAISS before the server starts
LOADS_THE_MODEL = {"app.__main__", "app.preflight"}
ROUTERS = Path(__file__).resolve().parents[2] / "app" / "routers"


def imported_heavy_modules() -> tuple[int, list[str]]:
    """How many app modules were imported, and which heavy libraries that loaded."""
    code = f"""
import importlib, json, pkgutil, sys
import app
names = sorted(m.name for m in pkgutil.walk_packages(app.__path__, "app."))
for name in names:
    if name not in {sorted(LOADS_THE_MODEL)!r}:
        importlib.import_module(name)
heavy = ("torch", "open_clip", "faiss", "pymilvus")
print(json.dumps([len(names), sorted(k for k in heavy if k in sys.modules)]))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    modules, reached = json.loads(result.stdout.strip().splitlines()[-1])
    return modules, reached


def test_no_app_module_imports_torch_open_clip_faiss_or_pymilvus() -> None:
    modules, reached = imported_heavy_modules()
    assert modules > 25  # every module was imported, not an empty walk
    assert reached == []


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_routers_reach_index_and_models_only_through_the_services() -> None:
    routers = sorted(ROUTERS.glob("*.py"))
    assert len(routers) > 8
    reaching = {
        path.name: sorted(m for m in imports_of(path) if m.split(".")[0] in ("index", "models"))
        for path in routers
    }
    assert {name: found for name, found in reaching.items() if found} == {}
