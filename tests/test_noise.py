"""Seeds and noise: CPU reproducibility, batch independence, variation seeds, resize-seed-from."""

import math
import random
import warnings

import pytest
import torch

from modules.sampling.noise import (
    MAX_SEED,
    NoiseSettings,
    SeededNoise,
    batch_seeds,
    paste_centered,
    resolve_seed,
    slerp,
)

SHAPE = (4, 8, 12)


def noise(seeds, **kwargs):
    return SeededNoise(NoiseSettings(SHAPE, seeds, **kwargs))


def test_initial_noise_is_a_cpu_generator_seeded_with_the_seed():
    expected = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(1234))
    torch.testing.assert_close(noise([1234]).initial()[0], expected, rtol=0, atol=0)


def test_each_image_of_a_batch_equals_a_single_run_with_its_seed():
    batch = noise([100, 101, 102])
    first, step1, step2 = batch.initial(), batch(14.6, 10.0), batch(10.0, 5.0)
    assert first.shape == (3, *SHAPE)
    for i, seed in enumerate([100, 101, 102]):
        single = noise([seed])
        torch.testing.assert_close(single.initial()[0], first[i], rtol=0, atol=0)
        torch.testing.assert_close(single(14.6, 10.0)[0], step1[i], rtol=0, atol=0)
        torch.testing.assert_close(single(10.0, 5.0)[0], step2[i], rtol=0, atol=0)


