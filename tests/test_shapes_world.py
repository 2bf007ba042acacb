"""The procedural shapes world: reproducible scenes, anti-aliased renders that fit, and captions."""
import numpy as np

from modules.training import shapes_world as world


def test_every_combination_once_and_colors_always_differ():
    scenes = world.all_scenes()
    assert len(scenes) == 3 * 8 * 7 * 5 * 2
    assert len(set(scenes)) == len(scenes)
    assert all(s.color != s.background for s in scenes)


def test_sampling_is_reproducible_from_a_seed_and_covers_the_vocabulary():
    a = [world.sample_scene(np.random.default_rng(7)) for _ in range(3)]
    b = [world.sample_scene(np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    rng = np.random.default_rng(0)
    scenes = [world.sample_scene(rng) for _ in range(600)]
    assert all(s.color != s.background for s in scenes)
    assert {s.shape for s in scenes} == set(world.SHAPES)
    assert {s.position for s in scenes} == set(world.POSITIONS)
    assert {s.color for s in scenes} == set(world.COLORS) == {s.background for s in scenes}


def test_render_is_deterministic_flat_and_antialiased():
    scene = world.Scene("circle", "red", "blue", "center", "large")
    image = world.render(scene)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image, world.render(scene))
    assert tuple(image[0, 0]) == world.COLORS["blue"]
    assert tuple(image[32, 32]) == world.COLORS["red"]
    colors = {tuple(p) for p in image.reshape(-1, 3)}
    assert len(colors) > 2  # edge pixels are mixtures


def test_large_shapes_fit_with_a_background_border_at_every_position():
    for position in world.POSITIONS:
        for shape in world.SHAPES:
            scene = world.Scene(shape, "white", "black", position, "large", dx=0.025, dy=0.025, scale=1.06)
            image = world.render(scene)
            border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
            assert (border == world.COLORS["black"]).all(), (position, shape)


def test_positions_move_the_shape_the_named_way():
    def centre(position):
        image = world.render(world.Scene("square", "white", "black", position, "small"))
        ys, xs = np.nonzero(image[..., 0] > 128)
        return xs.mean() / 64, ys.mean() / 64

    cx, cy = centre("center")
    assert abs(cx - 0.5) < 0.02 and abs(cy - 0.5) < 0.02
    assert centre("left")[0] < 0.3 and centre("right")[0] > 0.7
    assert centre("top")[1] < 0.3 and centre("bottom")[1] > 0.7


def test_captions_full_partial_and_empty():
    scene = world.Scene("circle", "red", "blue", "left", "large")
    full = "a large red circle on a blue background, left"
    assert world.full_caption(scene) == full
    rng = np.random.default_rng(0)
    assert world.caption(scene, rng, drop_prob=0.0, empty_prob=0.0) == full
    assert world.caption(scene, rng, empty_prob=1.0) == ""
    assert world.caption(scene, rng, drop_prob=1.0, empty_prob=0.0) == "a shape"
    captions = {world.caption(scene, rng) for _ in range(400)}
    assert {"", full, "a large red circle", "a large red shape on a blue background, left"} <= captions
    assert all(w in full.replace(",", "").split() + ["shape"] for c in captions for w in c.replace(",", "").split())
