"""A deterministic judge for shapes-world images (independent of any generator).

Background = most common palette color on the border; foreground = pixels nearer the shape color than the
background color (along the line between them); shape color = palette color nearest to the core foreground
pixels; shape from the foreground's top/bottom balance and bounding-box corners; position from the
bounding-box centre; size from the bounding-box side.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from modules.training.shapes_world import COLORS, Scene

ATTRIBUTES = ("shape", "color", "background", "position", "size")
_PALETTE_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[n] for n in _PALETTE_NAMES], dtype=np.float32)

CENTER_TOLERANCE = 0.09  # bbox centre within this of the image centre (both axes) -> "center"
LARGE_SIDE = 0.46  # bbox side (fraction of the image) above which a shape is "large"
TRIANGLE_TOP_SHARE = 0.38  # an apex-up triangle has ~1/4 of its area in the top half of its bbox
SQUARE_CORNER_FILL = 0.5  # mean foreground coverage of the bbox corner patches above which a shape is a square


@dataclass(frozen=True)
class Judgement:
    """What the judge read from an image; ``None`` where no shape was found."""

    shape: str | None
    color: str | None
    background: str
    position: str | None
    size: str | None


def _nearest(colors: np.ndarray, exclude: int | None = None) -> np.ndarray:
    dist = ((colors[..., None, :] - _PALETTE) ** 2).sum(-1)
    if exclude is not None:
        dist[..., exclude] = np.inf
    return dist.argmin(-1)


def judge(image: np.ndarray) -> Judgement:
    """Read shape, colors, position and size from an RGB uint8 image (H, W, 3)."""
    img = np.asarray(image, dtype=np.float32)[..., :3]
    h, w = img.shape[:2]
    border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                             img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])
    labels = _nearest(border)
    bg_index = int(np.bincount(labels, minlength=len(_PALETTE)).argmax())
    bg_rgb = np.median(border[labels == bg_index], axis=0)
    background = _PALETTE_NAMES[bg_index]

    dist = np.sqrt(((img - bg_rgb) ** 2).sum(-1))
    rough = dist > 40
    if rough.sum() < 4:
        return Judgement(None, None, background, None, None)
    core = dist >= np.percentile(dist[rough], 60)
    fg_rgb = np.median(img[core & rough], axis=0)
    fg_index = int(_nearest(fg_rgb[None], exclude=bg_index)[0])
    color = _PALETTE_NAMES[fg_index]

    axis = fg_rgb - bg_rgb
    t = ((img - bg_rgb) @ axis) / max(float(axis @ axis), 1e-6)
    mask = t > 0.5
    rows = np.flatnonzero(mask.sum(1) >= 2)
    cols = np.flatnonzero(mask.sum(0) >= 2)
    if len(rows) == 0 or len(cols) == 0:
        return Judgement(None, color, background, None, None)
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = mask[y0:y1, x0:x1].astype(np.float32)
    bh, bw = box.shape

    top_share = box[: bh // 2].sum() / max(box.sum(), 1.0) if bh >= 2 else 0.5
    ph, pw = max(1, round(bh * 0.15)), max(1, round(bw * 0.15))
    corners = [box[:ph, :pw], box[:ph, -pw:], box[-ph:, :pw], box[-ph:, -pw:]]
    corner_fill = float(np.mean([c.mean() for c in corners]))
    if top_share < TRIANGLE_TOP_SHARE:
        shape = "triangle"
    elif corner_fill > SQUARE_CORNER_FILL:
        shape = "square"
    else:
        shape = "circle"

    cx, cy = (x0 + x1) / 2 / w - 0.5, (y0 + y1) / 2 / h - 0.5
    if max(abs(cx), abs(cy)) < CENTER_TOLERANCE:
        position = "center"
    elif abs(cx) >= abs(cy):
        position = "left" if cx < 0 else "right"
    else:
        position = "top" if cy < 0 else "bottom"
    size = "large" if max(bh / h, bw / w) > LARGE_SIDE else "small"
    return Judgement(shape, color, background, position, size)


def score(judgement: Judgement, scene: Scene) -> dict[str, bool]:
    """Per-attribute correctness of ``judgement`` against the intended ``scene``."""
    got = asdict(judgement)
    return {a: got[a] == getattr(scene, a) for a in ATTRIBUTES}


def accuracy(images: list[np.ndarray], scenes: list[Scene]) -> dict[str, float]:
    """Per-attribute accuracy of the judge's reading of ``images`` against their intended ``scenes``."""
    totals = dict.fromkeys(ATTRIBUTES, 0)
    for image, scene in zip(images, scenes, strict=True):
        for name, ok in score(judge(image), scene).items():
            totals[name] += ok
    return {name: totals[name] / max(len(scenes), 1) for name in ATTRIBUTES}
