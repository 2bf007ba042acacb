"""The check that a model's output is numbers: NaN or inf latents or pixels end the job with a clear error.

A checkpoint with broken weights, or half precision that overflows, gives NaN/inf; saving it would give black
images. As A1111 does, the job fails instead, and the message names the checkpoint (and the VAE) and what
precision was tried (``--no-half`` is suggested for a UNet in half precision; a VAE is retried in fp32 anyway).
"""
from __future__ import annotations

import torch


class NonFiniteOutput(ValueError):
    """A model produced NaN/inf. ``str()`` is ``"sd_model_checkpoint: …"``: the API answers 400 about that field."""

    def __init__(self, checkpoint: str, message: str):
        super().__init__(f"sd_model_checkpoint: {message}")
        self.checkpoint, self.message = checkpoint, message


def check_finite(values: torch.Tensor, stage: str, checkpoint: str, vae: str | None, half: bool) -> None:
    """Raise :class:`NonFiniteOutput` when ``values`` hold NaN/inf. ``stage``: "sampling" (the sampler's latents:
    UNet or text encoder at fault) or "decoding" (the VAE's pixels); ``vae`` names a separate VAE file (None: the
    checkpoint's own); ``half``: whether the model at fault ran in half precision (a half-precision VAE has been
    retried in fp32 already: :meth:`modules.models.manager.ModelManager.decode`)."""
    if bool(torch.isfinite(values).all()):
        return
    if stage == "sampling":
        message = (f"{checkpoint} produced NaN/inf values while sampling in half precision: start with --no-half, "
                   "or choose another checkpoint (its weights may be broken)") if half else \
            f"{checkpoint} produced NaN/inf values while sampling: its weights are broken; choose another checkpoint"
    else:
        which = f"the VAE {vae} (with {checkpoint})" if vae else f"the VAE of {checkpoint}"
        how = " in half precision and again in fp32 (as --no-half-vae would)" if half else ""
        message = f"{which} produced NaN/inf values when decoding{how}: choose another VAE or checkpoint"
    raise NonFiniteOutput(checkpoint, message)
