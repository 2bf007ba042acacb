"""``AND`` (composable diffusion): a positive prompt becomes weighted sub-prompts.

The prompt is split at every whole-word upper-case ``AND``. Each part may end with ``:weight`` (optional spaces
around the colon, a signed decimal such as ``1``, ``-0.5``, ``.8`` or ``2.``); the weight defaults to 1 and is
removed from the text together with the whitespace at the end of the part. Whitespace at the start is kept.
A1111 does this to every positive prompt, AND or not: ``a cat:1.2`` is the sub-prompt ``a cat`` with
weight 1.2. Negative prompts are not split.
"""

from __future__ import annotations

import re

_AND = re.compile(r"\bAND\b")
_TRAILING_WEIGHT = re.compile(r"\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+))\s*\Z")
_TRAILING_SPACE = re.compile(r"\s*\Z")


def split_conjunction(prompt: str) -> list[tuple[str, float]]:
    """Split ``prompt`` into ``[(text, weight), …]`` at ``AND``; at least one entry. Never raises."""
    parts = []
    for part in _AND.split(prompt):
        m = _TRAILING_WEIGHT.search(part)
        if m:
            parts.append((part[:m.start()], float(m.group(1))))
        else:
            parts.append((part[:_TRAILING_SPACE.search(part).start()], 1.0))
    return parts
