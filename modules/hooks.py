"""Typed extension points called by the processing loop (see docs/hooks.md).

A hook is registered for one :class:`HookPoint` with an owner name and an order (lower runs first, ties in
registration order). It receives a mutable payload dataclass and may change its fields. ``UNET_CALL`` hooks are
wrappers: ``hook(call, next) -> output`` must call ``next(call)`` (or replace it). A hook that raises is reported
with its owner's name, disabled for the rest of the job, and the job goes on.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

log = logging.getLogger(__name__)


class HookPoint(str, Enum):
    JOB_START = "job_start"  # JobStart
    BEFORE_SAMPLING = "before_sampling"  # BeforeSampling
    BEFORE_UNET = "before_unet"  # UnetCall (read/modify inputs)
    UNET_CALL = "unet_call"  # wrapper: (UnetCall, next) -> model output
    AFTER_UNET = "after_unet"  # AfterUnet
    AFTER_CFG = "after_cfg"  # AfterCfg
    MASK_BLEND = "mask_blend"  # MaskBlend (inpainting: original and denoised latents mixed through the mask)
    INPAINT_COMPOSITE = "inpaint_composite"  # InpaintComposite (inpainting: the masks the images are pasted with)
    AFTER_DECODE = "after_decode"  # AfterDecode
    BEFORE_SAVE = "before_save"  # BeforeSave
    INFOTEXT = "infotext"  # InfotextFields
    JOB_END = "job_end"  # JobEnd


@dataclass
class JobStart:
    params: Any
    settings: Any
    model: Any


@dataclass
class BeforeSampling:
    """Before a sampling run: the starting latents (already scaled by the first sigma), sigmas, batch seeds."""

    params: Any
    latents: Any
    sigmas: Any
    seeds: list[int]
    iteration: int
    model: Any
    pass_name: str = "first"


@dataclass
class UnetCall:
    """One UNet evaluation of the CFG batch. ``x`` is already scaled by c_in; ``context`` rows match ``x`` rows.

    ``down_residuals`` / ``mid_residual`` are passed to diffusers' ``down_block_additional_residuals`` /
    ``mid_block_additional_residual`` (ControlNet-style conditioning adds its residuals here).
    """

    x: Any
    sigma: Any  # [rows]
    timestep: Any  # [rows]
    context: Any
    added_cond: dict | None
    step: int
    total_steps: int
    is_uncond: list[bool]  # per row
    image_index: list[int]  # per row: which image of the batch
    params: Any
    model: Any
    down_residuals: list | None = None
    mid_residual: Any = None


@dataclass
class AfterUnet:
    denoised: Any  # [rows] denoised estimates before CFG
    call: UnetCall


@dataclass
class AfterCfg:
    denoised: Any  # [batch]
    x: Any
    sigma: Any
    step: int
    total_steps: int
    params: Any


@dataclass
class MaskBlend:
    """Inpainting: the original latents pinned outside the mask, after each denoiser call (``final`` False, with
    that call's ``sigma``) and once on the sampler's result (``final`` True). The engine mixes
    ``init_latent * keep + latent * (1 - keep)``; a hook that sets ``blended`` ([B, 4, h, w]) replaces that mix.
    ``keep`` is the engine's mask (1 = original, rounded to 0/1 as A1111's), ``soft_keep`` the same mask unrounded
    (the mask blur's gradient at latent size)."""

    init_latent: Any  # [B, 4, h, w]
    latent: Any  # [B, 4, h, w]: the denoised estimate (or the sampler's result when final)
    keep: Any  # [B or 1, 1, h, w]
    soft_keep: Any  # [B or 1, 1, h, w]
    sigma: Any  # [B] (0 when final)
    step: int
    total_steps: int
    final: bool
    params: Any
    blended: Any = None


@dataclass
class InpaintComposite:
    """Inpainting, once per batch after sampling: ``masks[i]`` (a full-size "L" image, 255 = generated) is the mask
    image ``i`` of the batch is pasted over its original with; a hook may replace entries. ``init_latent`` /
    ``latent`` are the original and sampled latents of the work area (``work_size`` = (width, height) pixels), which
    is ``boxes[i]`` of the original for "Only masked" (None: the whole image)."""

    masks: list
    init_latent: Any  # [B, 4, h, w]
    latent: Any  # [B, 4, h, w]
    soft_keep: Any  # [B or 1, 1, h, w]: see MaskBlend
    boxes: list
    original_sizes: list  # per image: (width, height) of the image the mask applies to
    work_size: tuple[int, int]
    params: Any


@dataclass
class AfterDecode:
    images: list  # PIL images of this batch
    seeds: list[int]
    params: Any


@dataclass
class BeforeSave:
    image: Any
    infotext: str
    index: int
    params: Any


@dataclass
class InfotextFields:
    fields: dict  # key -> value, written after the standard keys
    params: Any


@dataclass
class JobEnd:
    params: Any
    result: Any


@dataclass(frozen=True)
class Hook:
    point: HookPoint
    fn: Callable
    owner: str
    order: int = 0


@dataclass
class HookRegistry:
    """Registered hooks; ``for_job`` gives a run-time view that reports and disables failing hooks."""

    hooks: list[Hook] = field(default_factory=list)

    def register(self, point: HookPoint, fn: Callable, owner: str, order: int = 0) -> Hook:
        hook = Hook(HookPoint(point), fn, owner, order)
        self.hooks.append(hook)
        return hook

    def unregister_owner(self, owner: str) -> None:
        self.hooks = [h for h in self.hooks if h.owner != owner]

    def merged(self, other: "HookRegistry | None") -> "HookRegistry":
        return HookRegistry(self.hooks + (other.hooks if other else []))

    def for_job(self, warnings: list[str]) -> "JobHooks":
        return JobHooks(sorted(self.hooks, key=lambda h: h.order), warnings)


class JobHooks:
    """Hooks as one job runs them."""

    def __init__(self, hooks: list[Hook], warnings: list[str]):
        self._hooks = hooks
        self._failed: set[int] = set()
        self.warnings = warnings

    def _active(self, point: HookPoint) -> list[Hook]:
        return [h for h in self._hooks if h.point is point and id(h) not in self._failed]

    def has(self, point: HookPoint) -> bool:
        return bool(self._active(point))

    def _report(self, hook: Hook, error: Exception) -> None:
        self._failed.add(id(hook))
        message = f"extension '{hook.owner}': {hook.point.value} hook failed ({type(error).__name__}: {error}); skipped"
        log.exception(message)
        self.warnings.append(message)

    def run(self, point: HookPoint, payload) -> None:
        for hook in self._active(point):
            try:
                hook.fn(payload)
            except Exception as e:  # noqa: BLE001 - an extension's failure must not end the job
                self._report(hook, e)

    def call_unet(self, call: UnetCall, inner: Callable[[UnetCall], Any]):
        """Run the UNET_CALL wrappers around ``inner`` (first registered is outermost).

        An error raised by a wrapper itself disables that wrapper and the call goes on without it; an error from
        further down (the UNet) passes through the wrappers unchanged.
        """
        wrappers = self._active(HookPoint.UNET_CALL)

        def make(i: int) -> Callable[[UnetCall], Any]:
            if i == len(wrappers):
                return inner
            hook, nxt = wrappers[i], make(i + 1)

            def guarded_next(c: UnetCall):
                try:
                    return nxt(c)
                except _Downstream:
                    raise
                except Exception as e:  # noqa: BLE001
                    raise _Downstream(e) from e

            def run(c: UnetCall):
                try:
                    return hook.fn(c, guarded_next)
                except _Downstream:
                    raise
                except Exception as e:  # noqa: BLE001 - the wrapper's own failure
                    self._report(hook, e)
                    return guarded_next(c)

            return run

        try:
            return make(0)(call)
        except _Downstream as d:
            raise d.error from None


class _Downstream(Exception):
    """Carries an error from below a wrapper through the wrappers above it."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error
