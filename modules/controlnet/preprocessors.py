"""Preprocessors that need no downloaded weights, resize modes and pixel-perfect resolution (sd-webui-controlnet
semantics), all on RGB uint8 arrays (H, W, 3).

A preprocessor turns the unit's input image into the "detected map" the ControlNet sees. Maps are made at the
preprocessor resolution (the shorter side; pixel perfect derives it from the output size) and then fitted to the
output size with the unit's resize mode.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
DEFAULT_RESOLUTION = 512


@dataclass(frozen=True)
class Slider:
    label: str
    value: float
    minimum: float
    maximum: float


@dataclass(frozen=True)
class Preprocessor:
    """``run(image, threshold_a, threshold_b) -> map``; ``uses_resolution``: the input is first scaled so its
    shorter side is the processor resolution."""

    name: str
    run: Callable[[np.ndarray, float, float], np.ndarray]
    uses_resolution: bool = True
    threshold_a: Slider | None = None
    threshold_b: Slider | None = None


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _rgb(mask: np.ndarray) -> np.ndarray:
    return np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` moved by (dy, dx) with zeros shifted in."""
    out = np.zeros_like(a)
    h, w = a.shape[:2]
    src = a[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = src
    return out


def _sobel(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.pad(channel, 1, mode="reflect")
    h, w = channel.shape
    s = lambda dy, dx: p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]  # noqa: E731
    gx = (s(-1, 1) + 2 * s(0, 1) + s(1, 1)) - (s(-1, -1) + 2 * s(0, -1) + s(1, -1))
    gy = (s(1, -1) + 2 * s(1, 0) + s(1, 1)) - (s(-1, -1) + 2 * s(-1, 0) + s(-1, 1))
    return gx, gy


def canny(img: np.ndarray, low: float = 100, high: float = 200) -> np.ndarray:
    """Canny edges (3×3 Sobel per channel, the strongest channel per pixel, L1 magnitude as OpenCV uses by
    default, non-maximum suppression, hysteresis between ``low`` and ``high``) as a white-on-black map."""
    chans = [_sobel(img[..., c].astype(np.float32)) for c in range(img.shape[2])]
    mags = np.stack([np.abs(gx) + np.abs(gy) for gx, gy in chans])
    best = mags.argmax(0)
    gx = np.take_along_axis(np.stack([c[0] for c in chans]), best[None], 0)[0]
    gy = np.take_along_axis(np.stack([c[1] for c in chans]), best[None], 0)[0]
    mag = np.take_along_axis(mags, best[None], 0)[0]
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    # gradient direction: 0 horizontal, 1 at 45°, 2 vertical, 3 at 135°
    direction = np.digitize(angle, [22.5, 67.5, 112.5, 157.5]) % 4
    keep = np.zeros(mag.shape, dtype=bool)
    for d, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead, behind = _shift(mag, -dy, -dx), _shift(mag, dy, dx)
        keep |= (direction == d) & (mag > ahead) & (mag >= behind)
    weak = keep & (mag > low)
    edges = weak & (mag > high)
    while True:
        grown = edges.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= _shift(edges, dy, dx)
        grown &= weak
        if np.array_equal(grown, edges):
            return _rgb(edges)
        edges = grown


def invert(img: np.ndarray, *_) -> np.ndarray:
    """255 − image (for line drawings on white: "invert (from white bg & black line)")."""
    return 255 - img


def threshold(img: np.ndarray, level: float = 127, *_) -> np.ndarray:
    """Per channel: 255 above ``level``, else 0."""
    return ((img > level) * 255).astype(np.uint8)


def binary(img: np.ndarray, level: float = 0, *_) -> np.ndarray:
    """Grey level above ``level`` → white; ``level`` 0 (or 255) picks Otsu's threshold."""
    gray = _gray(img)
    if level <= 0 or level >= 255:
        level = _otsu(gray)
    return _rgb(gray > level)


def _otsu(gray: np.ndarray) -> float:
    hist = np.bincount(np.clip(gray, 0, 255).astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * levels) / np.maximum(w0, 1)
    m1 = ((hist * levels).sum() - np.cumsum(hist * levels)) / np.maximum(w1, 1)
    return float(np.argmax(w0 * w1 * (m0 - m1) ** 2))


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (reflect borders) of a float (H, W, C) array."""
    radius = max(1, int(round(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-(x ** 2) / (2 * sigma ** 2))
    k /= k.sum()
    out = img
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (radius, radius)
        p = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        out = sum(k[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(len(k)))
    return out


def scribble_xdog(img: np.ndarray, level: float = 32, *_) -> np.ndarray:
    """Scribble lines by extended difference of Gaussians (σ 0.5 vs 5): white lines where the image darkens."""
    f = img.astype(np.float32)
    dog = np.min(_blur(f, 5.0) - _blur(f, 0.5), axis=2)
    return _rgb(2 * dog.clip(0, 255) > level)


def tile_resample(img: np.ndarray, down: float = 1.0, *_) -> np.ndarray:
    """The image scaled down by ``down`` (area filter); the ControlNet sees a blurred copy ("tile")."""
    if down <= 1:
        return img
    h, w = img.shape[:2]
    size = (max(1, round(w / down)), max(1, round(h / down)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BOX))


def _none(img: np.ndarray, *_) -> np.ndarray:
    return img


PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in (
    Preprocessor("none", _none, uses_resolution=False),
    Preprocessor("invert", invert, uses_resolution=False),
    Preprocessor("canny", canny, threshold_a=Slider("Canny Low Threshold", 100, 1, 255),
                 threshold_b=Slider("Canny High Threshold", 200, 1, 255)),
    Preprocessor("threshold", threshold, threshold_a=Slider("Binarization Threshold", 127, 0, 255)),
    Preprocessor("binary", binary, threshold_a=Slider("Binary threshold", 0, 0, 255)),
    Preprocessor("scribble_xdog", scribble_xdog, threshold_a=Slider("XDoG Threshold", 32, 1, 64)),
    Preprocessor("tile_resample", tile_resample, uses_resolution=False,
                 threshold_a=Slider("Down Sampling Rate", 1, 1, 8)),
)}
ALIASES = {"invert (from white bg & black line)": "invert", "scribble_thresh": "threshold", "tile": "tile_resample"}


def find_preprocessor(name: str) -> Preprocessor:
    """A preprocessor by name or sd-webui-controlnet alias (case-insensitive); ValueError naming the choices."""
    key = (name or "none").strip().lower()
    key = ALIASES.get(key, key)
    if key not in PREPROCESSORS:
        raise ValueError(f"unknown preprocessor {name!r} (available: {', '.join(PREPROCESSORS)})")
    return PREPROCESSORS[key]


def pixel_perfect_resolution(image_size: tuple[int, int], width: int, height: int, resize_mode: str) -> int:
    """The processor resolution that makes the map line up pixel for pixel with a ``width``×``height`` output:
    the shorter input side scaled by the resize mode's factor (fit inside for "Resize and Fill", cover otherwise)."""
    raw_w, raw_h = image_size
    k_h, k_w = height / raw_h, width / raw_w
    k = min(k_h, k_w) if resize_mode == "Resize and Fill" else max(k_h, k_w)
    return int(round(k * min(raw_w, raw_h)))


def _scale_short_side(img: np.ndarray, resolution: int) -> np.ndarray:
    h, w = img.shape[:2]
    k = resolution / min(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    if size == (w, h):
        return img
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


def _is_binary(img: np.ndarray) -> bool:
    return bool(np.isin(img, (0, 255)).all())


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Resize; black/white maps (edges, thresholds) stay black/white with lines kept when shrinking."""
    if img.shape[1] == w and img.shape[0] == h:
        return img
    if _is_binary(img):
        grey = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))
        return ((grey > 64) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.LANCZOS))


def fit(img: np.ndarray, width: int, height: int, resize_mode: str) -> np.ndarray:
    """Fit a map to ``width``×``height``: "Just Resize" stretches, "Crop and Resize" covers and crops the centre,
    "Resize and Fill" fits inside and fills the rest with the median border color."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize_mode!r} (available: {', '.join(RESIZE_MODES)})")
    h, w = img.shape[:2]
    if resize_mode == "Just Resize":
        return _resize(img, width, height)
    cover = resize_mode == "Crop and Resize"
    k = max(width / w, height / h) if cover else min(width / w, height / h)
    sw, sh = max(1, round(w * k)), max(1, round(h * k))
    scaled = _resize(img, sw, sh)
    if cover:
        top, left = (sh - height) // 2, (sw - width) // 2
        return scaled[top:top + height, left:left + width]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    out = np.empty((height, width, img.shape[2]), dtype=img.dtype)
    out[:] = np.median(border, axis=0).astype(img.dtype)
    top, left = (height - sh) // 2, (width - sw) // 2
    out[top:top + sh, left:left + sw] = scaled
    return out


def as_rgb(image) -> np.ndarray:
    """A PIL image or array as RGB uint8 (H, W, 3); transparent pixels become black."""
    if isinstance(image, np.ndarray):
        arr = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
        return arr[..., :3].astype(np.uint8)
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    return np.asarray(image.convert("RGB"))


def detect(image, module: str, resolution: int = DEFAULT_RESOLUTION, threshold_a: float = -1,
           threshold_b: float = -1) -> np.ndarray:
    """The detected map of ``image`` (PIL or array) by preprocessor ``module``; thresholds < 0 take defaults."""
    pre = find_preprocessor(module)
    img = as_rgb(image)
    if pre.uses_resolution:
        img = _scale_short_side(img, resolution if resolution > 0 else DEFAULT_RESOLUTION)
    a = threshold_a if threshold_a >= 0 or pre.threshold_a is None else pre.threshold_a.value
    b = threshold_b if threshold_b >= 0 or pre.threshold_b is None else pre.threshold_b.value
    return np.ascontiguousarray(pre.run(img, a, b))
