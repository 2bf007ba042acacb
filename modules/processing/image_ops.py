"""Pixel-level helpers of img2img and inpainting: resize modes, masks, only-masked crops, fill, tensors.

The semantics are A1111's (resize modes 0-3, mask blur, "fill" masked content, only-masked crop regions,
latent upscale modes); the code is this project's. PIL + numpy throughout; torch is imported only inside the
tensor helpers so that the module stays cheap to import.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter, ImageOps

if TYPE_CHECKING:
    import torch

Box = tuple[int, int, int, int]

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")

# name -> (torch.nn.functional.interpolate mode, antialias), as listed by A1111's /sdapi/v1/latent-upscale-modes
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}

# "fill" masked content: (blur sigma in px, how many times the layer is laid on), coarse to fine
_FILL_LAYERS = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2))


def _lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image.copy()
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _mask_at(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    mask = mask.convert("L")
    return mask if mask.size == size else mask.resize(size, Image.Resampling.BILINEAR)


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize ``image`` to exactly ``width`` x ``height`` with A1111's img2img resize mode.

    0 "Just resize": stretch. 1 "Crop and resize": scale to cover, then crop the centre. 2 "Resize and fill":
    scale to fit, centre it, and fill the empty bands by stretching the outermost row/column of the scaled
    picture. 3 "Just resize (latent upscale)": for pixels the same as 0. LANCZOS resampling.
    """
    if mode in (0, 3):
        return _lanczos(image, width, height)
    if mode not in (1, 2):
        raise ValueError(f"unknown resize mode {mode!r}; expected 0-3 ({', '.join(RESIZE_MODES)})")
    target_ratio = width / height
    source_ratio = image.width / image.height
    # scale so the picture spans the full width (wider target when cropping, narrower when filling) or height
    full_width = target_ratio > source_ratio if mode == 1 else target_ratio < source_ratio
    if full_width:
        new_w, new_h = width, max(1, image.height * width // image.width)
    else:
        new_w, new_h = max(1, image.width * height // image.height), height
    scaled = _lanczos(image, new_w, new_h)
    left, top = width // 2 - new_w // 2, height // 2 - new_h // 2
    canvas = Image.new(scaled.mode, (width, height))
    canvas.paste(scaled, (left, top))
    if mode == 2:
        if top > 0:  # bands above and below
            canvas.paste(scaled.crop((0, 0, new_w, 1)).resize((width, top)), (0, 0))
            bottom = height - (top + new_h)
            if bottom > 0:
                canvas.paste(scaled.crop((0, new_h - 1, new_w, new_h)).resize((width, bottom)), (0, top + new_h))
        if left > 0:  # bands left and right
            canvas.paste(scaled.crop((0, 0, 1, new_h)).resize((left, height)), (0, 0))
            right = width - (left + new_w)
            if right > 0:
                canvas.paste(scaled.crop((new_w - 1, 0, new_w, new_h)).resize((right, height)), (left + new_w, 0))
    return canvas


def prepare_mask(mask: Image.Image, blur: int = 0, invert: bool = False) -> Image.Image:
    """The inpainting mask as mode "L" (255 = repaint): alpha or luminance, optionally inverted, then blurred.

    An image with a not fully opaque alpha channel is masked by its alpha (> 128 counts as painted), any other
    by its luminance. ``blur`` is A1111's mask blur: a Gaussian of that many pixels in both directions, which
    softens the edge and widens the mask.
    """
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            mask = alpha.point(lambda v: 255 if v > 128 else 0)
    mask = mask.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


def masked_crop_region(mask: Image.Image, padding: int) -> Box | None:
    """Bounding box (x1, y1, x2, y2; x2/y2 exclusive) of the mask's non-zero pixels grown by ``padding`` and
    clamped to the image, for "Only masked" inpainting; None when nothing is masked."""
    bbox = mask.convert("L").point(lambda v: 255 if v > 0 else 0).getbbox()
    if bbox is None:
        return None
    x1, y1, x2, y2 = bbox
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def _grow_span(lo: int, hi: int, wanted: int, limit: int) -> tuple[int, int]:
    """Widen [lo, hi) to ``wanted`` pixels around its centre, shifted to stay inside [0, limit)."""
    extra = wanted - (hi - lo)
    lo -= extra // 2
    hi += extra - extra // 2
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, min(hi - lo, limit)
    return lo, hi


def expand_to_aspect(box: Box, width: int, height: int, image_w: int, image_h: int) -> Box:
    """Grow ``box`` along its short side so it has the aspect ratio ``width``/``height`` (A1111's
    expand_crop_region): centred on the box, moved back inside the image, clipped if the image is too small."""
    x1, y1, x2, y2 = box
    want = width / height
    if (x2 - x1) / (y2 - y1) > want:
        y1, y2 = _grow_span(y1, y2, int((x2 - x1) / want), image_h)
    else:
        x1, x2 = _grow_span(x1, x2, int((y2 - y1) * want), image_w)
    return x1, y1, x2, y2


def apply_overlay(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Blend ``generated`` over ``original`` through ``mask`` ("L", 255 = generated): where the mask is 0 the
    result is the original's pixel exactly, where it is 255 the generated one; in between a linear mix."""
    base = np.asarray(original.convert("RGB"), dtype=np.uint16)
    new = np.asarray(_lanczos(generated.convert("RGB"), *original.size), dtype=np.uint16)
    m = np.asarray(_mask_at(mask, original.size), dtype=np.uint16)[..., None]
    mixed = (new * m + base * (255 - m) + 127) // 255  # integer maths: m = 0 gives the original bit for bit
    return Image.fromarray(mixed.astype(np.uint8), "RGB")


def paste_back(original: Image.Image, generated_crop: Image.Image, box: Box, mask: Image.Image) -> Image.Image:
    """Put an "Only masked" result back: ``generated_crop`` is resized to ``box`` (LANCZOS), placed there on a
    copy of ``original`` and blended through the full-size ``mask``; unmasked pixels stay the original's."""
    x1, y1, x2, y2 = box
    canvas = original.convert("RGB")
    canvas.paste(_lanczos(generated_crop.convert("RGB"), x2 - x1, y2 - y1), (x1, y1))
    return apply_overlay(original, canvas, mask)


def uncrop_mask(mask: Image.Image, size: tuple[int, int], box: Box | None) -> Image.Image:
    """A mask made for a work area, as a full-size mask ("L", ``size``): resized to ``box`` and placed there on
    black ("Only masked"), or resized to the whole image when ``box`` is None (bilinear)."""
    if box is None:
        return _mask_at(mask, size)
    x1, y1, x2, y2 = box
    canvas = Image.new("L", size, 0)
    canvas.paste(_mask_at(mask, (x2 - x1, y2 - y1)), (x1, y1))
    return canvas


def _fast_fft_length(n: int) -> int:
    """Smallest length >= n whose only prime factors are 2, 3 and 5 (fast for the FFT)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _resize_planes(planes: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32), "F").resize(size, resample))
                     for p in planes])


def _gaussian_blur_planes(planes: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of float32 planes [C, H, W] with zeros outside the image.

    FFT with zero padding (no wrap-around); for wide kernels the planes are box-averaged down first and the
    result scaled back up bilinearly, which keeps every sigma about equally cheap.
    """
    _, h, w = planes.shape
    factor = max(1, min(int(sigma // 4), h // 8, w // 8))
    work = planes
    if factor > 1:
        small = (max(1, round(w / factor)), max(1, round(h / factor)))
        work = _resize_planes(planes, small, Image.Resampling.BOX)
        sigma = sigma * small[0] / w
    ph, pw = work.shape[1:]
    pad = min(int(math.ceil(3 * sigma)), max(ph, pw))
    size = (_fast_fft_length(ph + pad), _fast_fft_length(pw + pad))
    spectrum = np.fft.rfft2(work, s=size)  # zero padding after the image on both axes: no wrap-around
    fy = np.fft.fftfreq(size[0])[:, None]
    fx = np.fft.rfftfreq(size[1])[None, :]
    spectrum *= np.exp(-2 * (math.pi * sigma) ** 2 * (fy ** 2 + fx ** 2)).astype(np.float32)
    blurred = np.fft.irfft2(spectrum, s=size)[:, :ph, :pw].astype(np.float32)
    if factor > 1:
        blurred = _resize_planes(blurred, (w, h), Image.Resampling.BILINEAR)
    return blurred


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111 "fill" masked content: replace the masked area with colours smeared in from around it.

    Normalised Gaussian blurs of the unmasked pixels (weighted by 1 - mask), from very wide to narrow, are
    laid over each other so that each point takes the colour of the nearest unmasked surroundings; partly
    masked pixels keep their share of the original. Deterministic; a fully masked image comes out mid grey.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    keep = 1.0 - np.asarray(_mask_at(mask, image.size), dtype=np.float32)[..., None] / 255.0
    result = np.full_like(rgb, 0.5)
    if keep.sum() > 0:
        result[:] = (rgb * keep).sum(axis=(0, 1)) / keep.sum()
        planes = np.concatenate([rgb * keep, keep, np.ones_like(keep)], axis=2).transpose(2, 0, 1)
        for sigma, repeats in _FILL_LAYERS:
            blurred = _gaussian_blur_planes(planes, sigma).transpose(1, 2, 0)
            weight = np.maximum(blurred[..., 3:4], 1e-8)
            colour = blurred[..., :3] / weight
            coverage = np.clip(weight / blurred[..., 4:5], 0.0, 1.0)  # unmasked share of the kernel in the image
            for _ in range(repeats):
                result = colour * coverage + result * (1.0 - coverage)
        result = rgb * keep + result * (1.0 - keep)
    out = np.clip(np.rint(result * 255.0), 0, 255).astype(np.uint8)
    unmasked = keep[..., 0] >= 1.0
    out[unmasked] = np.asarray(image.convert("RGB"))[unmasked]
    return Image.fromarray(out, "RGB")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> float32 tensor [1, 3, H, W] in [-1, 1] (0 -> -1, 255 -> 1)."""
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pils(images: torch.Tensor) -> list[Image.Image]:
    """Tensor [B, 3, H, W] in [-1, 1] (any device/dtype) -> RGB images; values are clamped and rounded."""
    import torch

    with torch.no_grad():
        scaled = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        arrays = scaled.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in arrays]


def mask_to_latent(mask: Image.Image, latent_h: int, latent_w: int, binary: bool = True) -> torch.Tensor:
    """Mask ("L", 255 = repaint) -> float32 tensor [1, 1, latent_h, latent_w] in 0..1 for blending latents.

    The mask is scaled down (bicubic); with ``binary`` (A1111's behaviour for the latent mask) each value is
    then rounded to 0 or 1.
    """
    import torch

    small = mask.convert("L").resize((latent_w, latent_h), Image.Resampling.BICUBIC)
    values = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)
    if binary:
        values = values.round()
    return values[None, None].contiguous()


def latent_upscale(latents: torch.Tensor, width: int, height: int, mode: str = "Latent") -> torch.Tensor:
    """Resize latents [B, C, h, w] to the latent size of a ``width`` x ``height`` image (// 8) with one of
    :data:`LATENT_UPSCALE_MODES` ("Latent" = bilinear; "antialiased" variants pass antialias=True)."""
    import torch.nn.functional as F

    try:
        interpolation, antialias = LATENT_UPSCALE_MODES[mode]
    except KeyError:
        raise ValueError(f"unknown latent upscale mode {mode!r}; choose from {', '.join(LATENT_UPSCALE_MODES)}")
    size = (height // 8, width // 8)
    if interpolation in ("nearest", "nearest-exact"):
        return F.interpolate(latents, size=size, mode=interpolation)
    return F.interpolate(latents, size=size, mode=interpolation, antialias=antialias, align_corners=False)
