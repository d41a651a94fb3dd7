"""The mutation test's breaks still apply: each names code that is there, exactly once.

`make mutation-test` is slow and not part of `make test`; this keeps a refactor from leaving a
break that no longer finds its line (it would be reported as "cannot be applied" only there).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.mutation_test import BREAKS, REPO


@pytest.mark.parametrize("item", BREAKS, ids=[b.name for b in BREAKS])
def test_each_break_finds_its_line_once(item) -> None:  # type: ignore[no-untyped-def]
    text = (REPO / item.file).read_text()
    assert text.count(item.find) == 1, f"{item.file}: the break '{item.name}' must match once"
    for node in item.tests:
        assert (REPO / node.split("::")[0]).is_file(), node
        assert (
            Path(REPO / node.split("::")[0]).read_text().count(f"def {node.split('::')[1]}(") == 1
        )
