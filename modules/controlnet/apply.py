"""Applying ControlNet units to UNet calls through the ``UNET_CALL`` hook (sd-webui-controlnet semantics).

Per UNet call and unit: the unit acts when ``guidance_start ≤ step / total_steps ≤ guidance_end``; its ControlNet
runs on the call's latents, timesteps and context with the unit's condition image; the down/mid residuals are
scaled and summed over the units into ``call.down_residuals`` / ``call.mid_residual``.

Control modes: "Balanced" scales every residual by the weight; "My prompt is more important" uses soft per-block
weights ``weight · 0.825^(n−1−i)`` (the middle block full, the first down block about a tenth for SD1);
"ControlNet is more important" uses the soft weights too and adds the residuals to the conditional rows only, so
classifier-free guidance pushes the image towards the control.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .units import ControlUnit

SOFT_INJECTION_BASE = 0.825


def block_scales(count: int, weight: float, soft: bool) -> list[float]:
    """Scales for ``count`` residuals (down blocks then the middle block)."""
    if not soft:
        return [weight] * count
    return [weight * SOFT_INJECTION_BASE ** float(count - 1 - i) for i in range(count)]


def in_guidance(step: int, total_steps: int, start: float, end: float) -> bool:
    """Whether a unit acts at ``step`` (0-based) of ``total_steps``: ``start ≤ step/total ≤ end``."""
    fraction = step / max(total_steps, 1)
    return start <= fraction <= end


@dataclass
class ActiveUnit:
    """A unit ready to run: its loaded ``ControlNetModel`` and condition image (RGB uint8 at the output size)."""

    index: int
    unit: ControlUnit
    model: object
    hint: np.ndarray
    _hints: dict = field(default_factory=dict)

    @property
    def soft(self) -> bool:
        return self.unit.control_mode != "Balanced"

    @property
    def cond_only(self) -> bool:
        return self.unit.control_mode == "ControlNet is more important"

    def hint_tensor(self, latent_h: int, latent_w: int, device, dtype):
        """The condition image as [1, C, H, W] in [0, 1] at the size the model's hint embedding needs."""
        import torch

        key = (latent_h, latent_w, str(device), dtype)
        if key not in self._hints:
            factor = 2 ** (len(self.model.config.conditioning_embedding_out_channels) - 1)
            t = torch.from_numpy(np.array(self.hint)).permute(2, 0, 1)[None].float() / 255.0
            size = (latent_h * factor, latent_w * factor)
            if tuple(t.shape[-2:]) != size:
                t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
            channels = self.model.config.conditioning_channels
            t = t[:, :channels] if t.shape[1] >= channels else t.mean(1, keepdim=True).expand(-1, channels, -1, -1)
            self._hints[key] = t.to(device, dtype)
        return self._hints[key]

    def residuals(self, call):
        """(down residuals, mid residual) of this unit for one UNet call, scaled by its weight and mode."""
        import torch

        unet = call.model.unet
        if next(self.model.parameters()).device != unet.device or self.model.dtype != unet.dtype:
            self.model = self.model.to(unet.device, unet.dtype)  # the job switched to a model elsewhere
        model, dev, dtype = self.model, unet.device, unet.dtype
        x = call.x[:, :model.config.in_channels].to(dev, dtype)
        hint = self.hint_tensor(x.shape[-2], x.shape[-1], dev, dtype).expand(x.shape[0], -1, -1, -1)
        added = {k: v.to(dev, dtype) for k, v in call.added_cond.items()} if call.added_cond else None
        down, mid = model(x, call.timestep.to(dev), encoder_hidden_states=call.context.to(dev, dtype),
                          controlnet_cond=hint, added_cond_kwargs=added, return_dict=False)
        scales = block_scales(len(down) + 1, self.unit.weight, self.soft)
        down = [d * s for d, s in zip(down, scales)]
        mid = mid * scales[-1]
        if self.cond_only:
            keep = torch.tensor([0.0 if u else 1.0 for u in call.is_uncond], device=dev, dtype=dtype).view(-1, 1, 1, 1)
            down = [d * keep for d in down]
            mid = mid * keep
        return down, mid


def in_pass(hr_option: str, hires_pass: bool) -> bool:
    """Whether a unit with ``hr_option`` ("Both", "Low res only", "High res only") acts in this pass."""
    return hr_option == "Both" or (hr_option == "High res only") == hires_pass


def unet_call_wrapper(units: list[ActiveUnit], first_pass_params=None):
    """A ``UNET_CALL`` hook adding the residuals of the units that act at the call's step (none: unchanged).

    A call whose ``params`` are not ``first_pass_params`` belongs to a hires fix's second pass (which runs the
    job's UNet hooks with its own parameters); each unit's ``hr_option`` says whether it acts there."""

    def wrapper(call, next_):
        down, mid = call.down_residuals, call.mid_residual
        hires_pass = first_pass_params is not None and call.params is not first_pass_params
        for unit in units:
            if unit.unit.weight == 0 or not in_pass(unit.unit.hr_option, hires_pass) or not in_guidance(
                    call.step, call.total_steps, unit.unit.guidance_start, unit.unit.guidance_end):
                continue
            d, m = unit.residuals(call)
            down = d if down is None else [a + b.to(a) for a, b in zip(down, d)]
            mid = m if mid is None else mid + m.to(mid)
        call.down_residuals, call.mid_residual = down, mid
        return next_(call)

    return wrapper
