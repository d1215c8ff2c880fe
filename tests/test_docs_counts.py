"""Counts the docs state come from the code: the bad inputs of tests/test_bad_inputs.py, and the
crafted checkpoints and the ways of reading one of tests/test_crafted_checkpoints.py, wherever
a page names their number."""

from __future__ import annotations

import re
from pathlib import Path

from test_bad_inputs import USAGE
from test_crafted_checkpoints import COMMANDS, VARIANTS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COUNTS = {r"(\d+) bad (?:inputs|command lines)": len(USAGE),
          r"(\d+) crafted (?:checkpoints|files)": len(VARIANTS),
          r"(\d+) ways (?:a command reads|of reading) a checkpoint": len(COMMANDS)}


def test_the_counts_in_the_docs_are_the_codes():
    found = 0
    for page in PAGES:
        text = page.read_text()
        for pattern, count in COUNTS.items():
            for m in re.finditer(pattern, text):
                found += 1
                assert int(m.group(1)) == count, (page.name, m.group(0), count)
    assert found >= 3  # the pages do name them
