"""What users write about their network files, and what the trainer wrote into them.

- The sidecar: A1111's ``<model>.json`` beside a checkpoint, LoRA or embedding, with the keys "description",
  "activation text", "preferred weight", "negative text", "notes" and "sd version". Keys this app does not know are
  kept when the file is saved again; the file is replaced atomically.
- The training summary: kohya's ``ss_*`` header metadata (model, module, dim/alpha, epochs, steps, dataset size,
  resolutions, the most frequent training tags) as label/value rows, read from the header only.
- The text a LoRA card puts into the prompts: ``<lora:name:W>`` plus the activation text, and the negative text.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.image_io import atomic_write

log = logging.getLogger(__name__)

SD_VERSIONS = ("Unknown", "SD1", "SD2", "SDXL", "SD3")
TEXT_KEYS = {"description": "description", "activation text": "activation_text", "negative text": "negative_text",
             "notes": "notes", "sd version": "sd_version"}
WEIGHT_KEY = "preferred weight"
MAX_PREFERRED_WEIGHT = 2.0
MAX_TEXT_CHARS = 20_000
MAX_SIDECAR_BYTES = 1_000_000
MAX_JSON_FIELD_CHARS = 5_000_000  # a kohya JSON-in-string field longer than this is not parsed
TOP_TAGS = 20
DATASET_FOLDERS_SHOWN = 8


class UserMetadataError(ValueError):
    """A sidecar value or file that cannot be used; the message names the field or the file."""


@dataclass(frozen=True)
class UserMetadata:
    """The sidecar's known values (empty / 0 = not set; weight 0 means "the default", as in A1111) and the rest."""

    description: str = ""
    activation_text: str = ""
    preferred_weight: float = 0.0
    negative_text: str = ""
    notes: str = ""
    sd_version: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


def sidecar_path(model_path: str | Path) -> Path:
    """The sidecar of a model file (``name.safetensors`` → ``name.json``) or a diffusers folder (``name.json``)."""
    path = Path(model_path)
    return path.with_name((path.name if path.is_dir() else path.stem) + ".json")


def _checked_text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise UserMetadataError(f"'{key}' must be text, not {type(value).__name__}")
    if len(value) > MAX_TEXT_CHARS:
        raise UserMetadataError(f"'{key}' is longer than {MAX_TEXT_CHARS} characters")
    if key == "sd version" and value not in ("", *SD_VERSIONS):
        raise UserMetadataError(f"'sd version' must be one of {', '.join(SD_VERSIONS)}, not {value!r}")
    return value


