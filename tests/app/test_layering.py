"""app/ speaks HTTP: its modules reach PyTorch only through models/, and only to load a model."""

from __future__ import annotations

import json
import subprocess
import sys

# the start-up path resolves the model's weights through open_clip before loading it
LOADS_THE_MODEL = {"app.__main__", "app.preflight"}


def test_no_app_module_imports_torch_or_open_clip() -> None:
    code = f"""
import importlib, json, pkgutil, sys
import app
names = sorted(m.name for m in pkgutil.walk_packages(app.__path__, "app."))
for name in names:
    if name not in {sorted(LOADS_THE_MODEL)!r}:
        importlib.import_module(name)
print(json.dumps([len(names), sorted(k for k in ("torch", "open_clip") if k in sys.modules)]))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    modules, reached = json.loads(result.stdout.strip().splitlines()[-1])
    assert modules > 25  # every module was imported, not an empty walk
    assert reached == []
