"""Infotext: A1111's layout, parsing real A1111/Forge strings, and embedding in PNG/JPEG/WebP atomically."""

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from modules.image_io import (atomic_write, decode_user_comment, encode_user_comment, read_infotext,
                              read_infotext_file, save_image)
from modules.infotext import build_infotext, infotext_to_params, parse_infotext, quote, split_sampler_name

# --- writing --------------------------------------------------------------------------------------------

def test_layout_key_order_and_quoting():
    params = {
        "Version": "v1.0", "Lora hashes": "detail: 0123456789ab, style: ba9876543210", "Hires upscale": 2,
        "Clip skip": 2, "Model": "my model", "Size": (512, 768), "Seed": 1234, "CFG scale": 7.5,
        "Schedule type": "Karras", "Sampler": "DPM++ 2M", "Steps": 20, "Model hash": "0123456789",
        "Denoising strength": 0.7, "VAE": None, "Hires upscaler": "Latent (nearest-exact)",
    }
    assert build_infotext("a cat,\n(sitting:1.2)", "ugly", params) == (
        "a cat,\n(sitting:1.2)\n"
        "Negative prompt: ugly\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1234, Size: 512x768, "
        "Model hash: 0123456789, Model: my model, Denoising strength: 0.7, Clip skip: 2, "
        'Lora hashes: "detail: 0123456789ab, style: ba9876543210", Hires upscale: 2, '
        "Hires upscaler: Latent (nearest-exact), Version: v1.0")


def test_omitted_values():
    text = build_infotext("p", "", {"Steps": 4, "Clip skip": 1, "Seed": 1, "Size": "64x64", "VAE hash": None})
    assert text == "p\nSteps: 4, Seed: 1, Size: 64x64"


def test_a_value_equal_to_its_key_is_a_bare_flag():
    assert build_infotext("p", "", {"Steps": 1, "Seed": 1, "NGMS": "NGMS"}) == "p\nSteps: 1, Seed: 1, NGMS"


@pytest.mark.parametrize(("value", "written"), [
    (7, "7"), ("Euler a", "Euler a"), ("a, b", '"a, b"'), ("x: 1", '"x: 1"'), ('say "hi"\nnow', '"say \\"hi\\"\\nnow"'),
    ("é, 世界", '"é, 世界"'),
])
def test_quote(value, written):
    assert quote(value) == written


# --- parsing --------------------------------------------------------------------------------------------

def test_round_trip():
    params = {"Steps": 30, "Sampler": "Euler a", "Schedule type": "Exponential", "CFG scale": 6.5, "Seed": 42,
              "Size": (640, 448), "Model hash": "abcdef0123", "Model": "m", "Denoising strength": 0.35,
              "Clip skip": 2, "Hires upscale": 1.5, "Hires steps": 12, "Hires upscaler": "Latent",
              "TI hashes": "emb: 0123456789ab", "Version": "v0.1"}
    parsed = parse_infotext(build_infotext("a (cat:1.2), [dog|fox]\nsecond line", "bad,\nworse", params))
    assert parsed["Prompt"] == "a (cat:1.2), [dog|fox]\nsecond line"
    assert parsed["Negative prompt"] == "bad,\nworse"
    assert parsed["TI hashes"] == "emb: 0123456789ab"
    typed = infotext_to_params(parsed)
    assert {k: typed[k] for k in ("steps", "sampler_name", "scheduler", "cfg_scale", "seed", "width", "height",
                                  "sd_model_hash", "sd_model_name", "denoising_strength", "clip_skip", "hr_scale",
                                  "hr_second_pass_steps", "hr_upscaler", "enable_hr")} == {
        "steps": 30, "sampler_name": "Euler a", "scheduler": "Exponential", "cfg_scale": 6.5, "seed": 42,
        "width": 640, "height": 448, "sd_model_hash": "abcdef0123", "sd_model_name": "m",
        "denoising_strength": 0.35, "clip_skip": 2, "hr_scale": 1.5, "hr_second_pass_steps": 12,
        "hr_upscaler": "Latent", "enable_hr": True}


LINE = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=30).map(str.strip)


@given(st.lists(LINE.filter(bool), min_size=1, max_size=3), st.lists(LINE.filter(bool), max_size=3),
       st.integers(min_value=0, max_value=2**32 - 1), st.text(max_size=20).map(str.strip))