def _checked_weight(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip() or 0)  # hand-edited files may quote the number
        except ValueError:
            raise UserMetadataError(f"'{WEIGHT_KEY}' must be a number, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserMetadataError(f"'{WEIGHT_KEY}' must be a finite number, not {value!r}")
    if not 0 <= value <= MAX_PREFERRED_WEIGHT:
        raise UserMetadataError(f"'{WEIGHT_KEY}' must be between 0 and {MAX_PREFERRED_WEIGHT:g}, not {value:g}")
    return round(float(value), 4)


def _from_sidecar_dict(data: Mapping[str, Any]) -> UserMetadata:
    """A :class:`UserMetadata` from a sidecar's JSON object (as others may have written it: a bad value is left at
    its default)."""
    values: dict[str, Any] = {}
    for key, attr in (*TEXT_KEYS.items(), (WEIGHT_KEY, "preferred_weight")):
        if data.get(key) is None:
            continue
        try:
            values[attr] = _checked_weight(data[key]) if key == WEIGHT_KEY else _checked_text(key, data[key])
        except UserMetadataError as e:
            log.debug("ignoring a sidecar value: %s", e)
    known = {*TEXT_KEYS, WEIGHT_KEY}
    return UserMetadata(**values, extra={k: v for k, v in data.items() if k not in known})


def read_user_metadata(model_path: str | Path) -> UserMetadata:
    """The sidecar of ``model_path``; empty when there is none. A file that is not a JSON object (or too large)
    raises :class:`UserMetadataError`; single values of the wrong type are ignored."""
    path = sidecar_path(model_path)
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise UserMetadataError(f"{path.name}: larger than {MAX_SIDECAR_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return UserMetadata()
    except (OSError, UnicodeDecodeError) as e:
        raise UserMetadataError(f"{path.name}: cannot be read ({e})") from e
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise UserMetadataError(f"{path.name}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise UserMetadataError(f"{path.name}: not a JSON object")
    return _from_sidecar_dict(data)


def user_metadata_or_empty(model_path: str | Path) -> UserMetadata:
    """:func:`read_user_metadata`, with a broken sidecar logged and read as empty."""
    try:
        return read_user_metadata(model_path)
    except UserMetadataError as e:
        log.warning("%s", e)
        return UserMetadata()


def write_user_metadata(model_path: str | Path, meta: UserMetadata) -> Path:
    """Check ``meta`` and write it as the sidecar of ``model_path`` (keys it does not know kept), atomically.
    Returns the sidecar's path; a bad value raises :class:`UserMetadataError` and writes nothing."""
    data = {**meta.extra}
    for key, attr in TEXT_KEYS.items():
        data[key] = _checked_text(key, getattr(meta, attr))
    data[WEIGHT_KEY] = _checked_weight(meta.preferred_weight)
    text = json.dumps(data, indent=4, ensure_ascii=False)
    return atomic_write(sidecar_path(model_path), lambda f: f.write(text.encode("utf-8")))


# --- the LoRA card's prompt text ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CardText:
    """What a LoRA card adds: its tag and activation text to the prompt, its negative text to the negative prompt."""

    tag: str
    activation: str = ""
    negative: str = ""

    @property
    def prompt(self) -> str:
        return f"{self.tag} {self.activation}" if self.activation else self.tag


def format_weight(weight: float) -> str:
    """A multiplier as a tag writes it: 0.7 → "0.7", 1.0 → "1"."""
    return f"{round(weight, 4):g}"


def lora_card_text(name: str, meta: UserMetadata, default_weight: float = 1.0) -> CardText:
    """``<lora:name:W>`` (W = the preferred weight, or ``default_weight`` when it is 0), the activation text and the
    negative text of a LoRA's sidecar."""
    weight = meta.preferred_weight or default_weight
    return CardText(f"<lora:{name}:{format_weight(weight)}>", meta.activation_text.strip(), meta.negative_text.strip())


# --- kohya training metadata -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingSummary:
    """kohya training metadata for people: (label, value) rows and the most frequent tags with their counts."""

    rows: tuple[tuple[str, str], ...] = ()
    tags: tuple[tuple[str, int], ...] = ()


def json_field(value: Any) -> Any:
    """A JSON-in-string header value (kohya writes objects as strings) parsed, else None; oversized, malformed or
    deeply nested text gives None."""
    if not isinstance(value, str):
        return value
    if not value.lstrip().startswith(("{", "[")) or len(value) > MAX_JSON_FIELD_CHARS:
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return None


def api_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """Header metadata as A1111's ``/sdapi/v1/loras`` gives it: values that are JSON objects parsed, others as is."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        parsed = json_field(value) if isinstance(value, str) and value.startswith("{") else None
        out[key] = parsed if isinstance(parsed, dict) else value
    return out


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def tag_frequency(metadata: Mapping[str, Any], limit: int = TOP_TAGS) -> tuple[tuple[str, int], ...]:
    """The ``limit`` most frequent training tags of kohya's ``ss_tag_frequency`` (summed over dataset folders),
    most frequent first, ties by name."""
    folders = json_field(metadata.get("ss_tag_frequency"))
    totals: Counter[str] = Counter()
    for tags in folders.values() if isinstance(folders, dict) else ():
        for tag, n in tags.items() if isinstance(tags, dict) else ():
            if tag.strip() and (count := _count(n)) is not None:
                totals[tag.strip()] += count
    return tuple(sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit])


_PLAIN_FIELDS = (
    ("ss_output_name", "Output name"), ("ss_sd_model_name", "Model"), ("ss_base_model_version", "Base model"),
    ("ss_network_module", "Kohya module"), ("ss_network_dim", "Network dim"), ("ss_network_alpha", "Network alpha"),
    ("ss_clip_skip", "Clip skip"), ("ss_num_train_images", "Training images"), ("ss_num_epochs", "Epochs"),
    ("ss_steps", "Steps"), ("ss_max_train_steps", "Max steps"), ("ss_learning_rate", "Learning rate"),
)


def _date(value: Any) -> str | None:
    try:
        stamp = datetime.datetime.fromtimestamp(float(value), tz=datetime.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def _resolutions(metadata: Mapping[str, Any]) -> str | None:
    """Bucket resolutions (width×height, most images first, four shown), else ``ss_resolution``."""
    info = json_field(metadata.get("ss_bucket_info"))
    buckets = info.get("buckets") if isinstance(info, dict) else None
    counts: Counter[str] = Counter()
    for bucket in buckets.values() if isinstance(buckets, dict) else ():
        res = bucket.get("resolution") if isinstance(bucket, dict) else None
        if isinstance(res, list) and len(res) == 2 and (n := _count(bucket.get("count"))) is not None:
            counts[f"{res[0]}×{res[1]}"] += n
    if counts:
        ranked = [r for r, _ in counts.most_common()]
        return ", ".join(ranked[:4]) + (", …" if len(ranked) > 4 else "")
    res = metadata.get("ss_resolution")
    if isinstance(res, str) and (numbers := re.findall(r"\d+", res)) and len(numbers) == 2:
        return "×".join(numbers)
    return None


def _datasets(metadata: Mapping[str, Any]) -> tuple[int, str | None]:
    """Total images and a "folder (images × repeats)" list from ``ss_dataset_dirs``."""
    dirs = json_field(metadata.get("ss_dataset_dirs"))
    total, parts = 0, []
    for name, info in dirs.items() if isinstance(dirs, dict) else ():
        images = _count(info.get("img_count")) if isinstance(info, dict) else None
        if images is None:
            continue
        total += images
        repeats = _count(info.get("n_repeats"))
        parts.append(f"{name} ({images} images" + (f" × {repeats})" if repeats else ")"))
    shown = ", ".join(parts[:DATASET_FOLDERS_SHOWN]) + (", …" if len(parts) > DATASET_FOLDERS_SHOWN else "")
    return total, shown or None


def training_summary(metadata: Mapping[str, Any]) -> TrainingSummary:
    """The ``ss_*`` fields A1111's metadata view shows, as (label, value) rows, and the top training tags."""
    rows = []
    for key, label in _PLAIN_FIELDS:
        value = metadata.get(key)
        if value is not None and str(value).strip() not in ("", "None"):
            rows.append((label, str(value)[:200]))
    if (date := _date(metadata.get("ss_training_started_at"))) is not None:
        rows.append(("Date trained", date))
    if (resolutions := _resolutions(metadata)) is not None:
        rows.append(("Resolution", resolutions))
    images, folders = _datasets(metadata)
    if images:
        rows.append(("Dataset size", f"{images} images"))
    if folders:
        rows.append(("Dataset folders", folders))
    return TrainingSummary(tuple(rows), tag_frequency(metadata))
