"""A deterministic judge for shapes-world images (independent of any generator).

Background = most common palette color on the border; foreground = pixels nearer the shape color than the
background color (along the line between them); shape color = palette color nearest to the core foreground
pixels; shape from the foreground's top/bottom balance and bounding-box corners; position from the
bounding-box centre; size from the bounding-box side.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from modules.training.shapes_world import CHECKER_COLOR, CHECKERED, COLORS, Scene, checker_parity

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


def _foreground(img: np.ndarray) -> tuple[int, np.ndarray | None, np.ndarray | None]:
    """(background palette index, shape RGB, shape mask); RGB and mask are None when nothing stands out.

    Background = most common palette color on the 2-pixel border; the shape's RGB = median of the pixels most
    distinct from it; mask = pixels past the midpoint from the background towards that RGB."""
    border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                             img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])
    labels = _nearest(border)
    bg_index = int(np.bincount(labels, minlength=len(_PALETTE)).argmax())
    bg_rgb = np.median(border[labels == bg_index], axis=0)
    dist = np.sqrt(((img - bg_rgb) ** 2).sum(-1))
    rough = dist > 40
    if rough.sum() < 4:
        return bg_index, None, None
    core = dist >= np.percentile(dist[rough], 60)
    fg_rgb = np.median(img[core & rough], axis=0)
    axis = fg_rgb - bg_rgb
    t = ((img - bg_rgb) @ axis) / max(float(axis @ axis), 1e-6)
    return bg_index, fg_rgb, t > 0.5


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """The shape's pixels as :func:`judge` finds them (all False when nothing stands out)."""
    img = np.asarray(image, dtype=np.float32)[..., :3]
    mask = _foreground(img)[2]
    return np.zeros(img.shape[:2], dtype=bool) if mask is None else mask


def judge(image: np.ndarray) -> Judgement:
    """Read shape, colors, position and size from an RGB uint8 image (H, W, 3)."""
    img = np.asarray(image, dtype=np.float32)[..., :3]
    bg_index, fg_rgb, mask = _foreground(img)
    background = _PALETTE_NAMES[bg_index]
    if mask is None:
        return Judgement(None, None, background, None, None)
    color = _PALETTE_NAMES[int(_nearest(fg_rgb[None], exclude=bg_index)[0])]
    layout = _layout(mask, stars=False)
    return Judgement(color=color, background=background, **layout)


def _layout(mask: np.ndarray, stars: bool) -> dict:
    """Shape, position and size read from a foreground mask (all None when no shape is found)."""
    h, w = mask.shape
    rows = np.flatnonzero(mask.sum(1) >= 2)
    cols = np.flatnonzero(mask.sum(0) >= 2)
    if len(rows) == 0 or len(cols) == 0:
        return {"shape": None, "position": None, "size": None}
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
    elif stars and box.mean() < STAR_FILL:
        shape = "star"
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
    return {"shape": shape, "position": position, "size": size}


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


# --------------------------------------------------------------------------- demo-network concepts
# ``judge`` above stays as it is (the base model's numbers are measured with it); ``judge_concepts`` also
# recognises the demo networks' concepts: the shape "star" and "checkered" backgrounds.

STAR_FILL = 0.55  # foreground share of the bounding box below which a non-triangle, non-square shape is a star
CHECKER_MIN_CONTRAST = 40.0  # RGB distance between the border's two check classes …
CHECKER_MIN_AGREEMENT = 0.75  # … whose pixels must follow the check grid this well
CONCEPT_ATTRIBUTES = ATTRIBUTES + ("pattern",)


@dataclass(frozen=True)
class ConceptJudgement(Judgement):
    """A :class:`Judgement` that may read shape "star"; ``pattern`` is "checkered" or "plain"."""

    pattern: str = "plain"


def _border(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[:2].reshape(-1, *a.shape[2:]), a[-2:].reshape(-1, *a.shape[2:]),
                           a[:, :2].reshape(-1, *a.shape[2:]), a[:, -2:].reshape(-1, *a.shape[2:])])


