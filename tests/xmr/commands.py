"""Running the `xmr` command as a user does: a process of its own, configured only by the
XMR_* variables given (none inherited from the test's environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_xmr(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("XMR_")}
    return subprocess.run(
        [sys.executable, "-m", "xmr", *args],
        cwd=REPO,
        env=base | env,
        text=True,
        capture_output=True,
        timeout=300,
    )
