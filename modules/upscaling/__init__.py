"""Image upscalers: the built-in resamplers (None, Lanczos, Nearest) and model upscalers loaded through spandrel
(ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, OmniSR, …) from A1111's folders, run in overlapping tiles.

``catalog`` finds the files, ``loading`` turns one into a model (safetensors always, pickles only with
--allow-pickle), ``tiling`` runs a model over an image in tiles with blended seams, ``upscale`` is what the rest of
the app calls: :func:`modules.upscaling.upscale.upscale_image`.
"""