def test_round_trip_any_text(prompt_lines, negative_lines, seed, model):
    prompt = "\n".join(prompt_lines)
    negative = "\n".join(negative_lines)
    assume(not any(line.startswith("Negative prompt:") for line in prompt_lines))  # ambiguous: see the next test
    text = build_infotext(prompt, negative, {"Steps": 20, "Seed": seed, "Model": model, "Size": (8, 16)})
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    assert parsed["Seed"] == str(seed)
    assert parsed["Model"] == model
    assert (parsed["Size-1"], parsed["Size-2"]) == ("8", "16")


@pytest.mark.parametrize("prompt, read_prompt", [("Negative prompt: x", ""), ("a cat\nNegative prompt: x", "a cat")])
def test_a_prompt_line_that_starts_like_the_negative_one_is_read_as_it_as_in_a1111(prompt, read_prompt):
    parsed = parse_infotext(build_infotext(prompt, "y", {"Steps": 20, "Seed": 3, "Size": (8, 16)}))
    assert (parsed["Prompt"], parsed["Negative prompt"], parsed["Seed"]) == (read_prompt, "x\ny", "3")


def test_last_line_needs_three_pairs_to_be_parameters():
    parsed = parse_infotext("a photo\nlighting: soft, mood: calm")
    assert parsed["Prompt"] == "a photo\nlighting: soft, mood: calm"
    assert "Steps" not in parsed


def test_defaults_for_missing_keys():
    parsed = parse_infotext("p\nSteps: 5, Sampler: Euler, Seed: 3")
    assert parsed["Clip skip"] == "1"
    assert parsed["Schedule type"] == "Automatic"
    assert parsed["Hires sampler"] == "Use same sampler"
    assert parsed["RNG"] == "GPU"
    assert parsed["Negative prompt"] == ""


@pytest.mark.parametrize(("sampler", "schedule", "expected"), [
    ("DPM++ 2M Karras", "Automatic", ("DPM++ 2M", "Karras")),
    ("DPM++ 2M SDE Exponential", "Automatic", ("DPM++ 2M SDE", "Exponential")),
    ("Euler a SGM Uniform", "Automatic", ("Euler a", "SGM Uniform")),
    ("DPM++ 2M SGMUniform", "Automatic", ("DPM++ 2M", "SGM Uniform")),
    ("DDIM", "Automatic", ("DDIM", "Automatic")),
    ("DPM++ 2M Karras", "Exponential", ("DPM++ 2M Karras", "Exponential")),
])
def test_old_combined_sampler_names(sampler, schedule, expected):
    assert split_sampler_name(sampler, schedule) == expected


def test_legacy_keys():
    parsed = parse_infotext("p\nSteps: 5, Seed: 3, Size: 1024x1024, First pass size: 0x0, Hypernet: h")
    assert (parsed["Size-1"], parsed["Size-2"], parsed["Hires resize-1"], parsed["Hires resize-2"]) == (
        512, 512, 1024, 1024)
    assert parsed["Prompt"] == "p<hypernet:h:1.0>"


def test_inpainting_fields_become_api_numbers():
    typed = infotext_to_params(parse_infotext(
        "p\nSteps: 5, Seed: 3, Size: 64x64, Denoising strength: 0.5, Mask blur: 4, Masked content: latent noise, "
        "Inpaint area: Only masked, Masked area padding: 16, Mask mode: Inpaint not masked"))
    assert (typed["mask_blur"], typed["inpainting_fill"], typed["inpaint_full_res"],
            typed["inpaint_full_res_padding"], typed["inpainting_mask_invert"], typed["enable_hr"]) == (
        4, 2, True, 16, 1, False)


@given(st.text(max_size=200))
def test_parsing_never_raises(text):
    parsed = parse_infotext(text)
    infotext_to_params(parsed)
    assert isinstance(parsed["Prompt"], str)


# --- real infotexts from public issue threads -------------------------------------------------------------

# AUTOMATIC1111/stable-diffusion-webui#14545 (A1111, excerpt up to the Model key).
A1111_14545 = (
    "[artwork|painting] of girl, (standing), (otaku room, books, game console:1.19), evening, perspective, "
    "brunette, freckles, full shot, (noir:0.8), high detail, highres, 16K, <lora:Colorwater_v4:0.15>, "
    "<lora:sharpen-soften:-0.2>, <lora:add_detail:0.27>\n"
    "Negative prompt: (low quality, worst quality), overexposure, normal quality, grayscale, cropped, text, "
    "signature, username, missing fingers, deformed, bad anatomy, bad_eyes, ugly, sketches, (over saturated), "
    "KHFB, badhandv4, EasyNegativeV2, bad_prompt_version2\n"
    "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 20, Seed: 1198099675, Size: 512x768, Model: OilTeaRev")

