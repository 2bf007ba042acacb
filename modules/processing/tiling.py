"""Seamless textures (A1111's "Tiling"): circular padding in the convolutions of the UNet and the VAE for one job.

A convolution with ``padding_mode="circular"`` pads each side with the opposite edge, so the image wraps around and
its left edge continues its right one (and top continues bottom). :class:`CircularPadding` switches the models' 2-D
convolutions over while a job runs and puts every one back as it found it when the job ends, however it ends.
"""
from __future__ import annotations

from torch import nn


class CircularPadding:
    """A context for one job: :meth:`cover` a model's UNet and VAE (also one loaded mid-job, e.g. a refiner);
    leaving the context restores each convolution's own padding mode. Disabled, it changes nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._changed: list[tuple[nn.Conv2d, str]] = []

    def cover(self, model) -> None:
        """Circular padding for the convolutions of ``model``'s UNet and VAE (an SDModel)."""
        if not self.enabled:
            return
        for component in (model.unet, model.vae):
            for module in component.modules():
                if (isinstance(module, nn.Conv2d) and module.padding_mode != "circular"
                        and module.padding not in ((0, 0), "valid")):
                    self._changed.append((module, module.padding_mode))
                    module.padding_mode = "circular"

    def __enter__(self) -> CircularPadding:
        return self

    def __exit__(self, *exc) -> None:
        for module, mode in reversed(self._changed):
            module.padding_mode = mode
        self._changed.clear()
