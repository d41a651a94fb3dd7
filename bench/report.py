"""How every benchmark script hands back its figures: JSON on stdout, and to a file if asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(report: dict[str, Any], json_out: Path | None) -> int:
    """Print `report` as JSON, write it to `json_out` too when given; the exit status."""
    text = json.dumps(report, indent=2)
    if json_out:
        json_out.write_text(text + "\n")
    print(text)
    return 0
