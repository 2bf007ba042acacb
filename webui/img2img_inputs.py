"""img2img's input sub-tabs (img2img, sketch, inpaint, inpaint sketch, inpaint upload, batch) and the image/mask
they give; the Batch sub-tab's folders are run by :mod:`webui.img2img_batch`."""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr
import numpy as np
from PIL import Image

from webui import img2img_batch
from webui.context import UiContext

MODES = ("img2img", "sketch", "inpaint", "inpaint sketch", "inpaint upload", "batch")
INPAINT_MODES = frozenset(MODES[2:5])
BATCH = "batch"


def layers_mask(editor_value: dict | None) -> Image.Image | None:
    """White where any layer of a gr.ImageEditor value was painted (alpha > 0), else black; None if nothing."""
    if not editor_value:
        return None
    layers = [layer for layer in editor_value.get("layers") or [] if layer is not None]
    if not layers:
        return None
    alpha = np.zeros(layers[0].size[::-1], dtype=bool)
    for layer in layers:
        alpha |= np.asarray(layer.convert("RGBA"))[..., 3] > 0
    return Image.fromarray(alpha.astype(np.uint8) * 255, "L") if alpha.any() else None


def upload_mask(image: Image.Image | None) -> Image.Image | None:
    """An uploaded mask (white = repaint) as one channel; transparent pixels count as black."""
    if image is None:
        return None
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("L")


def _editor(label: str, elem_id: str, brush_colors=None):
    brush = gr.Brush(colors=brush_colors or ["#ffffff"], default_size=24, color_mode="defaults")
    return gr.ImageEditor(label=label, type="pil", elem_id=elem_id, brush=brush, height=360,
                          sources=["upload", "clipboard"], layers=True, format="png")


@dataclass
class Img2ImgInputs:
    mode: object
    image: object
    sketch: object
    inpaint: object
    inpaint_sketch: object
    upload_image: object
    upload_mask: object
    batch: img2img_batch.BatchInputs
    resize_by: object = None
    use_scale: object = None
    tabs: dict = field(default_factory=dict)
    tabs_component: object = None

    @property
    def components(self) -> set:
        return {self.mode, self.image, self.sketch, self.inpaint, self.inpaint_sketch, self.upload_image,
                self.upload_mask, self.resize_by, self.use_scale, *self.batch.components}

    def is_batch(self, data: dict) -> bool:
        """Whether the Batch sub-tab is selected (Generate runs the folder, not :meth:`job_inputs`)."""
        return data[self.mode] == BATCH

    def job_inputs(self, data: dict, max_pixels: int) -> dict:
        """``init_images``, ``mask`` (and the size for Resize by) for the selected sub-tab; ValueError if missing or
        larger than ``max_pixels``."""
        mode = data[self.mode]
        mask = None
        if mode == "img2img":
            image = data[self.image]
        elif mode == "sketch":
            image = (data[self.sketch] or {}).get("composite")
        elif mode == "inpaint":
            value = data[self.inpaint] or {}
            image, mask = value.get("background"), layers_mask(value)
        elif mode == "inpaint sketch":
            value = data[self.inpaint_sketch] or {}
            image, mask = value.get("composite"), layers_mask(value)
        else:
            image, mask = data[self.upload_image], upload_mask(data[self.upload_mask])
        if image is None:
            raise ValueError(f"init_images: upload an image in the {mode} tab first")
        if mode in INPAINT_MODES and mask is None:
            raise ValueError("mask: draw or upload a mask (white = repaint) first")
        if image.width * image.height > max_pixels:
            raise ValueError(f"init_images: the {image.width}×{image.height} image has more than {max_pixels} pixels "
                             "(Settings → Limits of a request)")
        image = image.convert("RGB")
        out = {"init_images": [image], "mask": mask}
        if data[self.use_scale]:
            scale = float(data[self.resize_by])
            out["width"] = max(64, int(image.width * scale) // 8 * 8)
            out["height"] = max(64, int(image.height * scale) // 8 * 8)
        return out

    def wire_mode(self, inpaint_group) -> None:
        """Selecting a sub-tab sets the mode and shows the inpaint controls for the inpaint modes and Batch (whose
        mask folder makes it an inpaint batch)."""
        for mode, tab in self.tabs.items():
            tab.select(lambda m=mode: (m, gr.update(visible=m in INPAINT_MODES or m == BATCH)), None,
                       [self.mode, inpaint_group], queue=False, show_progress="hidden")


def build(ctx: UiContext) -> Img2ImgInputs:
    """The sub-tabs; the selected one decides the input image and mask."""
    mode = gr.State("img2img")
    tabs = {}
    with gr.Tabs(elem_id="img2img_mode_tabs") as tabs_component:
        with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as tabs["img2img"]:
            image = gr.Image(label="Image for img2img", type="pil", height=360, sources=["upload", "clipboard"],
                             elem_id=ctx.tip("img2img_image", "The input image; drop or paste one here"),
                             format="png")
        with gr.Tab("Sketch", id="sketch", elem_id="img2img_sketch_tab") as tabs["sketch"]:
            sketch = _editor("Sketch", ctx.tip("img2img_sketch", "Draw over the image; the drawing is the input"),
                             ["#ffffff", "#000000", "#ff0000", "#00aa00", "#0000ff"])
        with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as tabs["inpaint"]:
            inpaint = _editor("Image for inpainting with mask",
                              ctx.tip("img2img_inpaint", "Paint over the areas to repaint (white brush)"))
        with gr.Tab("Inpaint sketch", id="inpaint sketch",
                    elem_id="img2img_inpaint_sketch_tab") as tabs["inpaint sketch"]:
            inpaint_sketch = _editor("Inpaint sketch", ctx.tip("img2img_inpaint_sketch", "Painted colours are "
                                     "the new content, painted areas are the mask"),
                                     ["#ffffff", "#000000", "#ff0000", "#00aa00", "#0000ff"])
        with gr.Tab("Inpaint upload", id="inpaint upload",
                    elem_id="img2img_inpaint_upload_tab") as tabs["inpaint upload"]:
            with gr.Row():
                upload_image = gr.Image(label="Image", type="pil", height=300, sources=["upload", "clipboard"],
                                        elem_id=ctx.tip("img2img_upload_image", "The image to inpaint"),
                                        format="png")
                mask = gr.Image(label="Mask", type="pil", height=300, sources=["upload", "clipboard"],
                                elem_id=ctx.tip("img2img_upload_mask", "White = repaint, black = keep"),
                                format="png", image_mode="L")
        with gr.Tab("Batch", id=BATCH, elem_id="img2img_batch_tab") as tabs[BATCH]:
            batch = img2img_batch.build(ctx)
    return Img2ImgInputs(mode, image, sketch, inpaint, inpaint_sketch, upload_image, mask, batch, tabs=tabs,
                         tabs_component=tabs_component)
