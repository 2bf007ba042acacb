"""The Checkpoint Merger (A1111's): two or three checkpoints of one family merged tensor by tensor into a new file.

Methods (M: the multiplier): "Weighted sum" A·(1−M) + B·M; "Add difference" A + (B − C)·M; "No interpolation" A
alone (to bake in a VAE, save as float16 or drop weights). As in A1111, only tensors whose name contains "model"
and that A and B both hold are merged (others are A's); a tensor only in B is left out; an inpainting (9-channel)
or instruct-pix2pix (8-channel) A merges its first 4 input channels with a 4-channel B. The result is written to
the checkpoint folder as safetensors with A1111's ``sd_merge_recipe`` / ``sd_merge_models`` metadata.

Memory: the inputs are read one tensor at a time and the output is written as each tensor is made
(:mod:`.tensor_stream`), so a merge holds a few tensors, never whole models.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .catalog import CheckpointCatalog, CheckpointInfo, VaeCatalog
from .safetensors_file import ModelFileError
from .spec import VAE_PREFIX, UnknownLayoutError, detect
from .tensor_stream import PlannedTensor, TensorReader, write_streamed

NO_INTERPOLATION, WEIGHTED_SUM, ADD_DIFFERENCE = "No interpolation", "Weighted sum", "Add difference"
METHODS = (NO_INTERPOLATION, WEIGHTED_SUM, ADD_DIFFERENCE)
MODELS_NEEDED = {NO_INTERPOLATION: 1, WEIGHTED_SUM: 2, ADD_DIFFERENCE: 3}
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")  # "Copy config from"; the recipe stores the index, as A1111
SKIPPED_KEYS = {"cond_stage_model.transformer.text_model.embeddings.position_ids"}  # A1111's, never merged
LABELS = ("Primary model (A)", "Secondary model (B)", "Tertiary model (C)")
EXTRA_CHANNELS = {9: "inpainting", 8: "instruct-pix2pix"}  # input conv width of A → file name suffix


class MergeError(ValueError):
    """A merge that cannot be done as asked; the message names the field or model and what to change."""


@dataclass(frozen=True)
class MergeParams:
    """The Checkpoint Merger's fields, with A1111's defaults; models by checkpoint name (as in the dropdowns)."""

    primary: str
    secondary: str = ""
    tertiary: str = ""
    method: str = WEIGHTED_SUM
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    config_source: str = CONFIG_SOURCES[0]
    bake_in_vae: str = "None"
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str = "{}"


@dataclass
class MergeResult:
    path: Path | None  # None when interrupted
    tensors: int = 0
    interrupted: bool = False
    config: Path | None = None  # the copied .yaml sidecar, if any


@dataclass
class _Plan:
    params: MergeParams
    models: list[CheckpointInfo]  # A, then B and C as the method needs
    output: Path
    vae: Path | None
    discard: re.Pattern | None
    extra_channels: int | None = None  # 9 or 8 when A's wider input conv is merged with a 4-channel B
    user_metadata: dict = field(default_factory=dict)


def _pick(catalog: CheckpointCatalog, name: str, label: str) -> CheckpointInfo:
    if not (name or "").strip():
        raise MergeError(f"{label}: choose a checkpoint")
    info = catalog.find(name)
    if info is None:
        raise MergeError(f"{label}: no checkpoint named {name!r} (refresh the list?)")
    if info.is_diffusers:
        raise MergeError(f"{label}: {info.filename} is a diffusers folder; only single-file checkpoints can be merged")
    return info


def _output_path(catalog: CheckpointCatalog, params: MergeParams, models: list[CheckpointInfo],
                 extra_channels: int | None) -> Path:
    """A1111's file name: the custom name, or "0.7(a) + 0.3(b)", "a + 0.3(b - c)" or "a" from the models' names;
    ".inpainting" / ".instruct-pix2pix" for a wider A merged with a 4-channel B; in the checkpoint folder."""
    names = [Path(m.model_name).name for m in models]
    m = params.multiplier
    custom = params.custom_name.strip()
    if custom:
        if "/" in custom or "\\" in custom or custom.startswith("."):
            raise MergeError(f"Custom Name: {custom!r} must be a plain file name (no folders, not starting with '.')")
        stem = custom
    elif params.method == WEIGHTED_SUM:
        stem = f"{round(1 - m, 2)}({names[0]}) + {round(m, 2)}({names[1]})"
    elif params.method == ADD_DIFFERENCE:
        stem = f"{names[0]} + {round(m, 2)}({names[1]} - {names[2]})"
    else:
        stem = names[0]
    if extra_channels:
        stem += "." + EXTRA_CHANNELS[extra_channels]
    folder = catalog.roots[0] if catalog.roots else models[0].path.parent
    path = folder / f"{stem}.safetensors"
    if any(path.resolve() == info.path.resolve() for info in models):
        raise MergeError(f"Custom Name: {path.name} is one of the models being merged; choose another name")
    return path


def _check_compatible(readers: list[TensorReader], models: list[CheckpointInfo]) -> int | None:
    """Refuse models of different families or sizes; the input channels of A when it is wider than B's 4."""
    specs = []
    for reader, info, label in zip(readers, models, LABELS):
        try:
            specs.append(detect(reader.shapes, reader.metadata))
        except UnknownLayoutError as e:
            raise MergeError(f"{label}: {info.filename} is not a checkpoint layout this program knows ({e})") from None
    for spec, info, label in zip(specs[1:], models[1:], LABELS[1:]):
        if spec.family != specs[0].family:
            raise MergeError(f"{label}: {info.filename} is {spec.summary} but {LABELS[0]} {models[0].filename} is "
                             f"{specs[0].summary}; checkpoints of different families cannot be merged")
    if len(specs) > 1 and specs[1].unet.in_channels != 4 and specs[0].unet.in_channels == 4:
        raise MergeError(f"When merging an {specs[1].variant} model with a normal one, {LABELS[0]} must be the "
                         f"{specs[1].variant} model")
    if len(specs) > 2 and specs[2].unet.in_channels != specs[1].unet.in_channels:
        raise MergeError(f"{LABELS[2]}: {models[2].filename} is {specs[2].summary} but {LABELS[1]} is "
                         f"{specs[1].summary}; B and C must have the same input channels")
    wider = None
    for key in _merged_keys(readers):
        a = readers[0].shapes[key]
        for reader, info, label in zip(readers[1:], models[1:], LABELS[1:]):
            shape = reader.shapes.get(key, a)
            if shape == a:
                continue
            if len(a) == 4 and a[1] in EXTRA_CHANNELS and shape == (a[0], 4, *a[2:]):
                wider = a[1]
                continue
            raise MergeError(f"{label}: {info.filename} does not have the size of {models[0].filename} ({key}: "
                             f"{list(shape)} against {list(a)}); only checkpoints of the same size can be merged")
    return wider


