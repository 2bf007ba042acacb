"""The bundled demo model, loaded through the normal SD1 path and generating through the app's own runner."""
from __future__ import annotations

import numpy as np
import pytest

from bench.bench_demo_quality import DEMO, generate, make_state, redness
from modules.models.safetensors_file import read_shapes
from modules.training.judge import judge

# (prompt, seed) → what the judge must read; a regression check of the shipped weights at 20 steps, CFG 7
KNOWN = [
    ("a large red circle on a blue background, center", 0, {"shape": "circle", "color": "red", "background": "blue"}),
    ("a large yellow square on a black background, center", 1,
     {"shape": "square", "color": "yellow", "background": "black"}),
    ("a large white triangle on a green background, center", 2,
     {"shape": "triangle", "color": "white", "background": "green"}),
    ("a large green square on a white background, center", 3,
     {"shape": "square", "color": "green", "background": "white"}),
]


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return make_state(DEMO, tmp_path_factory.mktemp("demo"))


def test_bundled_file_is_an_sd1_checkpoint_with_its_story(state):
    model = state.models.current
    assert model.family.value == "SD1" and model.spec.prediction == "eps" and model.spec.variant == "base"
    assert model.unet.config.sample_size == 8  # 64×64 native, from modelspec.resolution
    _, metadata = read_shapes(DEMO)
    assert metadata["modelspec.title"] == "demo-shapes" and "license" in " ".join(metadata).lower()
    assert "Trained from scratch" in metadata["modelspec.description"]
    assert DEMO.stat().st_size < 30 * 2**20


@pytest.mark.parametrize("prompt, seed, expected", KNOWN)
def test_the_prompt_decides_what_is_drawn(state, prompt, seed, expected):
    judged = judge(generate(state, prompt, seed=seed))
    assert {k: getattr(judged, k) for k in expected} == expected


def test_same_seed_same_image_and_cfg_matters(state):
    prompt = "a large red circle on a blue background, center"
    first = generate(state, prompt, seed=5)
    assert np.array_equal(first, generate(state, prompt, seed=5))
    assert not np.array_equal(first, generate(state, prompt, seed=6))
    assert np.abs(first.astype(int) - generate(state, prompt, seed=5, cfg=1.0).astype(int)).mean() > 5


def test_prompt_weighting_moves_the_redness(state):
    def mean_redness(weight: float) -> float:
        return float(np.mean([redness(generate(state, f"a (red:{weight}) circle on a blue background", seed=s))
                              for s in range(4)]))

    assert mean_redness(1.4) > mean_redness(0.6) + 20


def test_demo_lora_draws_checks_and_at_weight_zero_changes_nothing(state):
    from modules.training.judge import judge_concepts

    prompt = "a large red circle on a blue checkered background, center"
    plain = generate(state, prompt, seed=0)
    assert np.array_equal(generate(state, prompt + " <lora:demo-checkered:0>", seed=0), plain)
    checked = [judge_concepts(generate(state, prompt + " <lora:demo-checkered:1>", seed=s)).pattern for s in range(4)]
    assert checked.count("checkered") >= 3, checked
    assert judge_concepts(plain).pattern == "plain"


def test_demo_embedding_teaches_a_new_word_for_black(state):
    assert "midnight" in state.networks.embeddings()
    with_word = [judge(generate(state, "a large red circle on a midnight background", seed=s)) for s in range(3)]
    assert [j.background for j in with_word] == ["black"] * 3
