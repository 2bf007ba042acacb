"""img2img / inpainting image helpers: what a user sees of resize modes, masks, only-masked crops and fills."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from modules.processing import image_ops as ops
from modules.processing.latent_preview import LatentPreviewer

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _array(image):
    return np.asarray(image).astype(int)


def _noise_image(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _box_mask(size, box):
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


# ----------------------------------------------------------------------------------------------- resize modes

@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("source", [(300, 200), (200, 300), (64, 64), (17, 90)])
def test_every_resize_mode_gives_the_requested_size(mode, source):
    out = ops.resize_image(mode, Image.new("RGB", source, (10, 20, 30)), 128, 96)
    assert out.size == (128, 96)


def test_just_resize_stretches_the_whole_picture_and_latent_mode_is_the_same_for_pixels():
    source = Image.new("RGB", (300, 100), GREEN)
    source.paste(Image.new("RGB", (100, 100), RED), (0, 0))
    out = ops.resize_image(0, source, 100, 100)
    assert _array(out)[50, 5].tolist() == list(RED)  # the red left third is still there, squeezed
    assert np.array_equal(_array(ops.resize_image(3, source, 100, 100)), _array(out))


def test_crop_and_resize_keeps_the_centre_and_cuts_the_sides():
    source = Image.new("RGB", (600, 200), GREEN)  # thirds: red | green | blue
    source.paste(Image.new("RGB", (200, 200), RED), (0, 0))
    source.paste(Image.new("RGB", (200, 200), BLUE), (400, 0))
    out = _array(ops.resize_image(1, source, 100, 100))  # scaled to 300x100, the middle 100 columns kept
    assert (out[:, 3:-3] == GREEN).all()
    assert out[..., 1].min() > 150 and out[..., 0].max() < 100 and out[..., 2].max() < 100


def test_resize_and_fill_fits_the_picture_and_stretches_its_edge_rows_into_the_bands():
    wide = Image.new("RGB", (100, 50), RED)
    wide.paste(Image.new("RGB", (100, 1), BLUE), (0, 0))  # top row
    wide.paste(Image.new("RGB", (100, 1), GREEN), (0, 49))  # bottom row
    out = _array(ops.resize_image(2, wide, 100, 100))
    assert (out[:25] == BLUE).all() and (out[75:] == GREEN).all()
    assert (out[26:74] == RED).all()

    tall = Image.new("RGB", (50, 100), RED)
    tall.paste(Image.new("RGB", (1, 100), BLUE), (0, 0))
    tall.paste(Image.new("RGB", (1, 100), GREEN), (49, 0))
    out = _array(ops.resize_image(2, tall, 100, 100))
    assert (out[:, :25] == BLUE).all() and (out[:, 75:] == GREEN).all()
    assert (out[:, 26:74] == RED).all()


def test_unknown_resize_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="resize mode"):
        ops.resize_image(4, Image.new("RGB", (8, 8)), 8, 8)


# ------------------------------------------------------------------------------------------------------ masks

def test_mask_from_alpha_luminance_and_inverted():
    painted = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    painted.paste((255, 255, 255, 255), (8, 8, 16, 16))
    mask = ops.prepare_mask(painted)
    assert mask.mode == "L" and mask.getbbox() == (8, 8, 16, 16)
    assert _array(mask)[10, 10] == 255 and _array(mask)[0, 0] == 0

    grey = _box_mask((32, 32), (4, 4, 11, 11)).convert("RGB")
    assert ops.prepare_mask(grey).getbbox() == (4, 4, 12, 12)
    inverted = _array(ops.prepare_mask(grey, invert=True))
    assert inverted[6, 6] == 0 and inverted[20, 20] == 255


def test_mask_blur_widens_the_mask_in_both_directions():
    sharp = _box_mask((64, 64), (20, 24, 43, 39))
    blurred = ops.prepare_mask(sharp, blur=4)
    x1, y1, x2, y2 = blurred.getbbox()
    assert x1 < 20 and y1 < 24 and x2 > 44 and y2 > 40
    a = _array(blurred)
    assert (a > 0).sum() > (_array(sharp) > 0).sum()
    assert a[31, 31] > 200 and a[0, 0] == 0


# ---------------------------------------------------------------------------------------- only masked inpaint

def test_crop_region_is_the_masked_box_plus_padding_clamped_to_the_image():
    mask = _box_mask((100, 80), (30, 40, 49, 59))
    assert ops.masked_crop_region(mask, 0) == (30, 40, 50, 60)
    assert ops.masked_crop_region(mask, 10) == (20, 30, 60, 70)
    assert ops.masked_crop_region(mask, 45) == (0, 0, 95, 80)
    assert ops.masked_crop_region(Image.new("L", (100, 80), 0), 32) is None


@pytest.mark.parametrize("box, size, image", [
    ((40, 40, 60, 100), (512, 512), (200, 200)),  # tall box -> widened
    ((10, 50, 110, 70), (512, 256), (200, 200)),  # wide box -> heightened
    ((0, 0, 30, 30), (768, 512), (200, 200)),  # at the corner -> shifted back inside
    ((180, 150, 200, 200), (256, 512), (200, 200)),  # at the far corner
])
def test_expanded_crop_has_the_processing_aspect_and_holds_the_masked_box(box, size, image):
    x1, y1, x2, y2 = ops.expand_to_aspect(box, *size, *image)
    assert 0 <= x1 and 0 <= y1 and x2 <= image[0] and y2 <= image[1]
    assert x1 <= box[0] and y1 <= box[1] and x2 >= box[2] and y2 >= box[3]
    assert abs((x2 - x1) / (y2 - y1) - size[0] / size[1]) < 0.05


def test_expanded_crop_is_clipped_when_the_image_is_too_small_for_the_aspect():
    assert ops.expand_to_aspect((10, 0, 90, 40), 512, 128, 100, 100) == (0, 0, 100, 40)


def test_paste_back_changes_nothing_outside_the_mask():
    original = _noise_image(120, 90, seed=1)
    mask = ops.prepare_mask(_box_mask(original.size, (35, 25, 80, 60)), blur=3)
    box = ops.expand_to_aspect(ops.masked_crop_region(mask, 8), 64, 64, *original.size)
    generated = _noise_image(64, 64, seed=2)
    out, orig, m = _array(ops.paste_back(original, generated, box, mask)), _array(original), _array(mask)
    assert out.shape == orig.shape
    assert np.array_equal(out[m == 0], orig[m == 0])  # bit-identical outside the (blurred) mask
    x1, y1, x2, y2 = box
    crop = _array(generated.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS))
    inside = m[y1:y2, x1:x2] == 255
    assert inside.any() and np.array_equal(out[y1:y2, x1:x2][inside], crop[inside])
    blend = (m > 0) & (m < 255)
    assert blend.any() and not np.array_equal(out[blend], orig[blend])


def test_overlay_keeps_unmasked_pixels_and_takes_masked_ones_from_the_result():
    original, generated = _noise_image(50, 40, seed=3), _noise_image(50, 40, seed=4)
    mask = Image.fromarray(np.tile(np.linspace(0, 255, 50).astype(np.uint8), (40, 1)), "L")
    out, m = _array(ops.apply_overlay(original, generated, mask)), _array(mask)
    assert np.array_equal(out[m == 0], _array(original)[m == 0])
    assert np.array_equal(out[m == 255], _array(generated)[m == 255])
    middle = out[:, 25]
    assert np.abs(middle - (_array(original)[:, 25] + _array(generated)[:, 25]) / 2).max() <= 3


def test_fill_smears_the_surrounding_colours_into_the_hole_and_keeps_the_rest():
    image = Image.new("RGB", (128, 128), RED)
    image.paste(Image.new("RGB", (128, 64), BLUE), (0, 64))  # red top half, blue bottom half
    image.paste(Image.new("RGB", (30, 30), (255, 255, 255)), (49, 49))  # something to paint over
    mask = _box_mask(image.size, (44, 44, 83, 83))
    out = ops.fill_masked(image, mask)
    a, m = _array(out), _array(mask)
    assert np.array_equal(a[m == 0], _array(image)[m == 0])
    assert a[46, 64, 0] > a[46, 64, 2] + 100  # near the red side: red
    assert a[81, 64, 2] > a[81, 64, 0] + 100  # near the blue side: blue
    assert (a[m == 255].min(axis=1) < 100).all()  # the white square is gone
    assert np.array_equal(_array(ops.fill_masked(image, mask)), a)  # deterministic

    flat = Image.new("RGB", (64, 64), (30, 160, 90))
    filled = _array(ops.fill_masked(flat, _box_mask(flat.size, (10, 10, 50, 50))))
    assert np.abs(filled - (30, 160, 90)).max() <= 1


# ---------------------------------------------------------------------------------------------------- tensors

def test_pil_tensor_round_trip_is_exact_and_in_minus_one_to_one():
    image = _noise_image(24, 16, seed=5)
    x = ops.pil_to_tensor(image)
    assert x.shape == (1, 3, 16, 24) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert ops.pil_to_tensor(Image.new("RGB", (2, 2), (0, 255, 0)))[0, :, 0, 0].tolist() == [-1, 1, -1]
    back = ops.tensor_to_pils(torch.cat([x, x.flip(-1)]).half())
    assert len(back) == 2 and np.array_equal(_array(back[0]), _array(image))
    out_of_range = ops.tensor_to_pils(torch.full((1, 3, 2, 2), 3.0))[0]
    assert _array(out_of_range).min() == 255


def test_latent_mask_marks_the_masked_cells():
    mask = _box_mask((64, 48), (32, 0, 63, 23))  # right half of the top half
    latent = ops.mask_to_latent(mask, 6, 8)
    assert latent.shape == (1, 1, 6, 8) and latent.dtype == torch.float32
    assert set(latent.unique().tolist()) == {0.0, 1.0}
    assert latent[0, 0, 0, 7] == 1 and latent[0, 0, 0, 0] == 0 and latent[0, 0, 5, 7] == 0
    soft = ops.mask_to_latent(ops.prepare_mask(mask, blur=6), 6, 8, binary=False)
    assert ((soft > 0.05) & (soft < 0.95)).any() and soft.min() >= 0 and soft.max() <= 1


@pytest.mark.parametrize("mode", list(ops.LATENT_UPSCALE_MODES))
def test_latent_upscale_reaches_the_latent_size_of_the_target(mode):
    latents = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    up = ops.latent_upscale(latents, 192, 128, mode)
    assert up.shape == (2, 4, 16, 24)
    assert ops.latent_upscale(latents, 48, 32, mode).shape == (2, 4, 4, 6)
    if "nearest" in mode:
        assert set(up.flatten().tolist()) <= set(latents.flatten().tolist())


def test_antialiased_latent_modes_differ_when_scaling_down():
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    plain = ops.latent_upscale(latents, 64, 64, "Latent")
    smooth = ops.latent_upscale(latents, 64, 64, "Latent (antialiased)")
    assert smooth.std() < plain.std() * 0.8  # antialias averages all the cells it covers
    with pytest.raises(ValueError, match="latent upscale mode"):
        ops.latent_upscale(latents, 64, 64, "Lanczos")


# ---------------------------------------------------------------------------------------------- live preview

class AffineVAE(torch.nn.Module):
    """A VAE with the AutoencoderKL interface whose decoder is a known affine map per 8x8 cell: the previewer
    must recover it exactly. Its encoder has a non-linear fourth channel so fitted latents span all 4 dims."""

    config = SimpleNamespace(scaling_factor=0.18215)

    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Parameter(torch.tensor([[0.5, -1.0, 0.3], [1.2, 0.4, -0.7], [-0.3, 0.8, 0.9]]))
        self.unmix = torch.tensor([[0.6, 0.2, -0.1, 0.3], [-0.4, 0.5, 0.2, -0.2], [0.1, -0.3, 0.7, 0.4]])
        self.offset = torch.tensor([0.05, -0.1, 0.2])

    def encode(self, x):
        cells = torch.nn.functional.avg_pool2d(x, 8)
        linear = torch.einsum("kc,bchw->bkhw", self.mix, cells)
        latents = torch.cat([linear, (cells[:, :1] * cells[:, 1:2])], dim=1)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=latents))

    def decode(self, z):
        rgb = torch.einsum("kc,bchw->bkhw", self.unmix, z) + self.offset.view(1, 3, 1, 1)
        return SimpleNamespace(sample=torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest"))


def test_preview_reproduces_the_decoders_colours():
    vae = AffineVAE()
    previewer = LatentPreviewer(vae)
    latents = torch.randn(3, 4, 5, 7, generator=torch.Generator().manual_seed(2)) * 0.15  # scaled latents
    with torch.no_grad():
        decoded = vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)
    cells = torch.nn.functional.avg_pool2d(decoded, 8)
    error = (previewer.to_rgb(latents) - cells).abs().max()
    baseline = (cells - cells.mean(dim=(0, 2, 3), keepdim=True)).abs().max()
    assert error < 1e-3 < baseline
    images = previewer.preview(latents)
    assert len(images) == 3 and images[0].size == (56, 40)
    expected = ops.tensor_to_pils(decoded)
    assert max(np.abs(_array(a) - _array(b)).max() for a, b in zip(images, expected)) <= 1


def test_preview_fits_a_real_autoencoder_kl():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[32, 32, 32, 32], layers_per_block=1, latent_channels=4,
                        norm_num_groups=32, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, sample_size=64).eval()
    previewer = LatentPreviewer(vae)
    assert previewer.weights.shape == (4, 3) and torch.isfinite(previewer.weights).all()
    images = previewer.preview(torch.randn(2, 4, 6, 4))
    assert [im.size for im in images] == [(32, 48), (32, 48)] and images[0].mode == "RGB"
