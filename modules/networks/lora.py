"""LoRA-family files → per-weight updates, resolved against the real module names of the loaded model.

Understood layouts (any mix within one file):
- kohya / LyCORIS: `lora_unet_…`, `lora_te_…` (SDXL `lora_te1_…`, `lora_te2_…`), module path joined with `_`,
  UNet paths in diffusers naming or, through a name map, in the original (LDM) naming;
- diffusers / PEFT: `unet.…`, `text_encoder.…`, `text_encoder_2.…` dotted paths (`lora_A`/`lora_B`, the older
  `lora.down`/`lora.up`, `lora_linear_layer.down/up` and attention-processor `to_q_lora` names).
Update kinds: LoRA (linear, conv incl. 3×3 down + 1×1 up, Tucker `lora_mid`), LoHa (incl. Tucker `hada_t1/t2`),
LoKr, full diffs (`diff`, `diff_b`); DoRA magnitudes (`dora_scale`, PEFT `lora_magnitude_vector`).
Roles: "unet", "te1", "te2" — the keys of the `models` mapping.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modules.networks.catalog import file_identity, load_tensor_file

log = logging.getLogger(__name__)

UNET = "unet"
TEXT_ROLES = ("te1", "te2")

# tensor-name suffix → part name; longest suffixes are tried first
_PART_SUFFIXES = sorted(
    {
        ".lora_down.weight": "down",
        ".lora_up.weight": "up",
        ".lora_mid.weight": "mid",
        ".lora_A.weight": "down",
        ".lora_B.weight": "up",
        ".lora.down.weight": "down",
        ".lora.up.weight": "up",
        ".lora_linear_layer.down.weight": "down",
        ".lora_linear_layer.up.weight": "up",
        ".alpha": "alpha",
        ".dora_scale": "dora_scale",
        ".lora_magnitude_vector": "dora_scale",
        ".lora_magnitude_vector.weight": "dora_scale",
        ".hada_w1_a": "hada_w1_a",
        ".hada_w1_b": "hada_w1_b",
        ".hada_w2_a": "hada_w2_a",
        ".hada_w2_b": "hada_w2_b",
        ".hada_t1": "hada_t1",
        ".hada_t2": "hada_t2",
        ".lokr_w1": "lokr_w1",
        ".lokr_w1_a": "lokr_w1_a",
        ".lokr_w1_b": "lokr_w1_b",
        ".lokr_w2": "lokr_w2",
        ".lokr_w2_a": "lokr_w2_a",
        ".lokr_w2_b": "lokr_w2_b",
        ".lokr_t2": "lokr_t2",
        ".diff": "diff",
        ".diff_b": "diff_b",
    }.items(),
    key=lambda item: -len(item[0]),
)
_KOHYA_PREFIXES = (("lora_unet_", UNET), ("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te_", "te1"))
_DOTTED_PREFIXES = (("unet.", UNET), ("text_encoder.", "te1"), ("text_encoder_2.", "te2"))
_PEFT_COMPONENTS = {"unet": UNET, "text_encoder": "te1", "text_encoder_2": "te2"}
_WRAPPER_PREFIX = "base_model.model."
_PROCESSOR_NAME = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.")
_TEXT_MODEL = "text_model."
_LDM_UNET_PREFIX = "model.diffusion_model."


@dataclass(frozen=True)
class WeightRef:
    """One parameter of one model role: `models[role].get_submodule(module).<param>`."""

    role: str
    module: str
    param: str = "weight"


def _f32(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    return t.to(device=device, dtype=torch.float32)


def _tucker(core: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Rebuild a conv kernel from a Tucker core (r, r, kh, kw), down (r, in) and up (r, out) → (out, in, kh, kw)."""
    return torch.einsum("ijkl,jr,ip->prkl", core, down.flatten(1), up.flatten(1))


def _lora_delta(p: Mapping[str, torch.Tensor]) -> torch.Tensor:
    up, down = p["up"].flatten(1), p["down"].flatten(1)
    if "mid" in p:
        return torch.einsum("pi,ijkl,jr->prkl", up, p["mid"], down)
    return up @ down


def _loha_delta(p: Mapping[str, torch.Tensor]) -> torch.Tensor:
    def factor(n: int) -> torch.Tensor:
        a, b = p[f"hada_w{n}_a"], p[f"hada_w{n}_b"]
        core = p.get(f"hada_t{n}")
        return a @ b.flatten(1) if core is None else _tucker(core, b, a)

    first, second = factor(1), factor(2)
    return first * second.reshape(first.shape)


