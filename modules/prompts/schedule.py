"""Prompt editing ``[from:to:when]`` and alternation ``[a|b]``: a prompt becomes a per-step schedule of plain texts.

The grammar is A1111's (a hand-written parser with the same results):

- ``[from:to:when]`` uses ``from`` up to step ``when`` and ``to`` after it; ``[to:when]`` adds ``to`` later,
  ``[from::when]`` removes ``from`` later. ``when`` containing ``.`` is a fraction of the steps
  (``int(when * steps)``), otherwise an absolute step; the result is capped at ``steps``.
- ``[a|b|c]`` picks alternative ``(step - 1) % 3``; empty alternatives are allowed.
- Constructs nest; ``(…)``, ``(…:…)`` and ``[…]`` emphasis groups are kept as text (their contents may hold
  constructs). ``\\x`` escapes are kept verbatim (the emphasis parser resolves them later).
- Brackets, parentheses and colons that do not form a construct are literal text. Inside a construct every
  bracket must be balanced, otherwise the construct is literal. A ``|`` outside any ``[…|…]``, or a backslash at
  the end of the text or before a newline, makes the whole prompt literal: it gets the one-entry schedule
  ``[(steps, prompt)]``, exactly as in A1111.
- Where a construct touches stray brackets or colons (``[a:b:3]]``, ``[a:b:3]((``), A1111's result depends on the
  hash seed of its Python process (lark 1.1.2 resolves that ambiguity arbitrarily): sometimes the construct,
  sometimes literal text. We always take the construct. Everywhere else the results are A1111's.

A schedule is a list of ``(end_at_step, text)``: ``text`` applies while the sampler's step counter is
``<= end_at_step``. A1111 counts sampler steps from 0 against these 1-based boundaries, see
:func:`text_at_step`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

ScheduleEntry = tuple[int, str]

# SIGNED_NUMBER of the reference grammar, with the optional whitespace and the closing bracket after it.
_WHEN_CLOSE = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")
_PLAIN = re.compile(r"[^\\\[\]():|]+")
# Constructs nested deeper than this are treated as literal text (keeps recursion bounded; output unchanged
# except for scheduling nested this deep).
_MAX_DEPTH = 100


@dataclass(frozen=True)
class _Scheduled:
    before: tuple[_Node, ...]
    after: tuple[_Node, ...]
    when: str


@dataclass(frozen=True)
class _Alternate:
    options: tuple[tuple[_Node, ...], ...]


_Node = str | _Scheduled | _Alternate


class _Fail(Exception):
    """The text at this position does not form the construct being tried."""


class _Unparsable(Exception):
    """The whole prompt does not parse (A1111 then uses it literally)."""


def _closable_openers(text: str) -> frozenset[int]:
    """Positions of ``(``/``[`` that have a properly nested closer of their own type.

    A construct can only parse if its opener is in this set (everything inside it must be balanced), so the
    parser skips the others at once instead of trying them; this keeps long runs of unclosed brackets linear.
    """
    closable: set[int] = set()
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c in "([":
            stack.append(i)
        elif c in ")]" and stack:
            if text[stack[-1]] == ("(" if c == ")" else "["):
                closable.add(stack.pop())
            else:
                stack.clear()  # a wrong closer makes every construct around it fail
        i += 1
    return frozenset(closable)


def _escape_at(text: str, i: int, nested: bool) -> str:
    if i + 1 < len(text) and text[i + 1] != "\n":
        return text[i:i + 2]
    if nested:
        raise _Fail
    raise _Unparsable


def _parse_seq(text: str, i: int, depth: int, closable: frozenset[int]) -> tuple[list[_Node], int]:
    """A sequence inside a construct: stops (without consuming) at ``) ] : |`` or the end of the text."""
    nodes: list[_Node] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c in ")]:|":
            break
        if c in "([":
            group, i = _parse_construct(text, i, depth + 1, closable)
            nodes.extend(group)
        elif c == "\\":
            nodes.append(_escape_at(text, i, nested=True))
            i += 2
        else:
            m = _PLAIN.match(text, i)
            assert m is not None
            nodes.append(m.group(0))
            i = m.end()
    return nodes, i


def _parse_construct(text: str, i: int, depth: int, closable: frozenset[int]) -> tuple[list[_Node], int]:
    """The construct opening at ``text[i]`` (``(`` or ``[``); raises _Fail when there is none."""
    if depth > _MAX_DEPTH or i not in closable:
        raise _Fail
    n = len(text)
    first, j = _parse_seq(text, i + 1, depth, closable)
    if j >= n:
        raise _Fail
    c = text[j]
    if text[i] == "(":
        if c == ")":
            return ["(", *first, ")"], j + 1
        if c == ":":
            second, k = _parse_seq(text, j + 1, depth, closable)
            if k < n and text[k] == ")":
                return ["(", *first, ":", *second, ")"], k + 1
        raise _Fail
    if c == "]":
        return ["[", *first, "]"], j + 1
    if c == "|":
        options = [tuple(first)]
        while j < n and text[j] == "|":
            option, j = _parse_seq(text, j + 1, depth, closable)
            options.append(tuple(option))
        if j < n and text[j] == "]":
            return [_Alternate(tuple(options))], j + 1
        raise _Fail
    if c == ":":
        m = _WHEN_CLOSE.match(text, j + 1)
        if m:
            return [_Scheduled((), tuple(first), m.group(1))], m.end()
        second, k = _parse_seq(text, j + 1, depth, closable)
        if k < n and text[k] == ":":
            m = _WHEN_CLOSE.match(text, k + 1)
            if m:
                return [_Scheduled(tuple(first), tuple(second), m.group(1))], m.end()
    raise _Fail


def _parse(text: str) -> list[_Node]:
    """Top level: like a sequence, but brackets, parentheses and colons that form no construct are text."""
    nodes: list[_Node] = []
    closable = _closable_openers(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "([":
            try:
                group, i = _parse_construct(text, i, 1, closable)
                nodes.extend(group)
                continue
            except _Fail:
                nodes.append(c)
                i += 1
        elif c in ")]:":
            nodes.append(c)
            i += 1
        elif c == "|":
            raise _Unparsable
        elif c == "\\":
            nodes.append(_escape_at(text, i, nested=False))
            i += 2
        else:
            m = _PLAIN.match(text, i)
            assert m is not None
            nodes.append(m.group(0))
            i = m.end()
    return nodes


@dataclass(frozen=True)
class _Timeline:
    """How ``when`` numbers map to steps: the first pass, or the hires pass (A1111's two timelines)."""

    steps: int
    int_offset: int = 0
    fraction_offset: float = 0.0

    def switch_step(self, when: str) -> int:
        value = float(when)
        if "." in when:
            value = (value - self.fraction_offset) * self.steps
        else:
            value = value - self.int_offset
        if not math.isfinite(value) or value >= self.steps:
            return self.steps
        return int(max(value, -1.0))


def _collect_steps(nodes: Sequence[_Node], timeline: _Timeline, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            when = timeline.switch_step(node.when)
            if when >= 1:
                found.add(when)
            _collect_steps(node.before, timeline, found)
            _collect_steps(node.after, timeline, found)
        elif isinstance(node, _Alternate):
            found.update(range(1, timeline.steps + 1))
            for option in node.options:
                _collect_steps(option, timeline, found)


def _text_at(nodes: Sequence[_Node], step: int, timeline: _Timeline, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            chosen = node.before if step <= timeline.switch_step(node.when) else node.after
            _text_at(chosen, step, timeline, out)
        else:
            _text_at(node.options[(step - 1) % len(node.options)], step, timeline, out)


def get_prompt_schedule(prompt: str, steps: int, *, hires_steps: int | None = None) -> list[ScheduleEntry]:
    """The schedule ``[(end_at_step, text), …]`` of one prompt for a run of ``steps`` sampling steps.

    Boundaries are 1-based step numbers, last one ``steps``; e.g. with 10 steps ``a [b:3]`` gives
    ``[(3, "a "), (10, "a b")]`` and ``[b:0.5]`` switches at ``int(0.5 * 10) = 5``. With ``hires_steps`` the
    schedule is for a hires-fix second pass of that many steps: integers count on from the first pass
    (``when - steps``) and fractions from 1.0 (``(when - 1) * hires_steps``), as A1111 does. Never raises.
    """
    timeline = (_Timeline(max(int(steps), 1)) if hires_steps is None
                else _Timeline(max(int(hires_steps), 1), int(steps), 1.0))
    try:
        nodes = _parse(prompt)
    except _Unparsable:
        return [(timeline.steps, prompt)]
    found = {timeline.steps}
    _collect_steps(nodes, timeline, found)
    schedule = []
    for step in sorted(found):
        out: list[str] = []
        _text_at(nodes, step, timeline, out)
        schedule.append((step, "".join(out)))
    return schedule


def get_prompt_schedules(prompts: Sequence[str], steps: int, *,
                         hires_steps: int | None = None) -> list[list[ScheduleEntry]]:
    """Schedules for a batch of prompts; each distinct prompt is parsed once and equal prompts share one list."""
    distinct = {prompt: get_prompt_schedule(prompt, steps, hires_steps=hires_steps)
                for prompt in dict.fromkeys(prompts)}
    return [distinct[prompt] for prompt in prompts]


def text_at_step(schedule: Sequence[ScheduleEntry], step: int) -> str:
    """The text the sampler uses at ``step``, counted from 0 as A1111's denoiser does.

    A1111 takes the first entry with ``step <= end_at_step``. Because its counter starts at 0 while the
    boundaries are 1-based, ``[a:b:5]`` uses ``a`` for 6 steps (0…5) and ``b`` from the 7th, and ``[a|b]`` gives
    a, a, b, a, b, … Kept for identical images. Past the last boundary the last entry applies.
    """
    for end_at_step, text in schedule:
        if step <= end_at_step:
            return text
    return schedule[-1][1]
