"""What every benchmark script shares: its command line's common part, and how it hands back
its figures (JSON on stdout, and to a file if asked)."""

from __future__ import annotations

import argparse
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


def benchmark_parser(description: str | None) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes: the model, and where the JSON goes."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="", help="'' = random weights (same cost)")
    parser.add_argument("--json-out", type=Path, default=None)
    return parser
