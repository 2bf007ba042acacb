"""Cheap live previews during sampling: a per-VAE linear map from latent channels to RGB.

Instead of a hand-written table per model family, the map is fitted once per VAE: a dozen small flat-coloured
and gradient pictures go through the VAE (encode, then decode), and least squares pairs every latent cell
with the mean colour of the 8x8 block the VAE itself decodes it to. Fitting against the decoder rather than the
input picture makes the preview show what the final decode will show (colour casts included), and works for
any VAE, trained or not. A preview is then one small matrix product per step.

That approximation has one colour per latent cell, so at small sizes (8×8 cells for a 64×64 image) it is a mosaic:
there the live preview is a real VAE decode of the sampler's estimate instead (:func:`full_decode`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image

from modules.processing.image_ops import tensor_to_pils

if TYPE_CHECKING:
    import torch

AUTO_FULL_MAX_CELLS = 16 * 16  # "Auto" decodes with the VAE up to this many latent cells (128×128 for SD)

FIT_COLOURS = (  # RGB in 0..1 for the flat pictures
    (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0),
    (1.0, 1.0, 0.0), (0.0, 1.0, 1.0), (1.0, 0.0, 1.0),
)


def fitting_images(size: int = 32) -> torch.Tensor:
    """The fitting set: the flat colours of :data:`FIT_COLOURS` and four gradients, [12, 3, size, size] in
    [-1, 1]."""
    import torch

    ramp = torch.linspace(0.0, 1.0, size)
    across = ramp.view(1, size).expand(size, size)  # left -> right
    down = ramp.view(size, 1).expand(size, size)  # top -> bottom
    flats = [torch.tensor(c).view(3, 1, 1).expand(3, size, size) for c in FIT_COLOURS]
    gradients = [
        torch.stack([across, down, 1 - across]),
        torch.stack([1 - down, across, down]),
        torch.stack([(across + down) / 2, 1 - (across + down) / 2, across * down]),
        torch.stack([across * (1 - down), 0.5 * torch.ones_like(across), 1 - across * down]),
    ]
    return torch.stack(flats + gradients) * 2 - 1


class LatentPreviewer:
    """Linear latent -> RGB approximation of one VAE (diffusers AutoencoderKL-like: ``encode(x).latent_dist``,
    ``decode(z).sample``, ``config.scaling_factor``). Fitted on construction; build one per loaded VAE."""

    def __init__(self, vae, size: int = 32) -> None:
        import torch

        scaling = float(vae.config.scaling_factor)
        parameter = next(vae.parameters())
        pixels = fitting_images(size).to(device=parameter.device, dtype=parameter.dtype)
        with torch.inference_mode():
            latents = vae.encode(pixels).latent_dist.mean * scaling
            decoded = vae.decode(latents / scaling).sample
        latents, decoded = latents.double().cpu(), decoded.double().cpu()
        factor = size // latents.shape[-1]
        block_colours = torch.nn.functional.avg_pool2d(decoded, factor)  # [N, 3, h, w], one per latent cell
        features = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        features = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
        targets = block_colours.permute(0, 2, 3, 1).reshape(-1, 3)
        solution = torch.linalg.lstsq(features, targets).solution  # [C + 1, 3]
        self.weights = solution[:-1].float()  # [C, 3]
        self.bias = solution[-1].float()  # [3]
        self.factor = factor

    def to_rgb(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, C, h, w] -> approximate decoded pixels [B, 3, h, w] in [-1, 1] (float32, same
        device as the latents)."""
        import torch

        x = latents.detach().float()
        rgb = torch.einsum("bchw,ck->bkhw", x, self.weights.to(x.device)) + self.bias.to(x.device).view(1, 3, 1, 1)
        return rgb.clamp(-1, 1)

    def preview(self, latents: torch.Tensor) -> list[Image.Image]:
        """Preview images of scaled latents [B, C, h, w], enlarged by the VAE's factor (8) with nearest
        neighbour so they have the size of the final images."""
        images = tensor_to_pils(self.to_rgb(latents))
        return [im.resize((im.width * self.factor, im.height * self.factor), Image.Resampling.NEAREST)
                for im in images]


def full_decode(mode: str, latents: torch.Tensor, offloading: bool) -> bool:
    """Whether the live preview of scaled latents [B, C, h, w] is a VAE decode, for the setting
    ``show_progress_type`` = ``mode``: always for "Full", never for "Approx cheap"; otherwise ("Auto", and A1111's
    "Approx NN" and "TAESD", whose networks are not shipped) up to :data:`AUTO_FULL_MAX_CELLS` and not while the
    model is offloaded (each decode would swap the VAE and the UNet on the device)."""
    if mode in ("Full", "Approx cheap"):
        return mode == "Full"
    return not offloading and latents.shape[-2] * latents.shape[-1] <= AUTO_FULL_MAX_CELLS
