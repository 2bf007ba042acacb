"""The core settings shown in the UI: their sections, labels and components (Settings tab and quick settings)."""
from __future__ import annotations

from dataclasses import fields

import gradio as gr

from modules.settings import CHOICES, Settings
from webui.context import UiContext

SECTIONS: dict[str, dict[str, str]] = {
    "Saving images": {
        "samples_save": "Always save all generated images",
        "samples_format": "File format for images",
        "grid_save": "Always save all generated image grids",
        "grid_format": "File format for grids",
        "save_txt": "Create a text file with the generation parameters next to every image",
    },
    "Paths": {
        "outdir_samples": "Output directory for images; if empty, the three directories below are used",
        "outdir_txt2img_samples": "Output directory for txt2img images",
        "outdir_img2img_samples": "Output directory for img2img images",
        "outdir_extras_samples": "Output directory for images from the Extras tab",
        "outdir_grids": "Output directory for grids; if empty, the two directories below are used",
        "outdir_txt2img_grids": "Output directory for txt2img grids",
        "outdir_img2img_grids": "Output directory for img2img grids",
        "outdir_save": "Directory for saving images using the Save button",
    },
    "Stable Diffusion": {
        "sd_model_checkpoint": "Stable Diffusion checkpoint",
        "sd_vae": "SD VAE",
        "vae_tile_threshold": "VAE in tiles (bounded memory) above this many pixels, width × height (1048576 = "
                              "1024×1024; 0 = at every size)",
        "sd_checkpoints_limit": "Checkpoints to keep in RAM",
        "CLIP_stop_at_last_layers": "Clip skip",
        "emphasis": "Emphasis mode",
    },
    "Sampler parameters": {
        "randn_source": "Random number generator source",
        "eta_noise_seed_delta": "Eta noise seed delta (ENSD)",
        "eta_ancestral": "Eta for ancestral and SDE samplers (noise added per step; 0 = none)",
        "eta_ddim": "Eta for DDIM (0 = deterministic)",
        "img2img_fix_steps": "img2img: do exactly the number of steps the slider says",
        "initial_noise_multiplier": "Noise multiplier for img2img",
        "inpainting_mask_weight": "Inpainting conditioning mask strength",
        "s_min_uncond": "Negative Guidance minimum sigma (NGMS): below it, skip the negative prompt on every other "
                        "step (faster, a little less guidance at the end); 0 = off",
        "s_min_uncond_all": "NGMS: skip the negative prompt on every step below that sigma, not every other one",
    },
    "Optimizations": {
        "token_merging_ratio": "Token merging ratio: share of the latent cells merged before the UNet's "
                               "full-resolution self-attentions (faster at 512² and up; 0 = off)",
        "token_merging_ratio_img2img": "Token merging ratio for img2img (0 = the ratio above)",
        "token_merging_ratio_hr": "Token merging ratio for the hires fix pass (0 = the ratio above)",
    },
    "Upscaling": {
        "ESRGAN_tile": "Tile size for model upscalers (input pixels; 0 = no tiling)",
        "ESRGAN_tile_overlap": "Tile overlap for model upscalers (pixels; more = less visible seams, slower)",
    },
    "Live previews": {
        "live_previews_enable": "Show live previews of the image being made",
        "show_progress_every_n_steps": "Live preview every N sampling steps",
        "show_progress_type": "Live preview display mode (Auto: a VAE decode up to 128×128, a cheap approximation "
                              "above)",
    },
    "Limits of a request": {
        "limit_images_per_request": "Most images one request may make (batch count × batch size × X/Y/Z cells)",
        "limit_upload_pixels": "Most pixels of one uploaded image (16777216 = 4096×4096)",
        "limit_upload_pixels_total": "Most pixels of all the images uploaded with one request",
    },
    "User interface": {
        "quicksettings_list": "Quicksettings list: settings shown in the bar above the tabs (restart to apply)",
    },
}

# The Paths settings: kind given to Settings.output_dir, shown as the placeholder of an empty field.
PATH_KINDS = {"outdir_txt2img_samples": "txt2img", "outdir_img2img_samples": "img2img",
              "outdir_extras_samples": "extras", "outdir_txt2img_grids": "txt2img-grids",
              "outdir_img2img_grids": "img2img-grids", "outdir_save": "save"}

LABELS = {name: label for section in SECTIONS.values() for name, label in section.items()}
KNOWN = {f.name for f in fields(Settings)}


def ui_value(value):
    """A setting's value as its component holds it (lists, not tuples)."""
    return list(value) if isinstance(value, tuple) else value


def component(ctx: UiContext, name: str, elem_id: str, label: str | None = None, **extra):
    """The input for core setting ``name`` (dropdowns for choices, checkpoints and VAEs; by type otherwise)."""
    label = label or LABELS.get(name, name)
    elem_id = ctx.tip(elem_id, f"{label} ({name})")
    state = ctx.state
    default = getattr(Settings(), name)
    common = dict(label=label, elem_id=elem_id, **extra)
    if name == "sd_model_checkpoint":
        return gr.Dropdown([i.filename for i in state.checkpoints.items()], allow_custom_value=True, **common)
    if name == "sd_vae":
        return gr.Dropdown(state.vaes.choices(), **common)
    if name == "quicksettings_list":
        return gr.Dropdown(sorted(KNOWN - {name}), multiselect=True, **common)
    if name in CHOICES:
        return gr.Dropdown(list(CHOICES[name]), **common)
    if isinstance(default, bool):
        return gr.Checkbox(**common)
    if isinstance(default, (int, float)):
        return gr.Number(precision=0 if isinstance(default, int) else None, **common)
    if name in PATH_KINDS or name in ("outdir_samples", "outdir_grids"):
        kind = PATH_KINDS.get(name)
        hint = str(Settings().output_dir(kind, state.options.data_dir)) if kind else "empty: see below"
        return gr.Textbox(placeholder=hint, **common)
    return gr.Textbox(**common)