def _segment_distance(img: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the RGB segment a–b (mixtures of two background colors are background)."""
    axis = b - a
    t = np.clip(((img - a) @ axis) / max(float(axis @ axis), 1e-6), 0.0, 1.0)
    return np.sqrt(((img - a - t[..., None] * axis) ** 2).sum(-1))


def _checkers(img: np.ndarray, border: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(background RGB, check RGB) when the border's two check-grid classes have clearly different colors.

    Color-agnostic on purpose: a generator may get the checks' hues wrong and still draw checks.
    """
    h, w = img.shape[:2]
    parity = _border(checker_parity(max(h, w))[:h, :w])
    even, odd = np.median(border[~parity], axis=0), np.median(border[parity], axis=0)
    if np.sqrt(((even - odd) ** 2).sum()) < CHECKER_MIN_CONTRAST:
        return None
    to_even, to_odd = (np.sqrt(((border - c) ** 2).sum(-1)) for c in (even, odd))
    if np.mean(np.where(parity, to_odd < to_even, to_even < to_odd)) < CHECKER_MIN_AGREEMENT:
        return None
    check = np.asarray(COLORS[CHECKER_COLOR], dtype=np.float32)
    return (odd, even) if ((even - check) ** 2).sum() < ((odd - check) ** 2).sum() else (even, odd)


def judge_concepts(image: np.ndarray) -> ConceptJudgement:
    """Read shape (incl. "star"), colors, position, size and background pattern from an RGB uint8 image.

    Background: as :func:`judge`, or — when the border's pixels on the two classes of the check grid have
    clearly different colors — "checkered", its color the palette color nearest the class that is not nearer
    ``CHECKER_COLOR``; pixels on the RGB segment between the two check colors count as background. On plain
    backgrounds the readings equal :func:`judge`'s except that a round shape filling less than ``STAR_FILL``
    of its bounding box is a star.
    """
    img = np.asarray(image, dtype=np.float32)[..., :3]
    border = _border(img)
    checks = _checkers(img, border)
    if checks is None:
        labels = _nearest(border)
        bg_index = int(np.bincount(labels, minlength=len(_PALETTE)).argmax())
        bg_rgb = np.median(border[labels == bg_index], axis=0)
        other_rgb, excluded, pattern = bg_rgb, [bg_index], "plain"
    else:
        bg_rgb, other_rgb = checks
        check_index = _PALETTE_NAMES.index(CHECKER_COLOR)
        bg_index = int(_nearest(bg_rgb[None], exclude=check_index)[0])
        excluded, pattern = [bg_index, check_index], CHECKERED
    background = _PALETTE_NAMES[bg_index]

    dist = _segment_distance(img, bg_rgb, other_rgb)
    rough = dist > 40
    if rough.sum() < 4:
        return ConceptJudgement(None, None, background, None, None, pattern)
    core = dist >= np.percentile(dist[rough], 60)
    fg_rgb = np.median(img[core & rough], axis=0)
    palette_dist = ((fg_rgb[None] - _PALETTE) ** 2).sum(-1)
    palette_dist[excluded] = np.inf
    color = _PALETTE_NAMES[int(palette_dist.argmin())]

    mask = np.sqrt(((img - fg_rgb) ** 2).sum(-1)) < dist
    layout = _layout(mask, stars=True)
    return ConceptJudgement(color=color, background=background, pattern=pattern, **layout)


def concept_accuracy(images: list[np.ndarray], scenes: list[Scene]) -> dict[str, float]:
    """Per-attribute accuracy of :func:`judge_concepts` (``pattern`` included; plain for ordinary scenes)."""
    totals = dict.fromkeys(CONCEPT_ATTRIBUTES, 0)
    for image, scene in zip(images, scenes, strict=True):
        got = asdict(judge_concepts(image))
        for name in CONCEPT_ATTRIBUTES:
            totals[name] += got[name] == getattr(scene, name, "plain")
    return {name: totals[name] / max(len(scenes), 1) for name in CONCEPT_ATTRIBUTES}
