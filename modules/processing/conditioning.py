"""Per-image conditioning schedules: AND sub-prompts with weights, prompt editing per step, the negative prompt."""
from __future__ import annotations

from dataclasses import dataclass

from ..prompts import parse_prompt
from ..text_encoding import Conditioning, PromptEncoder

Schedule = list[tuple[int, Conditioning]]  # (end_at_step, conditioning), A1111's 1-based boundaries


@dataclass(frozen=True)
class ImageConds:
    subprompts: tuple[tuple[float, Schedule], ...]  # (weight, schedule) per AND part
    uncond: Schedule

    @property
    def plain(self) -> bool:
        """A single sub-prompt of weight 1: the uncond pass can be skipped at CFG 1."""
        return len(self.subprompts) == 1 and self.subprompts[0][0] == 1.0


def at_step(schedule: Schedule, step: int) -> Conditioning:
    """The conditioning in force at sampler step ``step`` (from 0): the first entry with step <= end."""
    for end, cond in schedule:
        if step <= end:
            return cond
    return schedule[-1][1]


def build_conds(encoder: PromptEncoder, prompts: list[str], negatives: list[str], steps: int,
                hires_steps: int | None = None) -> list[ImageConds]:
    """Encode every scheduled text once (the encoder caches by text) into per-image schedules."""
    out = []
    for prompt, negative in zip(prompts, negatives):
        parsed = parse_prompt(prompt, steps, hires_steps=hires_steps)
        subs = tuple((sp.weight, [(end, encoder.encode(text)) for end, text in sp.schedule]) for sp in parsed.subprompts)
        neg = parse_prompt(negative, steps, negative=True, hires_steps=hires_steps).subprompts[0]
        out.append(ImageConds(subs, [(end, encoder.encode(text)) for end, text in neg.schedule]))
    return out
