"""The denoiser the samplers call: classifier-free guidance over the UNet, with the hook points around it.

All sub-prompts (AND) of all images and the uncond rows go through the UNet in one batch; the uncond rows are
left out when CFG is 1 and every image has a single sub-prompt of weight 1, and on the steps :class:`UncondSkip`
(A1111's NGMS) picks. Result per image: ``uncond + Σ w_j · cfg · (cond_j − uncond)``.

instruct-pix2pix with an ``image_cfg_scale`` other than 1 adds an uncond row without the image (A1111's edit-model
guidance): ``uncond + Σ w_j · cfg · (cond_j − uncond) + (image_cfg − 1) · (uncond − uncond_without_image)``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import torch

from ..hooks import AfterCfg, AfterUnet, HookPoint, JobHooks, MaskBlend, UnetCall
from ..models.spec import Family
from ..sampling import SamplingControl
from ..sampling.discrete import DiscreteSchedule, c_in, denoised_from_output
from ..text_encoding import Conditioning
from .conditioning import ImageConds, at_step
from .interrupt import stop_checks

REFINER_AESTHETIC = (6.0, 2.5)  # positive, negative aesthetic score ids of the SDXL refiner


class ModelSwitch(Protocol):
    """Told before every model call; may hand the denoiser another model (:meth:`CFGDenoiser.use_model`)."""

    def before_call(self, denoiser: CFGDenoiser) -> None: ...


@dataclass
class InpaintBlend:
    """img2img with a mask: outside the mask (``keep`` = 1) the estimate is pinned to the original latents."""

    init_latent: torch.Tensor  # [B, 4, h, w] scaled latents
    keep: torch.Tensor  # [B or 1, 1, h, w], 1 = keep original
    soft_keep: torch.Tensor | None = None  # ``keep`` before rounding (None: the same)

    def mix(self, latent: torch.Tensor, sigma, step: int, total_steps: int, hooks: JobHooks, params,
            final: bool = False) -> torch.Tensor:
        """The original latents where ``keep`` is 1, ``latent`` where it is 0; MASK_BLEND hooks may replace the mix."""
        keep = self.keep.to(latent)
        soft = keep if self.soft_keep is None else self.soft_keep.to(latent)
        event = MaskBlend(self.init_latent.to(latent), latent, keep, soft, sigma, step, total_steps, final, params)
        hooks.run(HookPoint.MASK_BLEND, event)
        if event.blended is not None:
            return event.blended
        return event.init_latent * keep + latent * (1 - keep)


@dataclass(frozen=True)
class UncondSkip:
    """A1111's "Negative Guidance minimum sigma" (NGMS): once sigma is below ``min_sigma``, the uncond rows are left
    out on every other step (on every step with ``every_step``); such a step uses the first sub-prompt's estimate
    as the uncond, so a single prompt gets its plain cond estimate. ``min_sigma`` 0 = off."""

    min_sigma: float = 0.0
    every_step: bool = False

    def skips(self, sigma: float, step: int) -> bool:
        return sigma < self.min_sigma and (self.every_step or step % 2 == 1)


class CFGDenoiser:
    def __init__(self, model, schedule: DiscreteSchedule, conds: list[ImageConds], cfg_scale: float, hooks: JobHooks,
                 params, total_steps: int, empty: Conditioning, image_cond: torch.Tensor | None = None,
                 blend: InpaintBlend | None = None, size: tuple[int, int] = (512, 512), offloader=None,
                 uncond_skip: UncondSkip = UncondSkip(), control: SamplingControl | None = None,
                 switch: ModelSwitch | None = None):
        self.schedule = schedule
        self.cfg = float(cfg_scale)
        self.hooks = hooks
        self.params = params
        self.total_steps = total_steps
        self.blend = blend
        self.size = size  # (height, width) for SDXL time ids
        self.offloader = offloader
        self.uncond_skip = uncond_skip
        self.control = control  # the job's stop flags, checked inside the UNet call too (modules.processing.interrupt)
        self.switch = switch
        self.step = 0
        self.use_model(model, conds, empty, image_cond)

    def use_model(self, model, conds: list[ImageConds], empty: Conditioning, image_cond: torch.Tensor | None) -> None:
        """Run the next calls with ``model`` and its own conditioning (a refiner taking over mid-run); the sampler's
        state (the latents, a multistep sampler's history) carries on."""
        self.model, self.conds, self.empty, self.image_cond = model, conds, empty, image_cond
        image_cfg = getattr(self.params, "image_cfg_scale", None)
        edit = model.spec.variant == "pix2pix" and image_cond is not None and image_cfg not in (None, 1.0)
        self.image_cfg = float(image_cfg) if edit else None
        self.use_uncond = edit or not (self.cfg == 1.0 and all(c.plain for c in conds))
        self.prediction = "v_prediction" if model.spec.prediction == "v" else "epsilon"

    def on_step(self, info) -> None:
        """Sampler callback: the next model call belongs to step ``info.step + 1``."""
        self.step = info.step + 1

    def _rows(self, with_uncond: bool):
        # (image, weight or None for uncond, cond, whether the row gets the image conditioning)
        rows: list[tuple[int, float | None, Conditioning, bool]] = []
        for i, c in enumerate(self.conds):
            for weight, sched in c.subprompts:
                rows.append((i, weight, at_step(sched, self.step), True))
            if with_uncond:
                rows.append((i, None, at_step(c.uncond, self.step), True))
                if self.image_cfg is not None:
                    rows.append((i, None, at_step(c.uncond, self.step), False))
        return rows

    def _context(self, conds: list[Conditioning]) -> torch.Tensor:
        """Stack contexts, padding shorter ones with the empty prompt's chunk to the same chunk count."""
        longest = max(c.context.shape[1] for c in conds)
        out = []
        for c in conds:
            ctx = c.context
            missing = (longest - ctx.shape[1]) // self.empty.context.shape[1]
            if missing:
                ctx = torch.cat([ctx] + [self.empty.context] * missing, dim=1)
            out.append(ctx)
        return torch.cat(out, dim=0)

    def _added(self, rows, conds: list[Conditioning]) -> dict | None:
        spec = self.model.spec
        if spec.unet.adm_in_channels is None:
            return None
        h, w = self.size
        ids = []
        for _, weight, _, _ in rows:
            if spec.family is Family.SDXL_REFINER:
                ids.append([h, w, 0, 0, REFINER_AESTHETIC[0] if weight is not None else REFINER_AESTHETIC[1]])
            else:
                ids.append([h, w, 0, 0, h, w])
        pooled = torch.cat([c.pooled for c in conds], dim=0)
        return {"text_embeds": pooled, "time_ids": torch.tensor(ids, dtype=torch.float32)}

    def _run_unet(self, call: UnetCall) -> torch.Tensor:
        unet = self.model.unet
        dev, dtype = unet.device, unet.dtype
        if self.offloader is not None and self.offloader.plan.offload == "lowvram":
            dev = self.offloader.plan.device  # the weights wait on the CPU; every input goes where the blocks run
        added = {k: v.to(dev, dtype) for k, v in call.added_cond.items()} if call.added_cond else None
        kwargs = {}
        if call.down_residuals is not None:
            kwargs["down_block_additional_residuals"] = [r.to(dev, dtype) for r in call.down_residuals]
        if call.mid_residual is not None:
            kwargs["mid_block_additional_residual"] = call.mid_residual.to(dev, dtype)
        use = self.offloader.use(unet) if self.offloader else contextlib.nullcontext()
        with use, stop_checks(unet, self.control):
            out = unet(call.x.to(dev, dtype), call.timestep.to(dev), encoder_hidden_states=call.context.to(dev, dtype),
                       added_cond_kwargs=added, **kwargs).sample
        return out.float()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.switch is not None:
            self.switch.before_call(self)
        skipped = self.use_uncond and self.uncond_skip.skips(float(sigma.max()), self.step)
        rows = self._rows(self.use_uncond and not skipped)
        conds = [r[2] for r in rows]
        index = torch.tensor([r[0] for r in rows], device=x.device)
        x_rows = x[index]
        sigma_rows = sigma[index]
        x_in = x_rows * c_in(sigma_rows, x_rows)
        if self.image_cond is not None:
            image_cond = self.image_cond[index].to(x_in)
            if self.image_cfg is not None:
                image_cond = image_cond * torch.tensor([float(r[3]) for r in rows]).to(x_in).view(-1, 1, 1, 1)
            x_in = torch.cat([x_in, image_cond], dim=1)
        call = UnetCall(
            x=x_in, sigma=sigma_rows, timestep=self.schedule.sigma_to_t(sigma_rows).float(),
            context=self._context(conds), added_cond=self._added(rows, conds), step=self.step,
            total_steps=self.total_steps, is_uncond=[r[1] is None for r in rows], image_index=[r[0] for r in rows],
            params=self.params, model=self.model,
        )
        self.hooks.run(HookPoint.BEFORE_UNET, call)
        out = self.hooks.call_unet(call, self._run_unet)
        after = AfterUnet(denoised_from_output(x_rows, sigma_rows, out, self.prediction), call)
        self.hooks.run(HookPoint.AFTER_UNET, after)
        denoised_rows = after.denoised

        result = torch.empty_like(x)
        for i in range(x.shape[0]):
            mine = [(r[1], r[3], denoised_rows[j]) for j, r in enumerate(rows) if r[0] == i]
            uncond = next((d for w, image, d in mine if w is None and image), None)
            bare = next((d for w, image, d in mine if w is None and not image), None)  # uncond without the image
            positives = [(w, d) for w, _, d in mine if w is not None]
            if skipped:
                uncond = positives[0][1]
            if uncond is None:
                result[i] = sum(w * d for w, d in positives)
            else:
                result[i] = uncond + sum(w * self.cfg * (d - uncond) for w, d in positives)
                if bare is not None:
                    result[i] += (self.image_cfg - 1) * (uncond - bare)
        cfg = AfterCfg(result, x, sigma, self.step, self.total_steps, self.params)
        self.hooks.run(HookPoint.AFTER_CFG, cfg)
        denoised = cfg.denoised
        if self.blend is not None:
            denoised = self.blend.mix(denoised, sigma, self.step, self.total_steps, self.hooks, self.params)
        return denoised