def _lokr_delta(p: Mapping[str, torch.Tensor]) -> torch.Tensor:
    w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
    if "lokr_w2" in p:
        w2 = p["lokr_w2"]
    elif "lokr_t2" in p:
        w2 = _tucker(p["lokr_t2"], p["lokr_w2_b"], p["lokr_w2_a"])
    else:
        w2 = p["lokr_w2_a"] @ p["lokr_w2_b"].flatten(1)
    # kron over (out, in·kernel): the kernel stays innermost, matching the weight's memory layout
    return torch.kron(w1.flatten(1), w2.flatten(1))


def _full_delta(p: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return p["diff"]


_DELTAS = {"lora": _lora_delta, "loha": _loha_delta, "lokr": _lokr_delta, "full": _full_delta}


@dataclass(frozen=True, eq=False)
class ModuleUpdate:
    """The change a network makes to one weight: a kind, its tensors, and the alpha/rank scale folded into one."""

    kind: str
    parts: Mapping[str, torch.Tensor]
    scale: float = 1.0
    dora_scale: torch.Tensor | None = None

    def low_rank(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(up, down) as stored, flattened to matrices, when delta = scale·up@down exactly (plain LoRA)."""
        if self.kind != "lora" or "mid" in self.parts or self.dora_scale is not None:
            return None
        return self.parts["up"].flatten(1), self.parts["down"].flatten(1)

    def delta(self, shape: torch.Size | tuple[int, ...], device: torch.device | str) -> torch.Tensor:
        """scale·Δ as a float32 tensor of the target weight's shape (before DoRA and the user's multiplier)."""
        raw = _DELTAS[self.kind]({k: _f32(v, device) for k, v in self.parts.items()})
        if raw.shape[0] != shape[0] or raw.numel() != math.prod(shape):
            raise ValueError(f"update of shape {tuple(raw.shape)} does not fit a weight of shape {tuple(shape)}")
        raw = raw.reshape(shape)
        return raw if self.scale == 1.0 else raw * self.scale


def dora_delta(w0: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """The DoRA change for original weight `w0` and scaled update `delta`: m·(w0+Δ)/‖w0+Δ‖ − w0.

    The norm runs per input column when the magnitude has shape (1, in, …) (kohya/LyCORIS) and per output row
    when it has `out` entries (PEFT `lora_magnitude_vector`, LyCORIS `wd_on_out`).
    """
    merged = w0 + delta
    if magnitude.dim() >= 2 and magnitude.shape[0] == 1:
        dims = [0, *range(2, merged.dim())]
    else:
        dims = list(range(1, merged.dim()))
    norm = torch.linalg.vector_norm(merged, dim=dims, keepdim=True)
    return merged * (magnitude.to(merged).reshape(norm.shape) / norm) - w0


@dataclass(frozen=True, eq=False)
class Network:
    """A loaded LoRA-family file, resolved to the weights it changes. Immutable: patches refer to it."""

    name: str
    identity: str
    updates: Mapping[WeightRef, ModuleUpdate]
    unmatched: tuple[str, ...] = ()
    unsupported: Mapping[str, str] = field(default_factory=dict)

    @property
    def roles(self) -> frozenset[str]:
        """The model roles this network changes."""
        return frozenset(ref.role for ref in self.updates)


@dataclass(frozen=True)
class ModuleIndex:
    """Every name under which files may refer to a model's weighted modules, per role.

    `params` holds the shapes of each module's `weight` (and `bias`); `aliases` maps dotted names, `_`-joined
    names, CLIP names with/without `text_model.`, and LDM UNet names to the real dotted module name (None when
    two modules share an alias).
    """

    params: Mapping[str, Mapping[tuple[str, str], tuple[int, ...]]]
    aliases: Mapping[str, Mapping[str, str | None]]

    def lookup(self, role: str, name: str) -> str | None:
        """The real module name that `name` refers to in `role`, or None."""
        return self.aliases.get(role, {}).get(name)


def _name_variants(role: str, name: str) -> tuple[str, ...]:
    if role == UNET:
        return (name,)
    if name.startswith(_TEXT_MODEL):
        return name, name[len(_TEXT_MODEL) :]
    return name, _TEXT_MODEL + name


def _add_alias(aliases: dict[str, str | None], alias: str, target: str) -> None:
    if aliases.setdefault(alias, target) != target:
        aliases[alias] = None


def build_module_index(
    models: Mapping[str, torch.nn.Module], ldm_to_diffusers: Mapping[str, str] | None = None
) -> ModuleIndex:
    """Index the modules of `models` (role → module) that own a weight, for resolving network keys.

    `ldm_to_diffusers` (LDM UNet parameter key → diffusers key, e.g. from `modules.models.keymap`) makes UNet
    networks written with the original module names (SDXL kohya LoRAs) resolve too.
    """
    params: dict[str, dict[tuple[str, str], tuple[int, ...]]] = {}
    aliases: dict[str, dict[str, str | None]] = {}
    for role, model in models.items():
        role_params: dict[tuple[str, str], tuple[int, ...]] = {}
        for name, module in model.named_modules():
            for param in ("weight", "bias"):
                tensor = module._parameters.get(param)
                if tensor is not None:
                    role_params[(name, param)] = tuple(tensor.shape)
        names = sorted({name for name, param in role_params if param == "weight"})
        role_aliases: dict[str, str | None] = {}
        for name in names:
            for variant in _name_variants(role, name):
                _add_alias(role_aliases, variant, name)
        dotted = set(role_aliases)  # real names win over any joined or LDM alias
        for name in names:
            for variant in _name_variants(role, name):
                if (joined := variant.replace(".", "_")) not in dotted:
                    _add_alias(role_aliases, joined, name)
        params[role], aliases[role] = role_params, role_aliases
    if ldm_to_diffusers and UNET in aliases:
        unet_aliases = aliases[UNET]
        for ldm_key, diffusers_key in ldm_to_diffusers.items():
            if not (ldm_key.endswith(".weight") and diffusers_key.endswith(".weight")):
                continue
            ldm_module = ldm_key.removeprefix(_LDM_UNET_PREFIX)[: -len(".weight")]
            target = diffusers_key.removeprefix(_LDM_UNET_PREFIX)[: -len(".weight")]
            if (target, "weight") in params[UNET]:
                for alias in (ldm_module, ldm_module.replace(".", "_")):
                    unet_aliases.setdefault(alias, target)
    return ModuleIndex(params=params, aliases=aliases)


def _split_key(key: str) -> tuple[str, str] | None:
    """(module stem, part) of a tensor name, or None if its suffix is not a known part."""
    key = _PROCESSOR_NAME.sub(lambda m: f".{'to_out.0' if m[1] == 'to_out' else m[1]}.lora.", key)
    for suffix, part in _PART_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def _resolve_stem(stem: str, index: ModuleIndex) -> tuple[str, str, str] | None:
    """(role, real module name, name as written without its role prefix) for a module stem, or None."""
    for prefix, role in _KOHYA_PREFIXES + _DOTTED_PREFIXES:
        if stem.startswith(prefix):
            name = stem[len(prefix) :]
            module = index.lookup(role, name)
            return (role, module, name) if module else None
    name = stem.removeprefix(_WRAPPER_PREFIX)
    found = [(role, index.lookup(role, name), name) for role in index.aliases if index.lookup(role, name)]
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class _PeftScaling:
    lora_alpha: float | None
    alpha_pattern: Mapping[str, float]
    use_rslora: bool

    def alpha_for(self, name: str) -> float | None:
        for pattern, alpha in self.alpha_pattern.items():
            if re.match(rf"(.*\.)?({pattern})$", name):
                return float(alpha)
        return self.lora_alpha


def _peft_scaling(metadata: Mapping[str, str]) -> dict[str, _PeftScaling]:
    """Per-role LoRA alpha settings from diffusers' `lora_adapter_metadata` (packed PEFT configs)."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        log.warning("ignoring unreadable lora_adapter_metadata")
        return {}
    scaling = {}
    for component, role in _PEFT_COMPONENTS.items():
        alpha = config.get(f"{component}.lora_alpha")
        if alpha is not None or config.get(f"{component}.alpha_pattern"):
            scaling[role] = _PeftScaling(
                lora_alpha=None if alpha is None else float(alpha),
                alpha_pattern=config.get(f"{component}.alpha_pattern") or {},
                use_rslora=bool(config.get(f"{component}.use_rslora")),
            )
    return scaling


def _make_updates(parts: dict[str, torch.Tensor], alpha: float | None, rslora: bool) -> dict[str, ModuleUpdate]:
    """Turn the parts found for one module into updates per parameter ("weight", "bias"). Raises ValueError."""
    dora = parts.pop("dora_scale", None)
    names = set(parts)
    if {"up", "down"} <= names:
        kind, rank = "lora", parts["down"].shape[0]
    elif {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= names:
        kind, rank = "loha", parts["hada_w1_b"].shape[0]
    elif any(n.startswith("lokr_") for n in names):
        if not ({"lokr_w1"} <= names or {"lokr_w1_a", "lokr_w1_b"} <= names) or not (
            "lokr_w2" in names or {"lokr_w2_a", "lokr_w2_b"} <= names
        ):
            raise ValueError(f"incomplete LoKr tensors {sorted(names)}")
        kind = "lokr"
        rank = parts["lokr_w1_b"].shape[0] if "lokr_w1_b" in parts else None
        rank = parts["lokr_w2_b"].shape[0] if rank is None and "lokr_w2_b" in parts else rank
    elif names & {"diff", "diff_b"}:
        updates = {}
        if "diff" in parts:
            updates["weight"] = ModuleUpdate("full", {"diff": parts["diff"]}, 1.0, dora)
        if "diff_b" in parts:
            updates["bias"] = ModuleUpdate("full", {"diff": parts["diff_b"]})
        return updates
    else:
        raise ValueError(f"incomplete or unknown tensor set {sorted(names)}")
    if alpha is None or rank is None:
        scale = 1.0
    else:
        scale = alpha / math.sqrt(rank) if rslora else alpha / rank
    # kept as float32: converting once here is cheaper than on every application (files are mostly fp16)
    tensors = {k: v.float() for k, v in parts.items() if k != "alpha"}
    return {"weight": ModuleUpdate(kind, tensors, scale, None if dora is None else dora.float())}


def _check_fits(update: ModuleUpdate, shape: tuple[int, ...]) -> None:
    """Raise ValueError unless `update` produces a delta of `shape` (checked on the meta device: no compute)."""
    try:
        delta = update.delta(shape, "meta")
        if update.dora_scale is not None:
            dora_delta(delta, delta, update.dora_scale.to("meta"))
    except RuntimeError as e:
        raise ValueError(f"tensor shapes do not combine ({e})") from e


def network_from_state_dict(
    state: Mapping[str, torch.Tensor],
    index: ModuleIndex,
    *,
    name: str,
    identity: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Network:
    """Resolve a LoRA-family state dict against a model index. Keys that match no module are reported, not dropped.

    `identity` should change whenever the content does (`file_identity(path)` for files); patchers compare it to
    skip re-applying an unchanged set.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    keys_of: dict[str, list[str]] = {}
    unsupported: dict[str, str] = {}
    for key, tensor in state.items():
        split = _split_key(key)
        if split is None:
            unsupported[key] = "unrecognized tensor name"
            continue
        stem, part = split
        groups.setdefault(stem, {})[part] = tensor
        keys_of.setdefault(stem, []).append(key)
    peft = _peft_scaling(metadata or {})
    updates: dict[WeightRef, ModuleUpdate] = {}
    unmatched: list[str] = []
    for stem, parts in groups.items():
        resolved = _resolve_stem(stem, index)
        if resolved is None:
            unmatched.extend(keys_of[stem])
            continue
        role, module, written_name = resolved
        alpha_tensor = parts.get("alpha")
        rule = peft.get(role)
        alpha = float(alpha_tensor) if alpha_tensor is not None else rule.alpha_for(written_name) if rule else None
        try:
            made = _make_updates(dict(parts), alpha, bool(rule and rule.use_rslora and alpha_tensor is None))
            for param, update in made.items():
                shape = index.params[role].get((module, param))
                if shape is None:
                    raise ValueError(f"module {module} has no {param}")
                _check_fits(update, shape)
                updates[WeightRef(role, module, param)] = update
        except ValueError as e:
            unsupported[stem] = str(e)
    if unmatched:
        log.warning(
            "network %s: %d tensor(s) match no module of the model, e.g. %s", name, len(unmatched), unmatched[:3]
        )
    if unsupported:
        log.warning(
            "network %s: %d part(s) not applied, e.g. %s", name, len(unsupported), list(unsupported.items())[:3]
        )
    return Network(
        name=name,
        identity=identity or f"memory:{uuid.uuid4().hex}",
        updates=updates,
        unmatched=tuple(unmatched),
        unsupported=unsupported,
    )


def load_network(
    path: str | os.PathLike,
    models: Mapping[str, torch.nn.Module] | ModuleIndex,
    *,
    ldm_to_diffusers: Mapping[str, str] | None = None,
    allow_pickle: bool = False,
) -> Network:
    """Load a LoRA-family file for `models` (role → module, or a prebuilt `ModuleIndex`); name = file stem."""
    path = Path(path)
    index = models if isinstance(models, ModuleIndex) else build_module_index(models, ldm_to_diffusers)
    state, metadata = load_tensor_file(path, allow_pickle=allow_pickle)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return network_from_state_dict(tensors, index, name=path.stem, identity=file_identity(path), metadata=metadata)
