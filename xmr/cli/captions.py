"""Caption files: Karpathy JSON, a {name: caption(s)} JSON object, or CSV/TSV rows, read into
text items linked to their images."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xmr.cli.app import CliError
from xmr.files import ImageFile


def read_captions(path: Path) -> dict[str, list[str]]:
    """Captions by image file name, from a Karpathy JSON, a {name: caption(s)} JSON, or CSV/TSV."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"cannot read captions file {path}: {e.strerror or e}", 2) from e
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CliError(f"{path} is not valid JSON: {e}", 2) from e
        if isinstance(data, dict) and isinstance(data.get("images"), list):
            return {
                entry["filename"]: [
                    s["raw"] if isinstance(s, dict) else str(s) for s in entry["sentences"]
                ]
                for entry in data["images"]
            }
        if isinstance(data, dict):
            return {k: v if isinstance(v, list) else [v] for k, v in data.items()}
        raise CliError(f"{path}: expected a Karpathy file or an object of captions", 2)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    captions: dict[str, list[str]] = {}
    for row in csv.reader(text.splitlines(), delimiter=delimiter):
        if len(row) >= 2 and row[0].strip() and row[1].strip():
            captions.setdefault(row[0].strip(), []).append(row[1].strip())
    return captions


def caption_items(
    files: Sequence[ImageFile], captions: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """The text items for the images' captions: `<image id>#<n>`, metadata `image_id`."""
    items: list[dict[str, Any]] = []
    for file in files:
        for key in (file.item_id, file.path.name):
            if key in captions:
                link = {"image_id": file.item_id}
                items += [
                    {"id": f"{file.item_id}#{n}", "text": text, "metadata": link}
                    for n, text in enumerate(captions[key])
                    if text.strip()
                ]
                break
    return items
