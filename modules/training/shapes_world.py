"""The "shapes world" of the bundled demo model: one flat shape on a flat background, with captions.

Geometry (fractions of the image side, documented in docs/demo-model.md):

* sizes: a shape's bounding box is ``SIZE_FRACTION[size]`` of the side (small 0.34, large 0.58), for every shape
  (circle diameter, square side, triangle base and height; triangles point up);
* positions: the bounding-box centre is at the image centre for ``center``; for ``left``/``right``/``top``/``bottom``
  it is moved along one axis to the centre of that third (1/6 of the side from the edge), or less far when the shape
  would not fit: never closer than ``EDGE_MARGIN`` to the border;
* jitter (training only): the centre moves by up to ``JITTER_SHIFT`` and the size is scaled by up to ``JITTER_SCALE``
  (the centre is then clamped so the shape still keeps ``EDGE_MARGIN`` from the border).

Images are drawn with Pillow at ``supersample``× the resolution and box-filtered down (anti-aliasing).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 165, 50),
    "blue": (35, 65, 220),
    "yellow": (245, 220, 35),
    "purple": (140, 45, 180),
    "orange": (245, 140, 25),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
POSITIONS = ("left", "right", "top", "bottom", "center")
SIZES = ("small", "large")

SIZE_FRACTION = {"small": 0.34, "large": 0.58}
EDGE_MARGIN = 0.025
JITTER_SHIFT = 0.025
JITTER_SCALE = 0.06


@dataclass(frozen=True)
class Scene:
    """One picture of the world; ``dx``/``dy`` (fraction of the side) and ``scale`` are the jitter."""

    shape: str
    color: str
    background: str
    position: str
    size: str
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0


def all_scenes() -> list[Scene]:
    """Every attribute combination once, without jitter (3·8·7·5·2 = 1,680 scenes), in a fixed order."""
    return [
        Scene(shape, color, background, position, size)
        for shape, color, background, position, size in itertools.product(SHAPES, COLORS, COLORS, POSITIONS, SIZES)
        if color != background
    ]


def sample_scene(rng: np.random.Generator, jitter: bool = True) -> Scene:
    """Draw a random scene (uniform over attributes, shape and background colors always different)."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    color, background = (list(COLORS)[i] for i in rng.choice(len(COLORS), size=2, replace=False))
    position = POSITIONS[rng.integers(len(POSITIONS))]
    size = SIZES[rng.integers(len(SIZES))]
    if not jitter:
        return Scene(shape, color, background, position, size)
    dx, dy = rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, size=2)
    scale = 1.0 + rng.uniform(-JITTER_SCALE, JITTER_SCALE)
    return Scene(shape, color, background, position, size, float(dx), float(dy), float(scale))


def jittered(scene: Scene, rng: np.random.Generator) -> Scene:
    """``scene`` with fresh random jitter."""
    dx, dy = rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, size=2)
    scale = 1.0 + rng.uniform(-JITTER_SCALE, JITTER_SCALE)
    return Scene(scene.shape, scene.color, scene.background, scene.position, scene.size,
                 float(dx), float(dy), float(scale))


def shape_box(scene: Scene) -> tuple[float, float, float]:
    """Bounding-box centre (x, y) and side of the shape, as fractions of the image side."""
    side = SIZE_FRACTION[scene.size] * scene.scale
    offset = max(0.0, min(1.0 / 3.0, 0.5 - side / 2 - EDGE_MARGIN))
    cx, cy = {
        "center": (0.5, 0.5),
        "left": (0.5 - offset, 0.5),
        "right": (0.5 + offset, 0.5),
        "top": (0.5, 0.5 - offset),
        "bottom": (0.5, 0.5 + offset),
    }[scene.position]
    low, high = side / 2 + EDGE_MARGIN, 1 - side / 2 - EDGE_MARGIN
    return min(max(cx + scene.dx, low), high), min(max(cy + scene.dy, low), high), side


def render(scene: Scene, resolution: int = 64, supersample: int = 4) -> np.ndarray:
    """Draw ``scene`` as an anti-aliased ``resolution``² RGB uint8 array."""
    from PIL import Image, ImageDraw

    big = resolution * supersample
    image = Image.new("RGB", (big, big), COLORS[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy, side = (v * big for v in shape_box(scene))
    x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    fill = COLORS[scene.color]
    if scene.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    return np.asarray(image.resize((resolution, resolution), Image.Resampling.BOX))


def full_caption(scene: Scene) -> str:
    """The complete caption, e.g. ``"a large red circle on a blue background, left"``."""
    return f"a {scene.size} {scene.color} {scene.shape} on a {scene.background} background, {scene.position}"


def caption(scene: Scene, rng: np.random.Generator, drop_prob: float = 0.15, empty_prob: float = 0.1) -> str:
    """A training caption: attributes dropped independently with ``drop_prob``, empty with ``empty_prob``.

    A dropped shape name becomes "shape" so the sentence stays well formed ("a red shape, left").
    """
    if rng.random() < empty_prob:
        return ""
    keep = rng.random(5) >= drop_prob
    words = ["a"]
    if keep[0]:
        words.append(scene.size)
    if keep[1]:
        words.append(scene.color)
    words.append(scene.shape if keep[2] else "shape")
    text = " ".join(words)
    if keep[3]:
        text += f" on a {scene.background} background"
    if keep[4]:
        text += f", {scene.position}"
    return text
