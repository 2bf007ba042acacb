"""User settings (``config.json`` in the data folder), typed, with A1111's option names.

A job never changes the stored settings: ``override_settings`` of a request produce a copy for that job only.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from .a1111_options import DEFAULTS as A1111_DEFAULTS
from .a1111_options import check_value
from .output_folders import FOLDER_SETTINGS, check_folder

log = logging.getLogger(__name__)

# Settings with a fixed set of values.
CHOICES: dict[str, tuple[str, ...]] = {
    "samples_format": ("png", "jpg", "webp"),
    "grid_format": ("png", "jpg", "webp"),
    "randn_source": ("CPU", "GPU"),
    "emphasis": ("Original", "No norm", "Ignore", "None"),
    "show_progress_type": ("Auto", "Full", "Approx cheap", "Approx NN", "TAESD"),
}


@dataclass(frozen=True)
class Settings:
    # models
    sd_model_checkpoint: str = ""
    sd_vae: str = "Automatic"
    # VAE: decode and encode in overlapping tiles above this many pixels (width × height; 0 = at every size)
    vae_tile_threshold: int = 1024 * 1024
    sd_checkpoints_limit: int = 1
    CLIP_stop_at_last_layers: int = 1
    emphasis: str = "Original"
    # saving images
    samples_save: bool = True
    samples_format: str = "png"
    grid_save: bool = True
    grid_format: str = "png"
    save_txt: bool = False
    # sampler defaults and noise
    randn_source: str = "CPU"  # "CPU" or "GPU" (the compute device)
    eta_noise_seed_delta: int = 0
    eta_ancestral: float = 1.0  # eta of the ancestral / SDE samplers when a request gives none
    eta_ddim: float = 0.0  # eta of DDIM when a request gives none
    img2img_fix_steps: bool = False
    initial_noise_multiplier: float = 1.0
    s_min_uncond: float = 0.0  # NGMS: skip the negative prompt on every other step below this sigma (0 = off)
    s_min_uncond_all: bool = False  # NGMS on every step, not every other one
    # token merging in the UNet's full-resolution self-attentions (0 = off; modules/processing/token_merging.py)
    token_merging_ratio: float = 0.0
    token_merging_ratio_img2img: float = 0.0  # img2img's ratio when not 0 (else token_merging_ratio)
    token_merging_ratio_hr: float = 0.0  # the hires fix pass's ratio when not 0 (else token_merging_ratio)
    # live preview
    live_previews_enable: bool = True
    show_progress_every_n_steps: int = 1
    # A1111's "Live preview display mode": "Full" = VAE decode, "Approx cheap" = linear approximation; "Auto" (and
    # A1111's "Approx NN" / "TAESD", whose networks are not shipped) = Full for small images (latent_preview.py)
    show_progress_type: str = "Auto"
    # inpainting
    inpainting_mask_weight: float = 1.0
    # upscaling (A1111's names): model upscalers run in tiles of this many input pixels (0: whole image)
    ESRGAN_tile: int = 192
    ESRGAN_tile_overlap: int = 8
    # paths ("" = the default folder under the data folder's outputs/; relative paths are below the data folder)
    outdir_samples: str = ""  # every kind's images go here when set
    outdir_txt2img_samples: str = ""
    outdir_img2img_samples: str = ""
    outdir_extras_samples: str = ""
    outdir_grids: str = ""  # every kind's grids go here when set
    outdir_txt2img_grids: str = ""
    outdir_img2img_grids: str = ""
    outdir_save: str = ""  # the Save button's folder
    # limits of one request (the owner's: a request's override_settings cannot change them)
    limit_images_per_request: int = 1000  # batch count × batch size, times the cells of an X/Y/Z plot
    limit_upload_pixels: int = 4096 * 4096  # one uploaded image, checked from its header before it is decoded
    limit_upload_pixels_total: int = 4 * 4096 * 4096  # all the images of one request together
    # user interface
    quicksettings_list: tuple[str, ...] = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers")

    def with_overrides(self, overrides: dict | None) -> "Settings":
        """A copy with ``overrides`` applied; unknown names or wrong types raise ValueError naming the option."""
        if not overrides:
            return self
        return dataclasses.replace(self, **_validated(overrides))

    def valid_overrides(self, values: dict) -> dict:
        """The entries of ``values`` that are valid overrides, each checked on its own; the rest are left out."""
        return _valid_each(values)[0]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def output_dir(self, kind: str, data_dir: Path) -> Path:
        """Where images of ``kind`` go: "txt2img", "img2img", "extras" (the Extras tab), "txt2img-grids",
        "img2img-grids" or "save" (the Save button). The Paths settings decide; empty ones mean
        ``<data_dir>/outputs/<kind>-images`` (grids: ``<kind>-grids``, save: ``saved``); relative paths are taken
        below ``data_dir``."""
        base, _, grids = kind.partition("-")
        if kind == "save":
            chosen, default = self.outdir_save, "saved"
        elif grids:
            chosen = self.outdir_grids or getattr(self, f"outdir_{base}_grids", "")
            default = f"{base}-grids"
        else:
            chosen = self.outdir_samples or getattr(self, f"outdir_{base}_samples", "")
            default = f"{base}-images"
        if base not in ("txt2img", "img2img", "extras", "save") or (grids and (grids != "grids" or base == "extras")):
            raise ValueError(f"unknown output kind {kind!r}")
        return Path(data_dir) / (Path(chosen).expanduser() if chosen else Path("outputs") / default)


_FIELDS = {f.name: f for f in fields(Settings)}
LIMIT_SETTINGS = tuple(name for name in _FIELDS if name.startswith("limit_"))
TOKEN_MERGING_SETTINGS = ("token_merging_ratio", "token_merging_ratio_img2img", "token_merging_ratio_hr")
MAX_TOKEN_MERGING = 0.9  # A1111's slider end (merging stops at 3 of every 4 cells whatever the ratio)


def _valid_each(values: dict) -> tuple[dict, list[str]]:
    """The entries of ``values`` that are valid, each checked on its own, and why each of the others is not."""
    valid, problems = {}, []
    for name, value in values.items():
        try:
            valid.update(_validated({name: value}))
        except ValueError as e:
            problems.append(str(e))
    return valid, problems


def _validated(values: dict) -> dict:
    out = {}
    for name, value in values.items():
        f = _FIELDS.get(name)
        if f is None:
            raise ValueError(f"unknown setting {name!r}")
        kind = type(getattr(Settings(), name))
        try:
            if kind is bool:
                if not isinstance(value, (bool, int)):
                    raise TypeError
                value = bool(value)
            elif kind in (int, float):
                if isinstance(value, bool):
                    raise TypeError
                value = kind(value)
            elif kind is str:
                if not isinstance(value, str):
                    raise TypeError
            elif kind is tuple:
                if isinstance(value, str):
                    value = [v.strip() for v in value.split(",") if v.strip()]
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                    raise TypeError
                value = tuple(value)
        except (TypeError, ValueError):
            what = "a list of names" if kind is tuple else kind.__name__
            raise ValueError(f"setting {name!r} must be {what}, got {value!r}") from None
        if name in CHOICES and value not in CHOICES[name]:
            raise ValueError(f"setting {name!r} must be one of {', '.join(CHOICES[name])}, got {value!r}")
        out[name] = value
    if out.get("CLIP_stop_at_last_layers", 1) < 1:
        raise ValueError("setting 'CLIP_stop_at_last_layers' must be >= 1")
    for name in ("eta_ancestral", "eta_ddim"):
        if out.get(name, 0.0) < 0:
            raise ValueError(f"setting {name!r} must be >= 0")
    for name in ("ESRGAN_tile", "ESRGAN_tile_overlap", "vae_tile_threshold"):
        if out.get(name, 0) < 0:
            raise ValueError(f"setting {name!r} must be >= 0")
    if not 0 <= out.get("inpainting_mask_weight", 1.0) <= 1:
        raise ValueError("setting 'inpainting_mask_weight' must be within 0..1")
    for name in LIMIT_SETTINGS:
        if out.get(name, 1) < 1:
            raise ValueError(f"setting {name!r} must be >= 1")
    if out.get("s_min_uncond", 0.0) < 0:
        raise ValueError("setting 's_min_uncond' must be >= 0")
    for name in TOKEN_MERGING_SETTINGS:
        if not 0 <= out.get(name, 0.0) <= MAX_TOKEN_MERGING:
            raise ValueError(f"setting {name!r} must be within 0..{MAX_TOKEN_MERGING}")
    return out


class SettingsStore:
    """The stored settings; ``update`` validates, replaces and saves atomically.

    Nothing stored is lost silently: a file that does not parse (or is not an object) is moved aside to
    ``config.json.broken-<time>`` before defaults are used, and an invalid value drops only its own key. Each such
    problem is logged and kept in :attr:`notices` for the UI to show.

    Folder settings in ``config.json`` are trusted (the owner wrote them); new values from clients must name
    folders inside the data folder (the one holding ``config.json``) or ``output_roots`` (:meth:`checked`).
    """

    def __init__(self, path: Path, output_roots: Sequence[Path] = ()):
        self.path = Path(path)
        self.output_roots = tuple(output_roots)
        self._lock = threading.Lock()
        self.notices: list[str] = []
        raw = self._read()
        self.extra = {k: v for k, v in raw.items() if k not in _FIELDS}  # extensions' or newer versions' options
        known, problems = _valid_each({k: v for k, v in raw.items() if k in _FIELDS})
        for problem in problems:
            message = f"{self.path.name}: {problem}; the default is used"
            log.warning("%s", message)
            self.notices.append(message)
        self.current = Settings().with_overrides(known)

    def _read(self) -> dict:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(raw, dict):
                return raw
            problem = f"it holds {type(raw).__name__}, not an object of settings"
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            problem = str(e)
        kept = self.path.with_name(f"{self.path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(self.path, kept)
            where = f"moved to {kept.name}"
        except OSError as e:
            where = f"left in place ({e})"
        message = f"{self.path} could not be read ({problem}): {where}; starting with the default settings"
        log.error("%s", message)
        self.notices.append(message)
        return {}

    def checked(self, values: dict) -> Settings:
        """The current settings with ``values`` from a client applied: checked as :meth:`Settings.with_overrides`
        does, and each folder setting they change confined (:func:`modules.output_folders.check_folder`)."""
        current = self.current
        new = current.with_overrides(values)
        for name in FOLDER_SETTINGS:
            if getattr(new, name) != getattr(current, name):
                check_folder(name, getattr(new, name), self.path.parent, self.output_roots)
        return new

    def update(self, values: dict) -> Settings:
        """Apply ``values`` from a client (:meth:`checked`; ValueError and nothing saved when refused) and save."""
        with self._lock:
            self.current = self.checked(values)
            self._save()
            return self.current

    def store_unimplemented(self, values: dict) -> list[str]:
        """Keep options that this project does not implement in config.json: A1111's (:mod:`modules.a1111_options`,
        each checked against the type of A1111's default: ValueError naming the key, nothing saved) or names already
        kept there; returns their names. A client that writes them reads them back; they change nothing here."""
        checked = {key: check_value(key, value) if key in A1111_DEFAULTS else value for key, value in values.items()}
        with self._lock:
            self.extra.update(checked)
            self._save()
        return sorted(checked)

    def reset(self) -> Settings:
        with self._lock:
            self.current = Settings()
            self._save()
            return self.current

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({**self.extra, **self.current.to_dict()}, f, indent=2)
        os.replace(tmp, self.path)
