"""The evaluation's data loading and recall arithmetic, on hand-made inputs."""

from __future__ import annotations

import json
from pathlib import Path

from xmr.eval import DirectionResult, load_karpathy


def test_karpathy_layout_with_splits_and_coco_subfolders(tmp_path: Path) -> None:
    captions = tmp_path / "dataset_coco.json"
    captions.write_text(
        json.dumps(
            {
                "images": [
                    {
                        "filepath": "val2014",
                        "filename": "a.jpg",
                        "split": "test",
                        "sentences": [{"raw": "a cat"}, {"raw": "a small cat"}],
                    },
                    {
                        "filepath": "train2014",
                        "filename": "b.jpg",
                        "split": "train",
                        "sentences": [{"raw": "a dog"}],
                    },
                    {"filename": "c.jpg", "split": "test", "sentences": [{"raw": "a bird"}]},
                ]
            }
        )
    )
    images = load_karpathy(captions, tmp_path / "images", "test")
    assert [i.path for i in images] == [
        tmp_path / "images" / "val2014" / "a.jpg",
        tmp_path / "images" / "c.jpg",
    ]
    assert images[0].captions == ("a cat", "a small cat")


def test_recall_at_k_counts_ranks_below_k() -> None:
    result = DirectionResult()
    for rank in (0, 0, 3, 7, 12):
        result.add("g", rank, latency_ms=1.0)
    recalls = result.recalls((1, 5, 10))
    assert recalls["g"] == {"R@1": 0.4, "R@5": 0.6, "R@10": 0.8, "queries": 5.0}
    assert recalls["all"] == recalls["g"]