def _merged_keys(readers: list[TensorReader]) -> list[str]:
    """A's tensors that the method combines with B's (A1111's rule: "model" in the name, present in B, a float)."""
    if len(readers) < 2:
        return []
    a, b = readers[0], readers[1]
    return [k for k in a.shapes if "model" in k and k in b.shapes and k not in SKIPPED_KEYS
            and a.dtypes[k].is_floating_point and b.dtypes[k].is_floating_point]


def _user_metadata(params: MergeParams) -> dict:
    try:
        value = json.loads(params.metadata_json or "{}")
    except ValueError as e:
        raise MergeError(f"Metadata in JSON format: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise MergeError("Metadata in JSON format: must be a JSON object ({\"key\": \"value\", …})")
    return value


def plan_merge(catalog: CheckpointCatalog, vaes: VaeCatalog, params: MergeParams) -> _Plan:
    """Check the fields (names, method, multiplier, regex, JSON) without reading tensors; MergeError otherwise."""
    if params.method not in METHODS:
        raise MergeError(f"Interpolation Method: {params.method!r} is not one of {', '.join(METHODS)}")
    if not isinstance(params.multiplier, (int, float)) or not abs(params.multiplier) < float("inf"):
        raise MergeError(f"Multiplier (M): {params.multiplier!r} is not a number")
    if params.config_source not in CONFIG_SOURCES:
        raise MergeError(f"Copy config from: {params.config_source!r} is not one of {', '.join(CONFIG_SOURCES)}")
    names = (params.primary, params.secondary, params.tertiary)[:MODELS_NEEDED[params.method]]
    models = [_pick(catalog, name, label) for name, label in zip(names, LABELS)]
    vae = None
    if params.bake_in_vae not in ("", "None", None):
        found = vaes.find(params.bake_in_vae)
        if found is None:
            raise MergeError(f"Bake in VAE: no VAE named {params.bake_in_vae!r} (refresh the list?)")
        vae = found.path
    discard = None
    if params.discard_weights:
        try:
            discard = re.compile(params.discard_weights)
        except re.error as e:
            raise MergeError(f"Discard weights with matching name: not a valid regular expression ({e})") from None
    user = _user_metadata(params) if params.save_metadata else {}
    return _Plan(params, models, _output_path(catalog, params, models, None), vae, discard, user_metadata=user)


def _legacy_hash(path: Path) -> str:
    """A1111's old 8-digit model hash: sha256 of 64 KiB at offset 1 MiB."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def _parsed(value: str):
    """A metadata value as A1111 reads it: JSON objects decoded, anything else as it is."""
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def _metadata(plan: _Plan, catalog: CheckpointCatalog, readers: list[TensorReader]) -> dict[str, str]:
    """The output's metadata (A1111's): the models' own, the user's JSON, "format": "pt", and the recipe."""
    p = plan.params
    if not p.save_metadata:
        return {}
    out: dict = {}
    if p.copy_metadata_fields:
        for reader in readers:
            out.update(reader.metadata)
    out.update(plan.user_metadata)
    out["format"] = "pt"
    if p.add_merge_recipe:
        hashes = [catalog.sha256(info) for info in plan.models] + [None] * (3 - len(plan.models))
        recipe = {
            "type": "webui", "primary_model_hash": hashes[0], "secondary_model_hash": hashes[1],
            "tertiary_model_hash": hashes[2], "interp_method": p.method, "multiplier": p.multiplier,
            "save_as_half": p.save_as_half, "custom_name": p.custom_name,
            "config_source": CONFIG_SOURCES.index(p.config_source), "bake_in_vae": p.bake_in_vae,
            "discard_weights": p.discard_weights, "is_inpainting": plan.extra_channels == 9,
            "is_instruct_pix2pix": plan.extra_channels == 8,
        }
        models: dict = {}
        for info, sha, reader in zip(plan.models, hashes, readers):
            models[sha] = {"name": info.filename, "legacy_hash": _legacy_hash(info.path),
                           "sd_merge_recipe": _parsed(reader.metadata.get("sd_merge_recipe"))}
            inherited = _parsed(reader.metadata.get("sd_merge_models", "{}"))
            models.update(inherited if isinstance(inherited, dict) else {})
        out["sd_merge_recipe"] = json.dumps(recipe)
        out["sd_merge_models"] = json.dumps(models)
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in out.items()}


class _Combiner:
    """Makes each output tensor from the inputs, one at a time."""

    def __init__(self, plan: _Plan, readers: list[TensorReader], vae: TensorReader | None, vae_keys: dict[str, str]):
        self.plan, self.readers, self.vae, self.vae_keys = plan, readers, vae, vae_keys
        self.merged = set(_merged_keys(readers))

    def dtype(self, key: str) -> torch.dtype:
        if key in self.vae_keys:
            dtype = self.vae.dtypes[self.vae_keys[key]]
        elif key in self.merged:
            dtype = self._work_dtype(key)
        else:
            dtype = self.readers[0].dtypes[key]
        return torch.float16 if self.plan.params.save_as_half and dtype == torch.float32 else dtype

    def _work_dtype(self, key: str) -> torch.dtype:
        """The inputs' common dtype: the merge computes in it (fp16 stays fp16, each operation rounded once)."""
        dtypes = [r.dtypes[key] for r in self.readers if key in r.shapes]
        for other in dtypes[1:]:
            dtypes[0] = torch.promote_types(dtypes[0], other)
        return dtypes[0]

    def make(self, planned: PlannedTensor) -> torch.Tensor:
        key = planned.key
        if key in self.vae_keys:
            return self.vae.get(self.vae_keys[key]).to(planned.dtype)
        a = self.readers[0].get(key)
        if key not in self.merged:
            return a.to(planned.dtype)
        m = self.plan.params.multiplier
        work = self._work_dtype(key)
        b = self.readers[1].get(key).to(work)
        if len(self.readers) > 2:
            if key not in self.readers[2].shapes:
                return a.to(planned.dtype)  # no C: B − C counts as zero, as in A1111
            b = b.sub_(self.readers[2].get(key).to(work))
            combine = lambda x: torch.add(x, b, alpha=m)  # A + (B − C)·M
        else:
            combine = lambda x: torch.lerp(x, b, m)  # A·(1 − M) + B·M; exactly A at 0 and B at 1
        out = a.to(work)
        if out.shape != b.shape:  # a wider input conv: its first 4 channels are merged
            out[:, :4] = combine(out[:, :4])
        else:
            out = combine(out)
        return out.to(planned.dtype)


def _vae_keys(vae: TensorReader, planned_shapes: dict[str, tuple[int, ...]], name: str) -> dict[str, str]:
    """Output key → key in the VAE file for each VAE tensor the checkpoint has; MergeError if none or sizes differ."""
    keys = {}
    for key, shape in vae.shapes.items():
        target = VAE_PREFIX + key.removeprefix(VAE_PREFIX)
        if target in planned_shapes:
            if planned_shapes[target] != shape:
                raise MergeError(f"Bake in VAE: {name} does not fit the model ({target}: {list(shape)} against "
                                 f"{list(planned_shapes[target])})")
            keys[target] = key
    if not keys:
        raise MergeError(f"Bake in VAE: {name} has no tensors of the model's VAE (a VAE in the original layout is "
                         "needed)")
    return keys


def _copy_config(plan: _Plan) -> Path | None:
    """Copy the first ``<model>.yaml`` that "Copy config from" names next to the output."""
    index = CONFIG_SOURCES.index(plan.params.config_source)
    candidates = {0: plan.models, 1: plan.models[1:2], 2: plan.models[2:3]}.get(index, [])
    for info in candidates:
        yaml = info.path.with_suffix(".yaml")
        if yaml.is_file():
            target = plan.output.with_suffix(".yaml")
            shutil.copyfile(yaml, target)
            return target
    return None


def run_merge(catalog: CheckpointCatalog, vaes: VaeCatalog, params: MergeParams, progress=None) -> MergeResult:
    """Merge as ``params`` say (see the module text); ``progress`` (a JobProgress) counts tensors and carries the
    interrupt. The checkpoint list is rescanned afterwards. MergeError for what the user has to change."""
    plan = plan_merge(catalog, vaes, params)
    readers: list[TensorReader] = []
    vae = None
    try:
        for info, label in zip(plan.models, LABELS):
            try:
                readers.append(TensorReader(info.path, catalog.allow_pickle))
            except ModelFileError as e:
                raise MergeError(f"{label}: {e}") from None
        plan.extra_channels = _check_compatible(readers, plan.models)
        plan.output = _output_path(catalog, params, plan.models, plan.extra_channels)
        a = readers[0]
        vae_keys = {}
        if plan.vae is not None:
            try:
                vae = TensorReader(plan.vae, vaes.allow_pickle)
            except ModelFileError as e:
                raise MergeError(f"Bake in VAE: {e}") from None
            vae_keys = _vae_keys(vae, a.shapes, params.bake_in_vae)
        combiner = _Combiner(plan, readers, vae, vae_keys)
        keys = [k for k in a.shapes if plan.discard is None or not plan.discard.search(k)]
        planned = [PlannedTensor(k, combiner.dtype(k), a.shapes[k]) for k in keys]
        if progress is not None:
            progress.textinfo = "Hashing the models for the recipe"  # once per file; cached afterwards
        metadata = _metadata(plan, catalog, readers)
        if progress is not None:
            progress.begin(len(planned), 1)
            progress.textinfo = f"Merging into {plan.output.name}"

        def make(t: PlannedTensor) -> torch.Tensor:
            tensor = combiner.make(t)
            if progress is not None:
                progress.advance(f"Merging {t.key}")
            return tensor

        keep_going = (lambda: not progress.control.interrupted) if progress is not None else (lambda: True)
        written = write_streamed(plan.output, planned, make, metadata, keep_going)
    finally:
        for reader in [*readers, *([vae] if vae else [])]:
            reader.close()
    if not written:
        return MergeResult(None, interrupted=True)
    config = _copy_config(plan)
    catalog.refresh()
    return MergeResult(plan.output, len(planned), config=config)


def submit_merge(state, params: MergeParams):
    """Check ``params`` now (MergeError) and queue the merge as one job in the app's queue; the Job."""
    plan_merge(state.checkpoints, state.vaes, params)

    def work(progress):
        result = run_merge(state.checkpoints, state.vaes, params, progress)
        progress.finish()
        return result

    return state.queue.submit(work, "checkpoint merge")
