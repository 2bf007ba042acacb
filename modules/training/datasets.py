"""Captioned-image folders for the LoRA and embedding trainers, and the model inputs made from them.

Folder layouts (kohya style, any mix):

* ``img.png`` + ``img.txt`` (the caption; ``--caption-ext`` picks another extension);
* one ``metadata.jsonl`` per folder with ``{"file_name": "img.png", "text": "caption"}`` lines (used where an
  image has no caption file);
* subfolders named ``<repeats>_<name>`` (``10_star``) repeat their images that many times per epoch.

Images are resized to cover the training size and centre-cropped: a square of the training resolution, or with
aspect-ratio buckets (:mod:`modules.training.buckets`) the bucket nearest to the image's shape. The VAE latents of every
image are computed once (posterior mean and std; a fresh latent is sampled each step), captions are encoded the
way the generation path does (``modules.text_encoding``: 75-token chunk, BOS/EOS, padding per encoder, the
family's hidden layer and final norm), and SDXL gets its added conditioning (pooled text, size/crop ids).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_REPEATS = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class CaptionedImage:
    """One training image: its file, caption, the dataset folder it counts under, and its repeat count."""

    path: Path
    caption: str
    folder: str
    repeats: int = 1


def _metadata_captions(folder: Path) -> dict[str, str]:
    path = folder / "metadata.jsonl"
    if not path.is_file():
        return {}
    captions = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            captions[str(row.get("file_name", ""))] = str(row.get("text", row.get("caption", "")))
    return captions


def scan_folder(root: str | Path, caption_ext: str = ".txt") -> list[CaptionedImage]:
    """Every image under ``root`` (recursive, sorted) with its caption ("" when it has none).

    Raises FileNotFoundError when ``root`` holds no image.
    """
    root = Path(root)
    items = []
    for folder in sorted({p.parent for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES} | {root}):
        meta = _metadata_captions(folder)
        name = folder.name if folder != root else root.name
        match = _REPEATS.match(name)
        repeats = int(match.group(1)) if match else 1
        for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            caption_file = image.with_suffix(caption_ext)
            if caption_file.is_file():
                text = caption_file.read_text(encoding="utf-8").strip()
            else:
                text = meta.get(image.name, "").strip()
            items.append(CaptionedImage(image, text, name, max(1, repeats)))
    if not items:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return items


def tag_frequency(items: list[CaptionedImage]) -> dict[str, dict[str, int]]:
    """kohya's ``ss_tag_frequency``: per dataset folder, how many captions hold each comma-separated tag."""
    out: dict[str, Counter] = {}
    for item in items:
        tags = {t.strip() for t in item.caption.split(",") if t.strip()}
        out.setdefault(item.folder, Counter()).update({t: item.repeats for t in tags})
    return {folder: dict(counts) for folder, counts in out.items()}


