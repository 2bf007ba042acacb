"""The active checkpoint and VAE: switching, a small RAM cache, and safe failure.

A switch loads the new checkpoint completely before the old one is released, so a corrupt, truncated or unknown
file raises :class:`ModelFileError` and the previous model stays loaded and working. Up to ``cache_size``
checkpoints stay in RAM (the active one included; default 1, as A1111's "checkpoints to cache").
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..devices import DevicePlan, Offloader, free_memory
from .catalog import CheckpointCatalog, CheckpointInfo, VaeCatalog
from .loader import LoadOptions, RecycledModelLost, SDModel, load_checkpoint, load_vae_file
from .safetensors_file import ModelFileError
from .spec import Family

log = logging.getLogger(__name__)


class ModelManager:
    def __init__(self, catalog: CheckpointCatalog, vaes: VaeCatalog, plan: DevicePlan, allow_pickle: bool = False,
                 cache_size: int = 1, prediction_overrides: dict[str, str] | None = None):
        self.catalog = catalog
        self.vaes = vaes
        self.plan = plan
        self.offloader = Offloader(plan)
        self.allow_pickle = allow_pickle
        self.cache_size = max(1, cache_size)
        self.prediction_overrides = dict(prediction_overrides or {})
        self.current: SDModel | None = None
        self.current_info: CheckpointInfo | None = None
        self.vae_choice = VaeCatalog.AUTOMATIC
        self.vae_source: Path | None = None  # None: the checkpoint's own VAE
        self._vae_applied: tuple[int, Path | None] | None = None
        self._cache: OrderedDict[Path, tuple[CheckpointInfo, SDModel]] = OrderedDict()
        self._baked_vae: dict[int, object] = {}
        self._lock = threading.RLock()
        self.on_loaded: list[Callable[[SDModel], None]] = []
        self.on_released: list[Callable[[SDModel], None]] = []  # a model leaves memory (not kept in the cache)
        self._nan_warned = False
        self._previewer: tuple | None = None
        self.vae_tile_threshold = 1024 * 1024  # the job's setting: decode/encode in tiles above this many pixels

    # --- checkpoints -------------------------------------------------------------------------------------------

    def resolve(self, query: str | CheckpointInfo) -> CheckpointInfo:
        if isinstance(query, CheckpointInfo):
            return query
        info = self.catalog.find(query)
        if info is None:
            names = ", ".join(i.filename for i in self.catalog.items()) or "none found"
            raise ModelFileError(f"checkpoint not found: {query!r} (available: {names})")
        return info

    def _options(self, info: CheckpointInfo) -> LoadOptions:
        return LoadOptions(
            allow_pickle=self.allow_pickle,
            prediction=self.prediction_overrides.get(info.model_name),
            dtype=self.plan.dtype,
            vae_dtype=self.plan.vae_dtype,
            channels_last=self.plan.channels_last,
        )

    def load(self, query: str | CheckpointInfo) -> SDModel:
        """Make a checkpoint active. On failure the previous model stays active and the error names the file."""
        with self._lock:
            info = self.resolve(query)
            if self.current_info is not None and self.current_info.path == info.path:
                return self.current
            cached = self._cache.pop(info.path, None)
            model, recycled = (cached[1], False) if cached else self._load_file(info)
            old = (self.current_info, self.current) if self.current is not None else None
            self._baked_vae.setdefault(id(model), model.vae)
            self.current, self.current_info = model, info
            if old is not None:
                self._retire(*old)
                old = None  # the last reference: release before returning memory to the system
                if not recycled:  # a recycled model's memory lives on in the new one: nothing to return
                    free_memory()
            for component in (model.unet, model.vae, *model.text_encoders):
                self.offloader.place(component, _is_sdxl(model))
            self._pack(model.unet, model.vae)
            try:
                self._apply_vae(self.vae_choice)
            except ModelFileError as e:
                log.warning("%s; using the checkpoint's own VAE", e)
                self.vae_choice, self.vae_source = VaeCatalog.AUTOMATIC, None
            log.info("loaded %s (%s)", info.filename, model.spec.summary)
            for callback in list(self.on_loaded):
                callback(model)
            return model

    def _load_file(self, info: CheckpointInfo) -> tuple[SDModel, bool]:
        """Load from disk; without a cache, the outgoing model's memory takes the new weights when they fit.

        Returns the model and whether the outgoing model's memory was reused. A file that fails before anything
        is written leaves the current model as it was; a failure after that (an I/O error while copying)
        reloads the current checkpoint from disk before raising.
        """
        old = self.current
        if self.cache_size > 1 or old is None or self.plan.offload != "none":
            return load_checkpoint(info.path, self._options(info)), False
        try:
            baked = replace(old, vae=self._baked_vae[id(old)])
            model = load_checkpoint(info.path, self._options(info), recycle=baked)
            return model, model.unet.conv_in.weight.data_ptr() == baked.unet.conv_in.weight.data_ptr()
        except RecycledModelLost:
            previous = self.current_info
            self.current = self.current_info = None
            self._release(old)
            old = None
            free_memory()
            self.load(previous)
            raise

    def _pack(self, *components) -> None:
        """Keep the convolution weights of ``components`` in oneDNN's blocked layout where the plan says so."""
        if self.plan.packed_convs:
            from .packed_conv import pack_convolutions

            for component in components:
                pack_convolutions(component)

    def _retire(self, info: CheckpointInfo, model: SDModel) -> None:
        if self.cache_size > 1:
            for component in (model.unet, model.vae, *model.text_encoders):
                component.to("cpu")
            self._cache[info.path] = (info, model)
            while len(self._cache) > self.cache_size - 1:
                _, (_, dropped) = self._cache.popitem(last=False)
                self._release(dropped)
        else:
            self._release(model)

    def _release(self, model: SDModel) -> None:
        """Forget a model that leaves memory, and tell ``on_released`` listeners to drop what they keep for it."""
        self._baked_vae.pop(id(model), None)
        for callback in list(self.on_released):
            callback(model)

    def unload(self) -> None:
        """Release the active checkpoint (and the cache)."""
        with self._lock:
            for model in [self.current, *(m for _, m in self._cache.values())]:
                if model is not None:
                    self._release(model)
            self.current = self.current_info = None
            self._cache.clear()
            free_memory()

    def reload(self) -> SDModel:
        """Load the active checkpoint again from disk (e.g. after the file changed)."""
        with self._lock:
            info = self.current_info
            if info is None:
                raise ModelFileError("no checkpoint is loaded")
            model = load_checkpoint(info.path, self._options(info))
            self._release(self.current)
            self.current = self.current_info = None
            free_memory()
            self._cache.pop(info.path, None)
            self._baked_vae[id(model)] = model.vae
            self.current, self.current_info = model, info
            for component in (model.unet, model.vae, *model.text_encoders):
                self.offloader.place(component, _is_sdxl(model))
            self._pack(model.unet, model.vae)
            self._apply_vae(self.vae_choice)
            return model

    # --- VAE ---------------------------------------------------------------------------------------------------

    def set_vae(self, choice: str) -> None:
        """Select "Automatic", "None" or a VAE file by name; the UNet is not reloaded."""
        with self._lock:
            if choice not in (VaeCatalog.AUTOMATIC, VaeCatalog.NONE) and self.vaes.find(choice) is None:
                raise ModelFileError(f"VAE not found: {choice!r} (available: {', '.join(self.vaes.choices())})")
            if self.current is not None:
                self._apply_vae(choice)
            self.vae_choice = choice

    def _apply_vae(self, choice: str) -> None:
        model, info = self.current, self.current_info
        if choice == VaeCatalog.NONE:
            source = None
        elif choice == VaeCatalog.AUTOMATIC:
            source = self.vaes.automatic_for(info.path)
        else:
            source = self.vaes.find(choice).path
        if self._vae_applied == (id(model), source):
            return
        if source is None:
            model.vae = self._baked_vae[id(model)]
        else:
            vae = load_vae_file(source, model.spec.vae, model.spec.vae_scale,
                                LoadOptions(allow_pickle=self.allow_pickle, dtype=self.plan.vae_dtype,
                                            channels_last=self.plan.channels_last))
            self.offloader.place(vae, _is_sdxl(model))
            self._pack(vae)
            model.vae = vae
        self.vae_source = source
        self._vae_applied = (id(model), source)

    def latent_previewer(self):
        """A cheap linear latent→RGB previewer fitted to the active VAE (built once per VAE)."""
        from ..processing.latent_preview import LatentPreviewer

        vae = self.current.vae if self.current else None
        if vae is None:
            return None
        if self._previewer is None or self._previewer[0] is not vae:
            with self.offloader.use(vae):
                self._previewer = (vae, LatentPreviewer(vae))
        return self._previewer[1]

    # --- decoding ---------------------------------------------------------------------------------------------

    def decode(self, latents):
        """VAE decode of scaled latents ([-1, 1] images), in tiles above ``vae_tile_threshold`` pixels; retries in
        fp32 if a half-precision decode gives NaN/inf."""
        import torch

        model = self.current
        vae = model.vae
        with self.offloader.use(vae):
            z = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor
            images = self._decode(vae, z)
            if vae.dtype != torch.float32 and not torch.isfinite(images).all():
                if not self._nan_warned:
                    log.warning("VAE produced NaN/inf in %s; decoding again in fp32 (start with --no-half-vae to "
                                "avoid this)", vae.dtype)
                    self._nan_warned = True
                vae.to(torch.float32)
                images = self._decode(vae, z.float())
        return images.float()

    def _decode(self, vae, z):
        from ..processing.vae_tiling import tiled_decode, vae_factor, wants_tiling

        factor = vae_factor(vae)
        if wants_tiling(z.shape[-1] * factor, z.shape[-2] * factor, self.vae_tile_threshold):
            return tiled_decode(vae, z)
        return vae.decode(z).sample

    def encode(self, pixels):
        """VAE encode of pixels in [-1, 1] [B, 3, H, W] → scaled latents (the distribution's mean: deterministic),
        float32 on the CPU; in tiles above ``vae_tile_threshold`` pixels."""
        from ..processing.vae_tiling import tiled_encode, wants_tiling

        vae = self.current.vae
        with self.offloader.use(vae):
            x = pixels.to(vae.device, vae.dtype)
            if wants_tiling(x.shape[-1], x.shape[-2], self.vae_tile_threshold):
                latent = tiled_encode(vae, x)
            else:
                latent = vae.encode(x).latent_dist.mean
        return (latent * vae.config.scaling_factor).float().cpu()


def _is_sdxl(model: SDModel) -> bool:
    """Whether ``--medvram-sdxl`` offloads ``model``'s components."""
    return model.family in (Family.SDXL, Family.SDXL_REFINER)
