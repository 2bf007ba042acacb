"""The order of the suite's files: those with browser tests first (most browser tests first), then the rest as
collected.

``launch.py test`` hands whole files to two processes in this order (pytest-xdist's ``--dist loadfile`` with
``--no-loadscope-reorder``). The browser files are the longest; started first, they run side by side while the many
short files fill the gaps at the end, instead of one process running the last long file while the other waits.
"""
from __future__ import annotations

from collections import Counter


def pytest_collection_modifyitems(items) -> None:
    browser_tests = Counter(item.path for item in items if "browser" in item.fixturenames)
    collected = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: (-browser_tests[item.path], collected[item.path]))