def test_per_step_noise_is_fresh_every_call():
    source = noise([7])
    draws = [source.initial(), source(1.0, 0.5), source(0.5, 0.1)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.allclose(draws[a], draws[b])
    assert abs(draws[1].std().item() - 1) < 0.2


def test_same_seed_gives_same_noise_and_other_seed_differs():
    torch.testing.assert_close(noise([5]).initial(), noise([5]).initial(), rtol=0, atol=0)
    assert not torch.allclose(noise([5]).initial(), noise([6]).initial())


def test_device_and_dtype_of_the_result():
    result = SeededNoise(NoiseSettings(SHAPE, [3], dtype=torch.float16, source="device")).initial()
    assert result.dtype == torch.float16 and result.device.type == "cpu"
    torch.testing.assert_close(result, noise([3]).initial().half(), rtol=0, atol=0)  # device == cpu here


def test_eta_noise_seed_delta_reseeds_the_per_step_noise():
    source = noise([10], eta_noise_seed_delta=31337)
    plain = noise([10]).initial()
    torch.testing.assert_close(source.initial(), plain, rtol=0, atol=0)
    expected = torch.randn(SHAPE, generator=torch.Generator().manual_seed(10 + 31337))
    torch.testing.assert_close(source(1.0, 0.5)[0], expected, rtol=0, atol=0)


def nth_draw(seed, n):
    """The n-th (from 1) standard normal draw of a CPU generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=generator) for _ in range(n)][-1]


def test_rows_draw_only_for_the_flagged_images():
    source = noise([20, 21])
    source.initial()
    partial, following = source(1.0, 0.5, rows=[False, True]), source(0.5, 0.1)
    assert partial[0].abs().sum() == 0
    torch.testing.assert_close(partial[1], nth_draw(21, 2), rtol=0, atol=0)
    torch.testing.assert_close(following[0], nth_draw(20, 2), rtol=0, atol=0)  # image 0's generator waited
    torch.testing.assert_close(following[1], nth_draw(21, 3), rtol=0, atol=0)


# --- Brownian-tree noise (SDE samplers) ------------------------------------------------------------------------

SIGMAS = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.3, 0.03, 0.0])


def brownian(seeds):
    return noise(seeds).brownian(SIGMAS)


def test_brownian_noise_is_one_path_per_seed():
    a, b = brownian([3]), brownian([3])
    torch.testing.assert_close(a(7.0, 3.0), b(7.0, 3.0), rtol=0, atol=0)
    torch.testing.assert_close(a(7.0, 3.0), a(7.0, 3.0), rtol=0, atol=0)  # a query, not a draw
    assert not torch.allclose(a(7.0, 3.0), brownian([4])(7.0, 3.0))
    batch = brownian([3, 4])(1.0, 0.3)
    torch.testing.assert_close(batch, torch.cat([brownian([3])(1.0, 0.3), brownian([4])(1.0, 0.3)]), rtol=0, atol=0)


def test_brownian_steps_are_increments_of_the_path():
    """Coarse steps are sums of fine ones: (W(c) - W(a)) = (W(b) - W(a)) + (W(c) - W(b)), each normalised by
    sqrt(step); going up is the negative of going down."""
    path = brownian([5])
    coarse = path(7.0, 1.0) * math.sqrt(6.0)
    fine = path(7.0, 3.0) * math.sqrt(4.0) + path(3.0, 1.0) * math.sqrt(2.0)
    torch.testing.assert_close(coarse, fine, rtol=0, atol=1e-5)
    torch.testing.assert_close(path(1.0, 7.0), -path(7.0, 1.0), rtol=0, atol=0)
    steps = torch.cat([path(a, b) for a, b in zip(SIGMAS[:-2].tolist(), SIGMAS[1:-1].tolist())])
    assert abs(steps.mean().item()) < 0.15 and abs(steps.std().item() - 1) < 0.1
    assert abs(torch.corrcoef(torch.stack([steps[0].flatten(), steps[1].flatten()]))[0, 1].item()) < 0.2


def test_brownian_noise_covers_the_positive_sigma_range_without_warnings():
    path = brownian([6])
    assert (path.sigma_min, path.sigma_max) == pytest.approx((0.03, 14.6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchsde warns about queries outside the tree; ours are clamped first
        assert torch.isfinite(path(14.6000001, 0.0299999)).all()
    assert brownian([7]).shape == SHAPE and noise([7]).brownian(torch.tensor([2.0, 0.0])).sigma_min == 2.0


# --- variation seeds -------------------------------------------------------------------------------------------

def test_variation_strength_zero_and_one_are_the_two_seeds():
    torch.testing.assert_close(noise([1], subseeds=[2], subseed_strength=0.0).initial(), noise([1]).initial())
    torch.testing.assert_close(noise([1], subseeds=[2], subseed_strength=1.0).initial(), noise([2]).initial(),
                               rtol=1e-4, atol=1e-4)


def test_variation_is_a_spherical_blend_that_keeps_the_noise_scale():
    low, high = noise([1]).initial()[0], noise([2]).initial()[0]
    mixed = noise([1], subseeds=[2], subseed_strength=0.3).initial()[0]
    torch.testing.assert_close(mixed, slerp(0.3, low, high))
    # unit variance is kept, whereas a linear blend would shrink it to about sqrt(0.7² + 0.3²) = 0.76
    assert abs(mixed.std().item() - 1) < 0.1
    assert (0.7 * low + 0.3 * high).std() < 0.85 * mixed.std()
    # closer to the seed than to the subseed
    assert (mixed - low).norm() < (mixed - high).norm()


def test_variation_in_a_batch_uses_each_images_subseed():
    batch = noise([1, 1], subseeds=[2, 3], subseed_strength=0.5).initial()
    torch.testing.assert_close(batch[1], noise([1], subseeds=[3], subseed_strength=0.5).initial()[0])
    assert not torch.allclose(batch[0], batch[1])


def test_slerp_of_identical_vectors_falls_back_to_linear():
    x = torch.randn(4, 8, 8)
    torch.testing.assert_close(slerp(0.4, x, x), x)


# --- resize seed from ------------------------------------------------------------------------------------------

def test_resize_seed_from_a_smaller_size_pastes_the_old_noise_in_the_centre():
    old = noise([42]).initial()[0]  # 96x64 px -> latent 12x8
    big = SeededNoise(NoiseSettings((4, 16, 20), [42], seed_resize_from=(96, 64))).initial()[0]
    torch.testing.assert_close(big[:, 4:12, 4:16], old, rtol=0, atol=0)
    outside = big.clone()
    outside[:, 4:12, 4:16] = 0
    assert outside.abs().sum() > 0  # the border is other noise


def test_resize_seed_from_a_larger_size_crops_its_centre():
    large = SeededNoise(NoiseSettings((4, 16, 20), [42])).initial()[0]
    small = SeededNoise(NoiseSettings(SHAPE, [42], seed_resize_from=(160, 128))).initial()[0]
    torch.testing.assert_close(small, large[:, 4:12, 4:16], rtol=0, atol=0)


def test_resize_seed_from_the_same_size_or_zero_is_off():
    plain = noise([9]).initial()
    torch.testing.assert_close(noise([9], seed_resize_from=(96, 64)).initial(), plain, rtol=0, atol=0)
    torch.testing.assert_close(noise([9], seed_resize_from=(0, 0)).initial(), plain, rtol=0, atol=0)


def test_paste_centered_odd_offsets():
    target = torch.zeros(1, 5, 5)
    out = paste_centered(target, torch.ones(1, 2, 2))
    assert out[0, 1:3, 1:3].eq(1).all() and out.sum() == 4
    assert target.sum() == 0  # the input is left alone


# --- seeds -----------------------------------------------------------------------------------------------------

def test_resolve_seed():
    assert resolve_seed(1234) == 1234
    seeds = {resolve_seed(-1) for _ in range(20)}
    assert len(seeds) > 15 and all(0 <= s < MAX_SEED for s in seeds)
    assert resolve_seed(-1, random.Random(0)) == resolve_seed(-1, random.Random(0))


def test_batch_seeds_follow_a1111():
    assert batch_seeds(10, 50, 0.0, 3) == ([10, 11, 12], [50, 51, 52])
    assert batch_seeds(10, 50, 0.4, 3) == ([10, 10, 10], [50, 51, 52])


def test_no_seeds_is_an_error():
    with pytest.raises(ValueError, match="seed"):
        SeededNoise(NoiseSettings(SHAPE, []))