# lllyasviel/sd-forge-layerdiffuse#49 (Forge, A1111 format, with extension keys).
FORGE_LAYERDIFFUSE_49 = (
    "((( masterpiece, best quality, ultra-detailed, highres, 8k, cinematic style, (hyperdetailed)))), "
    "((((1girl)))),\ngirl in dress, high quality\n\n"
    "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 5, Seed: 3462804341, Size: 1024x1024, Model hash: cf682fe9f7, "
    "Model: 1-ANIME_XL_AnimaPencilXL_v200, VAE hash: c2af720eca, VAE: sdxl_vae.safetensors, "
    "layerdiffusion_enabled: True, layerdiffusion_method: Only Generate Transparent Image (Attention Injection), "
    "layerdiffusion_weight: 1, layerdiffusion_ending_step: 1, layerdiffusion_fg_image: False, "
    "layerdiffusion_bg_image: False, layerdiffusion_blend_image: False, layerdiffusion_resize_mode: Crop and Resize, "
    "Version: f0.0.17v1.8.0rc-latest-273-gb9705c58")

# AUTOMATIC1111/stable-diffusion-webui#535 (an early A1111 infotext with batch keys).
A1111_535 = ("A [dog:cat:.1] in the [desert:ocean:.1]\n"
             "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1619827430, Size: 512x512, Batch size: 2, Batch pos: 0")

# camenduru/DiffusionAwards#4 (blank lines, keys in an unusual order).
DIFFUSION_AWARDS_4 = (
    "art by (apterus:1.3). An ancient mouse statue overgrown with vegetation and flowers. Amazing anatomy, solid "
    "material, cracks, granite. (apterus creepy anatomy:1.2)\n\n"
    "Negative prompt: sketch, (worst quality:1.5), (low quality:1.5), (normal quality:1.5), lowres, bad anatomy, "
    "bad hands, ((monochrome)), ((grayscale))\n\n"
    "ENSD: 31337, Size: 768x1024, Seed: 3831278787, Model: Style-Like-DucHaiten_v1.0, Steps: 30, "
    "Sampler: DPM++ 2S a Karras, CFG scale: 8")

# Haoming02/sd-webui-forge-classic#854 (excerpt ending after Size, trailing comma).
FORGE_CLASSIC_854 = (
    "masterpiece, best quality, good quality. kita ikuyo (Bocchi the Rock!), 1girl, anime style, vibrant colors\n"
    "Negative prompt: score_1, score_2, score_3, blurry, worst quality, low quality\n"
    "Steps: 30, Sampler: Euler a, Schedule type: Karras, CFG scale: 5.5, Seed: 2552987643, Size: 1024x1536,")


def _typed(text):
    return infotext_to_params(parse_infotext(text))


def test_real_a1111_14545():
    typed = _typed(A1111_14545)
    assert typed["prompt"].startswith("[artwork|painting] of girl,")
    assert typed["prompt"].endswith("<lora:add_detail:0.27>")
    assert typed["negative_prompt"].endswith("EasyNegativeV2, bad_prompt_version2")
    assert (typed["steps"], typed["sampler_name"], typed["scheduler"], typed["cfg_scale"], typed["seed"],
            typed["width"], typed["height"], typed["sd_model_name"], typed["clip_skip"]) == (
        25, "DPM++ 2M", "Karras", 20.0, 1198099675, 512, 768, "OilTeaRev", 1)


def test_real_forge_layerdiffuse_49():
    parsed = parse_infotext(FORGE_LAYERDIFFUSE_49)
    # A1111 joins the blank line before the parameters onto the prompt.
    assert parsed["Prompt"] == ("((( masterpiece, best quality, ultra-detailed, highres, 8k, cinematic style, "
                                "(hyperdetailed)))), ((((1girl)))),\ngirl in dress, high quality\n")
    assert parsed["Negative prompt"] == ""
    assert parsed["layerdiffusion_method"] == "Only Generate Transparent Image (Attention Injection)"
    assert parsed["Version"] == "f0.0.17v1.8.0rc-latest-273-gb9705c58"
    typed = infotext_to_params(parsed)
    assert (typed["seed"], typed["width"], typed["sd_model_hash"], typed["sd_vae_hash"], typed["sd_vae_name"],
            typed["sampler_name"], typed["scheduler"]) == (
        3462804341, 1024, "cf682fe9f7", "c2af720eca", "sdxl_vae.safetensors", "DPM++ 2M", "Karras")


