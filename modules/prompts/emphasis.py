"""Emphasis ``(x)`` / ``[x]`` / ``(x:1.5)`` and ``BREAK``: a plain prompt text becomes ``(text, weight)`` pieces.

Rules (A1111's, with the weights multiplied in the same order so the floats come out identical):

- ``(x)`` multiplies by 1.1, ``[x]`` by 1/1.1, ``(x:w)`` by ``w`` (spaces allowed around the number); nesting
  multiplies.
- A ``(`` or ``[`` that is never closed applies to the end of the text (all unclosed ``(`` first, then ``[``).
- A closer without an opener, and a ``:`` that is not ``:w)`` closing a ``(``, are literal text.
- ``\\( \\) \\[ \\] \\\\`` are the literal characters; a backslash before any other character is dropped.
- ``BREAK`` (upper case, whole word) with the whitespace around it becomes the marker :data:`BREAK_MARKER`
  ``("BREAK", -1.0)``. Unlike A1111 the marker is never scaled by surrounding brackets, so BREAK also works
  inside parentheses (A1111 then turns it into the literal word with weight -1.1).
- Neighbouring pieces of equal weight are merged; empty pieces are dropped; the result is never empty.
"""

from __future__ import annotations

import re

BREAK_MARKER: tuple[str, float] = ("BREAK", -1.0)

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_WEIGHT_CLOSE = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)")
_TEXT = re.compile(r"[^\\()\[\]:]+")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_ESCAPABLE = "()[]\\"


def is_break(piece: tuple[str, float]) -> bool:
    """True for the chunk-break marker produced by ``BREAK``."""
    return piece[1] == BREAK_MARKER[1] and piece[0] == BREAK_MARKER[0]


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into ``(text, weight)`` pieces; see the module docstring for the rules. Never raises."""
    pieces: list[list] = []  # [text, weight, is_break]
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if not piece[2]:
                piece[1] *= factor

    def add_text(chunk: str) -> None:
        for index, part in enumerate(_BREAK.split(chunk)):
            if index:
                pieces.append([BREAK_MARKER[0], BREAK_MARKER[1], True])
            pieces.append([part, 1.0, False])

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 < n and text[i + 1] in _ESCAPABLE:
                pieces.append([text[i + 1], 1.0, False])
                i += 2
            else:
                i += 1  # a lone backslash disappears, as in A1111
        elif c == "(":
            round_open.append(len(pieces))
            i += 1
        elif c == "[":
            square_open.append(len(pieces))
            i += 1
        elif c == ":":
            m = _WEIGHT_CLOSE.match(text, i)
            if m and round_open:
                scale_from(round_open.pop(), float(m.group(1)))
                i = m.end()
            else:
                # A1111 keeps an unmatched ``:w)`` as one literal piece; the text is the same either way.
                end = m.end() if m else i + 1
                add_text(text[i:end])
                i = end
        elif c == ")" and round_open:
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
            i += 1
        elif c == "]" and square_open:
            scale_from(square_open.pop(), SQUARE_MULTIPLIER)
            i += 1
        elif c in ")]":
            add_text(c)
            i += 1
        else:
            m = _TEXT.match(text, i)
            assert m is not None
            add_text(m.group(0))
            i = m.end()

    for start in round_open:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale_from(start, SQUARE_MULTIPLIER)

    result: list[tuple[str, float]] = []
    for piece_text, weight, marker in pieces:
        if marker:
            result.append(BREAK_MARKER)
        elif not piece_text:
            continue
        elif result and not is_break(result[-1]) and result[-1][1] == weight:
            result[-1] = (result[-1][0] + piece_text, weight)
        else:
            result.append((piece_text, weight))
    return result or [("", 1.0)]
