"""Interrupt inside a UNet call: forward pre-hooks on the UNet's blocks check the job's stop flags.

A sampling step is one UNet call, which takes minutes for a large image on a CPU; checking only between steps
made Interrupt wait for the step to end. While :func:`stop_checks` is active, each block of ``down_blocks``,
``mid_block`` and ``up_blocks`` and the layers inside it (resnets, attentions and their transformer blocks,
down/upsamplers) first check ``control.should_stop`` and raise :class:`~modules.sampling.Interrupted`, which the
sampler turns into a stop at the start of the step (the same result as a stop between steps). The hooks are
removed when the block ends, so none stays on the model after the call.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..models.compile import is_compiled
from ..sampling import Interrupted, SamplingControl

NESTING = 2  # block → its layers (resnets, attentions, …) → their layers (transformer blocks)


def checkpoints(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose start is checked: the UNet's down, mid and up blocks and the layers nested in them."""
    blocks = [*getattr(unet, "down_blocks", ()), getattr(unet, "mid_block", None), *getattr(unet, "up_blocks", ())]
    found: list[torch.nn.Module] = []
    for block in blocks:
        if block is not None:
            found += _nested(block, NESTING)
    return found


def _nested(module: torch.nn.Module, depth: int) -> list[torch.nn.Module]:
    found = [module]
    if depth:
        for child in module.children():
            if isinstance(child, torch.nn.ModuleList):
                for member in child:
                    found += _nested(member, depth - 1)
    return found


@contextlib.contextmanager
def stop_checks(unet: torch.nn.Module, control: SamplingControl | None) -> Iterator[None]:
    """Within this block, a UNet forward pass raises ``Interrupted`` at the next checkpoint once ``control`` says
    stop (interrupt or skip). ``control`` None, or a UNet compiled by ``--compile`` (its graph would not see
    hooks added per call): no checks."""
    if control is None or is_compiled(unet):
        yield
        return

    def check(module, args) -> None:
        if control.should_stop:
            raise Interrupted()

    # prepended: the check runs before other pre-hooks (--lowvram's moves the block to the GPU)
    handles = [module.register_forward_pre_hook(check, prepend=True) for module in checkpoints(unet)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