@dataclass(frozen=True)
class LoadedImage:
    """Pixels in [-1, 1] as a (3, height, width) array, with SDXL's size-conditioning numbers."""

    pixels: np.ndarray
    original_size: tuple[int, int]  # (height, width) of the file
    crop_top_left: tuple[int, int]  # (top, left) of the crop, in the resized image


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header."""
    from PIL import Image

    with Image.open(path) as opened:
        return opened.size


def load_image(path: str | Path, size: tuple[int, int]) -> LoadedImage:
    """Open an image as RGB, scale it (Lanczos) to cover ``size`` = (width, height) and centre-crop to it."""
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    w, h = image.size
    tw, th = size
    scale = max(tw / w, th / h)
    rw, rh = max(tw, round(w * scale)), max(th, round(h * scale))
    if (rw, rh) != (w, h):
        image = image.resize((rw, rh), Image.Resampling.LANCZOS)
    left, top = (rw - tw) // 2, (rh - th) // 2
    image = image.crop((left, top, left + tw, top + th))
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return LoadedImage(pixels, (h, w), (top, left))


@dataclass
class LatentCache:
    """VAE posterior means/stds (unscaled) of a dataset's images, one row per image, with their captions.

    Rows may differ in size (aspect-ratio buckets): a batch takes rows of one bucket (:func:`bucket_groups`).
    """

    mean: list  # torch.Tensor [C, h, w] per row
    std: list
    captions: list[str]
    time_ids: object  # torch.Tensor [N, 6] (SDXL size conditioning) — always filled, used only by SDXL
    scaling_factor: float
    sizes: list[tuple[int, int]]  # (width, height) in pixels per row

    def sample(self, index, generator):
        """Scaled latents for rows ``index`` (one bucket; a fresh posterior sample)."""
        import torch

        rows = index.tolist()
        mean = torch.stack([self.mean[i] for i in rows])
        std = torch.stack([self.std[i] for i in rows])
        return (mean + std * torch.randn(mean.shape, generator=generator)) * self.scaling_factor


def encode_images(vae, items: list[CaptionedImage], resolution: int, buckets: list[tuple[int, int]] | None = None,
                  batch: int = 16) -> LatentCache:
    """Encode every image once with ``vae``: each at its nearest bucket of ``buckets`` ((width, height) pairs, see
    :mod:`modules.training.buckets`), or square at ``resolution`` without buckets."""
    import torch

    from modules.training.buckets import nearest_bucket

    sizes = [nearest_bucket(image_size(item.path), buckets) if buckets else (resolution, resolution)
             for item in items]
    mean, std, time_ids = [None] * len(items), [None] * len(items), [None] * len(items)
    with torch.no_grad():
        for size in sorted(set(sizes)):
            rows = [i for i, s in enumerate(sizes) if s == size]
            for start in range(0, len(rows), batch):
                chunk = rows[start:start + batch]
                loaded = [load_image(items[i].path, size) for i in chunk]
                x = torch.from_numpy(np.stack([img.pixels for img in loaded])).to(vae.device, vae.dtype)
                dist = vae.encode(x).latent_dist
                for k, (i, img) in enumerate(zip(chunk, loaded, strict=True)):
                    mean[i], std[i] = dist.mean[k].float().cpu(), dist.std[k].float().cpu()
                    time_ids[i] = [*img.original_size, *img.crop_top_left, size[1], size[0]]
    return LatentCache(mean, std, [item.caption for item in items], torch.tensor(time_ids, dtype=torch.float32),
                       float(vae.config.scaling_factor), sizes)


def repeated_indices(items: list[CaptionedImage]) -> list[int]:
    """Dataset rows with each image listed ``repeats`` times (what one epoch draws from)."""
    return [i for i, item in enumerate(items) for _ in range(item.repeats)]


def bucket_groups(rows: list[int], sizes: list[tuple[int, int]]) -> list[list[int]]:
    """``rows`` split by the size of their image (one group per bucket, in order of size)."""
    return [[r for r in rows if sizes[r] == size] for size in sorted({sizes[r] for r in rows})]


@dataclass(frozen=True)
class TokenRows:
    """Token ids per text encoder [B, 77] and injected vector slots: (row, position, embedding name, count)."""

    ids: tuple  # one torch.Tensor per text encoder
    slots: tuple[tuple[int, int, str, int], ...]


class CaptionTokenizer:
    """Captions → 77-token rows as the generation path builds them (first 75-token chunk only).

    ``embeddings`` (name → vector count) marks where textual-inversion vectors go, matched by the tokens of
    the name exactly as :class:`modules.text_encoding.PromptEncoder` matches them.
    """

    def __init__(self, model, embeddings: dict[str, int] | None = None):
        from modules.clip_tokenizer import load_clip_tokenizer
        from modules.text_encoding import EmbeddingIndex

        self.model = model
        self._tok = load_clip_tokenizer()
        self.counts = dict(embeddings or {})
        self._index = EmbeddingIndex(self.counts, self.tokenize) if self.counts else None

    def tokenize(self, text: str) -> list[int]:
        return self._tok(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    def __call__(self, captions: list[str]) -> TokenRows:
        import torch

        from modules.clip_tokenizer import BOS_ID, EOS_ID
        from modules.text_encoding import CHUNK, tokenize_prompt

        rows, slots = [], []
        for r, text in enumerate(captions):
            chunk = tokenize_prompt(text, self.tokenize, "Ignore", self._index, self.counts).chunks[0]
            rows.append(chunk.tokens[:CHUNK])
            slots.extend((r, 1 + pos, name, self.counts[name]) for pos, name in chunk.embeddings
                         if pos + self.counts[name] <= CHUNK)
        ids = []
        for spec in self.model.spec.text_encoders:
            pad = 0 if spec.pad_with_zero else EOS_ID
            ids.append(torch.tensor([[BOS_ID] + t + [EOS_ID] + [pad] * (CHUNK - len(t)) for t in rows]))
        return TokenRows(tuple(ids), tuple(slots))


def encode_text(model, tokens: TokenRows, vectors: dict[str, list] | None = None):
    """(context [B, 77, width], pooled [B, dim] or None) for ``tokens``; differentiable.

    ``vectors``: embedding name → one [count, width] tensor per text encoder, injected at the token slots.
    """
    import torch

    from modules.text_encoding import run_text_encoder

    parts, pooled = [], None
    specs = model.spec.text_encoders
    for i, (encoder, spec, ids) in enumerate(zip(model.text_encoders, specs, tokens.ids, strict=True)):
        injected = [(row, pos, vectors[name][i]) for row, pos, name, _ in tokens.slots] if vectors else []
        want_pooled = i == len(specs) - 1 and model.spec.unet.adm_in_channels is not None
        hidden, pool = run_text_encoder(encoder, ids, injected, spec.default_skip, spec.final_norm, want_pooled)
        parts.append(hidden.float())
        if want_pooled:
            pooled = pool.float()
    return torch.cat(parts, dim=-1), pooled
