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
import math
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
    from PIL import Image

    big = resolution * supersample
    image = Image.new("RGB", (big, big), COLORS[scene.background])
    return _draw_shape(image, scene, resolution)


def _draw_shape(image, scene: Scene, resolution: int) -> np.ndarray:
    """Draw the scene's shape on ``image`` (its supersampled background) and box-filter it down to ``resolution``."""
    from PIL import Image, ImageDraw

    big = image.size[0]
    draw = ImageDraw.Draw(image)
    cx, cy, side = (v * big for v in shape_box(scene))
    x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    fill = COLORS[scene.color]
    if scene.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif scene.shape == STAR:
        draw.polygon(star_points(cx, cy, side), fill=fill)
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


# --------------------------------------------------------------------------- demo-network concepts
# Two things the base model never sees, taught by the demo LoRA ("star") and the demo embedding ("checkered").
# ``render`` and the scenes above stay as they are; the functions below extend them.

STAR = "star"
STAR_INNER_RATIO = 0.382  # inner / outer radius of a regular five-pointed star
CHECKERED = "checkered"
CHECKER_COLOR = "black"  # the second color of checkered backgrounds (never a shape or background color there)
CHECKER_CELLS = 4  # checks per image side: 16 px cells at 64 px, i.e. 2×2 latent pixels per check


@dataclass(frozen=True)
class ConceptScene(Scene):
    """A scene that may also use the demo concepts: ``shape`` "star", ``pattern`` "checkered" (or "plain")."""

    pattern: str = "plain"


def star_points(cx: float, cy: float, side: float) -> list[tuple[float, float]]:
    """The 10 corners of an apex-up five-pointed star whose bounding box is ``side`` wide, centred on (cx, cy)."""
    outer = side / (2 * math.sin(math.radians(72)))
    height = outer * (1 + math.cos(math.radians(36)))
    top = cy - height / 2
    centre_y = top + outer
    points = []
    for k in range(10):
        radius = outer if k % 2 == 0 else outer * STAR_INNER_RATIO
        angle = math.radians(-90 + 36 * k)
        points.append((cx + radius * math.cos(angle), centre_y + radius * math.sin(angle)))
    return points


def checker_parity(resolution: int) -> np.ndarray:
    """(resolution, resolution) bool array: True on the checks drawn in ``CHECKER_COLOR``."""
    cell = np.arange(resolution) * CHECKER_CELLS // resolution
    return (cell[:, None] + cell[None, :]) % 2 == 1


def render_concept(scene: Scene, resolution: int = 64, supersample: int = 4) -> np.ndarray:
    """Like :func:`render`, with stars and checkered backgrounds (checks of the background color and
    ``CHECKER_COLOR``, the top-left check in the background color). Plain non-star scenes render identically."""
    from PIL import Image

    big = resolution * supersample
    background = np.empty((big, big, 3), dtype=np.uint8)
    background[:] = COLORS[scene.background]
    if getattr(scene, "pattern", "plain") == CHECKERED:
        background[checker_parity(big)] = COLORS[CHECKER_COLOR]
    return _draw_shape(Image.fromarray(background), scene, resolution)


def concept_caption(scene: Scene, rng: np.random.Generator | None = None, drop_prob: float = 0.15,
                    background_word: str | None = None) -> str:
    """The caption of a concept scene, e.g. ``"a large red star on a blue checkered background, left"``.

    With ``rng``, size, color, background color and position are dropped independently with ``drop_prob``; the
    shape name, the word "checkered" and ``background_word`` (a new name for the background color, e.g.
    "midnight" for black) always stay: they are what the demo networks learn.
    """
    checkered = getattr(scene, "pattern", "plain") == CHECKERED
    keep = rng.random(4) >= drop_prob if rng is not None else np.ones(4, dtype=bool)
    words = ["a"] + [w for w, k in ((scene.size, keep[0]), (scene.color, keep[1])) if k] + [scene.shape]
    text = " ".join(words)
    if background_word:
        text += f" on a {background_word} background"
    elif keep[2] or checkered:
        colour = f"{scene.background} " if keep[2] else ""
        text += f" on a {colour}{CHECKERED + ' ' if checkered else ''}background"
    if keep[3]:
        text += f", {scene.position}"
    return text


def sample_concept_scene(rng: np.random.Generator, shapes: tuple[str, ...] = (STAR,), pattern: str = "plain",
                         jitter: bool = True, background: str | None = None) -> ConceptScene:
    """A random scene with a shape from ``shapes``, the given background ``pattern`` and (if given) background
    color; on checkered backgrounds neither the shape nor the background has ``CHECKER_COLOR``."""
    colors = [c for c in COLORS if pattern == "plain" or c != CHECKER_COLOR]
    shape = shapes[rng.integers(len(shapes))]
    if background is None:
        color, background = (colors[i] for i in rng.choice(len(colors), size=2, replace=False))
    else:
        others = [c for c in colors if c != background]
        color = others[rng.integers(len(others))]
    position = POSITIONS[rng.integers(len(POSITIONS))]
    size = SIZES[rng.integers(len(SIZES))]
    dx = dy = 0.0
    scale = 1.0
    if jitter:
        dx, dy = (float(v) for v in rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, size=2))
        scale = 1.0 + float(rng.uniform(-JITTER_SCALE, JITTER_SCALE))
    return ConceptScene(shape, color, background, position, size, dx, dy, scale, pattern)


def write_captioned_folder(folder, scenes: list[Scene], captions: list[str], resolution: int = 64) -> int:
    """Render ``scenes`` into ``folder`` as ``00000.png`` + ``00000.txt`` (kohya layout); returns the count."""
    from pathlib import Path

    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (scene, text) in enumerate(zip(scenes, captions, strict=True)):
        Image.fromarray(render_concept(scene, resolution)).save(folder / f"{i:05d}.png")
        (folder / f"{i:05d}.txt").write_text(text + "\n", encoding="utf-8")
    return len(scenes)


def concept_dataset(folder, count: int, shapes: tuple[str, ...], pattern: str = "plain", seed: int = 0,
                    regularization: float = 0.0, resolution: int = 64, background: str | None = None,
                    background_word: str | None = None) -> int:
    """A demo network's dataset: concept scenes (``shapes`` on ``pattern`` backgrounds, of color ``background``
    if given, called ``background_word`` if given) with partial captions that keep the concept word, plus a
    ``regularization`` share of ordinary scenes with the base world's training captions (so a LoRA leaves
    prompts without the concept as they were)."""
    rng = np.random.default_rng([seed, 11])
    scenes, captions = [], []
    for _ in range(count):
        if rng.random() < regularization:
            scene = sample_scene(rng)
            scenes.append(scene)
            captions.append(caption(scene, rng, empty_prob=0.0))
        else:
            scene = sample_concept_scene(rng, shapes, pattern, background=background)
            scenes.append(scene)
            captions.append(concept_caption(scene, rng, background_word=background_word))
    return write_captioned_folder(folder, scenes, captions, resolution)
