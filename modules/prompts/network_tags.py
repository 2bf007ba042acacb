"""Extra-network tags (``<lora:name:0.8>``, ``<hypernet:name:1>``, …): found, parsed and cut out of a prompt.

A tag is ``<KIND:ARG:ARG…>`` where KIND is a word. Arguments are split on ``:``; an argument with ``=`` is
named (``te=0.5``, ``unet=1``, ``dyn=8``), the others are positional: name, text-encoder multiplier,
UNet multiplier (defaults to the text-encoder one), dyn dim. A tag whose multiplier or dyn dim is not a
number, or that has no name, is left in the prompt untouched (so the user sees it in the result's
infotext) and is not returned.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_TAG = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class NetworkTag:
    """One extra-network tag taken out of a prompt."""

    kind: str
    name: str
    te_multiplier: float = 1.0
    unet_multiplier: float = 1.0
    dyn_dim: int | None = None
    named: dict[str, str] = field(default_factory=dict)
    text: str = ""


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _integer(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        return None


def parse_network_tag(kind: str, args: str, text: str = "") -> NetworkTag | None:
    """Parse the arguments of one tag (the part after ``KIND:``); None when they are malformed."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in args.split(":"):
        key, eq, value = item.partition("=")
        if eq:
            named[key.strip()] = value.strip()
        else:
            positional.append(item)
    name = positional[0].strip() if positional else ""
    if not name:
        return None

    te_text = named.get("te", positional[1] if len(positional) > 1 else "1")
    te = _number(te_text)
    unet_text = named.get("unet", positional[2] if len(positional) > 2 else None)
    unet = te if unet_text is None else _number(unet_text)
    dyn_text = named.get("dyn", positional[3] if len(positional) > 3 else None)
    dyn = None if dyn_text is None else _integer(dyn_text)
    if te is None or unet is None or (dyn_text is not None and dyn is None):
        return None
    return NetworkTag(kind=kind, name=name, te_multiplier=te, unet_multiplier=unet, dyn_dim=dyn, named=named,
                      text=text)


def extract_network_tags(prompt: str) -> tuple[str, list[NetworkTag]]:
    """Remove every well-formed extra-network tag from ``prompt``.

    Returns the prompt without the tags (nothing else changes, surrounding spaces and commas stay) and the tags
    in order of appearance. Malformed tags stay in the text.
    """
    tags: list[NetworkTag] = []

    def take(match: re.Match[str]) -> str:
        tag = parse_network_tag(match.group(1), match.group(2), match.group(0))
        if tag is None:
            return match.group(0)
        tags.append(tag)
        return ""

    return _TAG.sub(take, prompt), tags
