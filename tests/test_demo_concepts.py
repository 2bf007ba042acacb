"""The demo networks' concepts: stars and checkered backgrounds are drawn as specified, captioned, written as
kohya folders, and read back by the judge (which still reads the base world as before)."""
from dataclasses import asdict

import numpy as np
from PIL import Image

from modules.training import shapes_world as world
from modules.training.judge import CONCEPT_ATTRIBUTES, concept_accuracy, judge, judge_concepts


def test_plain_scenes_render_exactly_as_the_base_world():
    rng = np.random.default_rng(5)
    for _ in range(30):
        scene = world.sample_scene(rng)
        assert np.array_equal(world.render_concept(scene), world.render(scene))


def test_star_points_up_fits_its_box_and_keeps_a_border_everywhere():
    for position in world.POSITIONS:
        scene = world.ConceptScene(world.STAR, "white", "black", position, "large", dx=0.025, dy=0.025, scale=1.06)
        image = world.render_concept(scene)
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        assert (border == world.COLORS["black"]).all(), position
    image = world.render_concept(world.ConceptScene(world.STAR, "white", "black", "center", "large"))
    ys, xs = np.nonzero(image[..., 0] > 128)
    assert abs((xs.max() - xs.min() + 1) / 64 - world.SIZE_FRACTION["large"]) < 0.04
    top_row = image[ys.min(), :, 0] > 128
    assert abs(np.flatnonzero(top_row).mean() - 32) < 1.5  # the apex is the top, centred
    assert 0.25 < (image[..., 0] > 128).sum() / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1)) < 0.45  # five points, not a blob


def test_checkered_background_alternates_the_background_and_check_color_in_16px_cells():
    scene = world.ConceptScene("circle", "red", "blue", "center", "small", pattern=world.CHECKERED)
    image = world.render_concept(scene)
    blue, check = world.COLORS["blue"], world.COLORS[world.CHECKER_COLOR]
    assert tuple(image[2, 2]) == blue and tuple(image[2, 18]) == check and tuple(image[18, 2]) == check
    assert tuple(image[18, 18]) == blue and tuple(image[2, 50]) == check and tuple(image[62, 62]) == blue
    assert tuple(image[32, 32]) == world.COLORS["red"]


def test_concept_scenes_avoid_the_check_color_on_checkered_backgrounds():
    rng = np.random.default_rng(0)
    scenes = [world.sample_concept_scene(rng, world.SHAPES, world.CHECKERED) for _ in range(300)]
    assert all(world.CHECKER_COLOR not in (s.color, s.background) and s.color != s.background for s in scenes)
    assert {s.shape for s in scenes} == set(world.SHAPES)
    forced = [world.sample_concept_scene(rng, world.SHAPES, background="black") for _ in range(100)]
    assert all(s.background == "black" and s.color != "black" for s in forced)


def test_captions_keep_the_taught_word_when_others_are_dropped():
    scene = world.ConceptScene(world.STAR, "red", "blue", "left", "large", pattern=world.CHECKERED)
    assert world.concept_caption(scene) == "a large red star on a blue checkered background, left"
    rng = np.random.default_rng(1)
    captions = {world.concept_caption(scene, rng, drop_prob=0.5) for _ in range(200)}
    assert all("star" in c and "checkered background" in c for c in captions)
    assert "a star on a checkered background" in captions
    plain = world.ConceptScene(world.STAR, "red", "blue", "left", "large")
    assert world.concept_caption(plain) == "a large red star on a blue background, left"
    night = world.ConceptScene("circle", "red", "black", "left", "large")
    assert world.concept_caption(night, background_word="midnight") == "a large red circle on a midnight background, left"
    assert all("on a midnight background" in world.concept_caption(night, rng, 0.5, "midnight") for _ in range(50))


def test_dataset_folders_hold_png_and_caption_pairs(tmp_path):
    assert world.concept_dataset(tmp_path / "star", 40, (world.STAR,), seed=3, regularization=0.25) == 40
    assert world.concept_dataset(tmp_path / "checks", 10, world.SHAPES, world.CHECKERED, seed=3) == 10
    star_captions = [p.read_text().strip() for p in sorted((tmp_path / "star").glob("*.txt"))]
    assert len(star_captions) == len(list((tmp_path / "star").glob("*.png"))) == 40
    stars = sum("star" in c for c in star_captions)
    assert 20 <= stars < 40  # ordinary scenes keep the other shapes as they were
    image = np.asarray(Image.open(tmp_path / "checks" / "00000.png"))
    assert image.shape == (64, 64, 3)
    assert all("checkered" in p.read_text() for p in (tmp_path / "checks").glob("*.txt"))


def test_judge_reads_stars_and_checkered_backgrounds():
    rng = np.random.default_rng(2)
    for shapes, pattern in (((world.STAR,), "plain"), ((world.STAR,), world.CHECKERED),
                            (world.SHAPES, world.CHECKERED)):
        scenes = [world.sample_concept_scene(rng, shapes, pattern) for _ in range(100)]
        result = concept_accuracy([world.render_concept(s) for s in scenes], scenes)
        assert all(result[a] >= 0.98 for a in CONCEPT_ATTRIBUTES), (shapes, pattern, result)


def test_judge_concepts_reads_the_base_world_as_judge_does():
    scenes = world.all_scenes()[::12]
    for scene in scenes:
        image = world.render(scene)
        extended = asdict(judge_concepts(image))
        assert extended.pop("pattern") == "plain"
        assert extended == asdict(judge(image)), scene


def test_judge_concepts_survives_blur_and_noise():
    rng = np.random.default_rng(4)
    scenes = [world.ConceptScene(shape, c, b, p, "large", pattern=pattern)
              for shape in (world.STAR, "circle", "square")
              for c, b, p in [("red", "white", "left"), ("blue", "orange", "bottom"), ("green", "yellow", "center")]
              for pattern in ("plain", world.CHECKERED)]
    images = []
    for s in scenes:
        blurred = Image.fromarray(world.render_concept(s)).resize((32, 32), Image.Resampling.BILINEAR).resize(
            (64, 64), Image.Resampling.BILINEAR)
        noisy = np.asarray(blurred, dtype=np.float32) + rng.normal(0, 8, (64, 64, 3))
        images.append(np.clip(noisy, 0, 255).astype(np.uint8))
    result = concept_accuracy(images, scenes)
    assert result["shape"] >= 0.88 and result["pattern"] >= 0.88 and result["background"] >= 0.88, result
