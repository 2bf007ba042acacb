"""The deterministic shapes-world judge reads renders correctly and rejects wrong attributes."""
import numpy as np

from modules.training import shapes_world as world
from modules.training.judge import ATTRIBUTES, accuracy, judge, score


def test_judge_reads_every_combination_of_the_world():
    scenes = world.all_scenes()
    result = accuracy([world.render(s) for s in scenes], scenes)
    assert all(result[a] >= 0.98 for a in ATTRIBUTES), result


def test_judge_reads_jittered_renders():
    rng = np.random.default_rng(1)
    scenes = [world.sample_scene(rng) for _ in range(400)]
    result = accuracy([world.render(s) for s in scenes], scenes)
    assert all(result[a] >= 0.98 for a in ATTRIBUTES), result


def test_judge_flags_the_wrong_attributes():
    image = world.render(world.Scene("triangle", "yellow", "purple", "top", "large"))
    wanted = world.Scene("circle", "red", "purple", "bottom", "small")
    assert score(judge(image), wanted) == {"shape": False, "color": False, "background": True,
                                           "position": False, "size": False}


def test_judge_survives_blur_and_noise():
    from PIL import Image

    rng = np.random.default_rng(2)
    scenes = [world.Scene(shape, c, b, p, "large") for shape in world.SHAPES
              for c, b, p in [("red", "white", "left"), ("blue", "orange", "bottom"), ("green", "black", "center")]]
    images = []
    for s in scenes:
        blurred = Image.fromarray(world.render(s)).resize((24, 24), Image.Resampling.BILINEAR).resize(
            (64, 64), Image.Resampling.BILINEAR)
        noisy = np.asarray(blurred, dtype=np.float32) + rng.normal(0, 8, (64, 64, 3))
        images.append(np.clip(noisy, 0, 255).astype(np.uint8))
    result = accuracy(images, scenes)
    assert all(result[a] >= 0.88 for a in ATTRIBUTES), result


def test_an_empty_image_has_no_shape():
    image = np.full((64, 64, 3), world.COLORS["green"], dtype=np.uint8)
    got = judge(image)
    assert got.background == "green" and got.shape is None and got.position is None