def test_real_a1111_535():
    parsed = parse_infotext(A1111_535)
    assert parsed["Prompt"] == "A [dog:cat:.1] in the [desert:ocean:.1]"
    assert (parsed["Batch size"], parsed["Batch pos"]) == ("2", "0")
    typed = infotext_to_params(parsed)
    assert (typed["steps"], typed["sampler_name"], typed["scheduler"], typed["cfg_scale"], typed["width"]) == (
        20, "Euler a", "Automatic", 7.0, 512)


def test_real_diffusion_awards_4():
    parsed = parse_infotext(DIFFUSION_AWARDS_4)
    assert parsed["Prompt"].endswith("(apterus creepy anatomy:1.2)\n")
    assert parsed["Negative prompt"] == ("sketch, (worst quality:1.5), (low quality:1.5), (normal quality:1.5), "
                                         "lowres, bad anatomy, bad hands, ((monochrome)), ((grayscale))\n")
    assert parsed["ENSD"] == "31337"
    typed = infotext_to_params(parsed)
    assert (typed["width"], typed["height"], typed["seed"], typed["steps"], typed["sampler_name"],
            typed["scheduler"], typed["cfg_scale"]) == (768, 1024, 3831278787, 30, "DPM++ 2S a", "Karras", 8.0)


def test_real_forge_classic_854():
    typed = _typed(FORGE_CLASSIC_854)
    assert typed["negative_prompt"] == "score_1, score_2, score_3, blurry, worst quality, low quality"
    assert (typed["sampler_name"], typed["scheduler"], typed["cfg_scale"], typed["seed"], typed["width"],
            typed["height"]) == ("Euler a", "Karras", 5.5, 2552987643, 1024, 1536)


def test_a1111_takes_a_tag_heavy_last_line_for_parameters():
    # AUTOMATIC1111/stable-diffusion-webui#16876: a prompt-only text whose last line holds three lora tags
    # yields three "key: value" matches, so A1111 drops that line from the prompt. We keep A1111's reading.
    text = ("promptDescription1, promptDescription2,\n"
            "<lora: loraname1 v1:1>, <lora: loraname2 v1:1>, <lora: loraname3 v1:1>, extraDescription, etc")
    assert parse_infotext(text)["Prompt"] == "promptDescription1, promptDescription2,"


# --- images ---------------------------------------------------------------------------------------------

INFOTEXT = build_infotext("un chat, 猫, \"quoted\"", "flou", {"Steps": 20, "Seed": 7, "Size": (16, 8)})


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_images_carry_the_infotext(tmp_path, suffix):
    path = save_image(Image.new("RGBA", (16, 8), (10, 200, 30, 255)), tmp_path / f"00001-7{suffix}",
                      infotext=INFOTEXT)
    assert read_infotext_file(path) == INFOTEXT
    with Image.open(path) as image:
        assert image.size == (16, 8)
        if suffix == ".png":
            assert image.info["parameters"] == INFOTEXT
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"00001-7{suffix}"]


def test_latin1_png_uses_a_plain_text_chunk(tmp_path):
    path = save_image(Image.new("RGB", (4, 4)), tmp_path / "a.png", infotext="café\nSteps: 1, Seed: 1, Size: 4x4")
    assert b"tEXtparameters\x00caf\xe9" in path.read_bytes()


def test_image_without_infotext(tmp_path):
    path = save_image(Image.new("RGB", (4, 4)), tmp_path / "a.jpg")
    assert read_infotext_file(path) is None
    assert read_infotext(Image.new("RGB", (4, 4))) is None


def test_failed_save_leaves_the_old_file(tmp_path):
    path = save_image(Image.new("RGB", (4, 4)), tmp_path / "a.jpg", infotext="old")
    before = path.read_bytes()
    with pytest.raises(ValueError):
        save_image(Image.new("RGB", (4, 4)), path, infotext="x" * 40000)

    def crash(handle):
        handle.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg"]


@pytest.mark.parametrize(("data", "expected"), [
    (encode_user_comment("Steps: 20, ünï"), "Steps: 20, ünï"),                      # what we (and A1111) write
    (b"UNICODE\x00" + "Steps: 20, ünï".encode("utf-16-le"), "Steps: 20, ünï"),     # little-endian writers
    (b"UNICODE\x00" + "Steps: 20, ünï".encode("utf-16"), "Steps: 20, ünï"),        # with a byte order mark
    (b"ASCII\x00\x00\x00Steps: 20, x\x00", "Steps: 20, x"),
    ("Steps: 20, ünï".encode("utf-8"), "Steps: 20, ünï"),                          # no prefix at all
])
def test_user_comment_encodings(data, expected):
    assert decode_user_comment(data) == expected
