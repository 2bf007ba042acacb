"""A1111 prompt grammar, pure text (no torch): network tags, AND, scheduling, emphasis, styles.

Stages, in A1111's order: :func:`extract_network_tags` (positive prompts only) → :func:`split_conjunction`
(positive prompts only) → :func:`get_prompt_schedule` per sub-prompt → :func:`parse_emphasis` on each scheduled
text (done by the text encoder). :func:`parse_prompt` runs the first three for one prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.prompts.conjunction import split_conjunction
from modules.prompts.emphasis import BREAK_MARKER, is_break, parse_emphasis
from modules.prompts.network_tags import NetworkTag, extract_network_tags
from modules.prompts.schedule import (ScheduleEntry, get_prompt_schedule, get_prompt_schedules,
                                      text_at_step)

__all__ = [
    "BREAK_MARKER", "NetworkTag", "ParsedPrompt", "ScheduleEntry", "SubPrompt", "extract_network_tags",
    "get_prompt_schedule", "get_prompt_schedules", "is_break", "parse_emphasis", "parse_prompt",
    "split_conjunction", "text_at_step",
]


@dataclass(frozen=True)
class SubPrompt:
    """One ``AND`` part: its weight and its per-step schedule of plain texts."""

    weight: float
    schedule: tuple[ScheduleEntry, ...]


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt after the text stages: the text without network tags, the tags, and the weighted sub-prompts."""

    text: str
    networks: tuple[NetworkTag, ...]
    subprompts: tuple[SubPrompt, ...]


def parse_prompt(prompt: str, steps: int, *, negative: bool = False,
                 hires_steps: int | None = None) -> ParsedPrompt:
    """Run tags → AND → schedule on one prompt.

    For a negative prompt (``negative=True``) A1111 neither extracts network tags nor splits at AND: the whole
    text is one sub-prompt of weight 1 and tags stay as text. Never raises.
    """
    if negative:
        return ParsedPrompt(prompt, (), (SubPrompt(1.0, tuple(get_prompt_schedule(prompt, steps,
                                                                                  hires_steps=hires_steps))),))
    text, tags = extract_network_tags(prompt)
    subprompts = tuple(SubPrompt(weight, tuple(get_prompt_schedule(part, steps, hires_steps=hires_steps)))
                       for part, weight in split_conjunction(text))
    return ParsedPrompt(text, tuple(tags), subprompts)
