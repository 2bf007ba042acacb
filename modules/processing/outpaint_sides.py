"""The sides an outpainting script extends and by how much (A1111's sizing, shared by both outpainting scripts)."""
from __future__ import annotations

import math

SIDES = ("left", "right", "up", "down")


def chosen_sides(sides) -> tuple[str, ...]:
    """The sides named in ``sides`` (a list, or text such as "left, up"), in A1111's order; ValueError if none or
    one is unknown."""
    words = sides.replace(",", " ").split() if isinstance(sides, str) else list(sides)
    names = {str(word).strip().lower() for word in words if str(word).strip()}
    unknown = sorted(names - set(SIDES))
    if unknown or not names:
        raise ValueError(f"direction: {', '.join(unknown) or 'nothing'} given; name sides among {', '.join(SIDES)}")
    return tuple(side for side in SIDES if side in names)


def side_amounts(size: tuple[int, int], pixels: int, sides: tuple[str, ...]) -> dict[str, int]:
    """Pixels added on each side of an image of ``size``: ``pixels`` on each chosen side, the new width and height
    rounded up to multiples of 64 and that growth shared between opposite sides in proportion."""
    amounts = {side: pixels if side in sides else 0 for side in SIDES}
    for (first, second), length in ((("left", "right"), size[0]), (("up", "down"), size[1])):
        wanted = amounts[first] + amounts[second]
        growth = math.ceil((length + wanted) / 64) * 64 - length
        if amounts[first]:
            amounts[first] = amounts[first] * growth // wanted
        if amounts[second]:
            amounts[second] = growth - amounts[first]
    return amounts
