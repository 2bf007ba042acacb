"""The networks a job asks for: LoRAs from ``<lora:…>`` tags patched into the loaded model, and embeddings.

One :class:`WeightPatcher` per loaded model keeps the original weights; each job applies exactly the LoRAs its
prompt names (none → originals restored bit-for-bit; the same set as the last job → nothing written).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..hashing import HashCache
from ..models import keymap
from ..models.builders import unet_spec_from_config
from .catalog import LoraCatalog
from .embeddings import Embedding, scan_embeddings
from .lora import build_module_index, load_network
from .patcher import NetworkPatch, WeightPatcher

log = logging.getLogger(__name__)
LORA_KINDS = ("lora", "lyco")


def model_roles(model) -> dict:
    roles = {"unet": model.unet}
    for i, te in enumerate(model.text_encoders):
        roles[f"te{i + 1}"] = te
    return roles


def ldm_names(unet) -> dict[str, str]:
    """Original (LDM) UNet parameter names → diffusers names, for LoRAs trained with original module names."""
    km = keymap.unet_keymap(unet_spec_from_config(unet.config))
    return {ldm: k for k in unet.state_dict() if (ldm := km.to_ldm(k)) is not None}


class ActiveNetworks:
    def __init__(self, lora_dir: Path, embedding_dirs: list[Path], hashes: HashCache, allow_pickle: bool = False):
        self.loras = LoraCatalog(lora_dir, hashes)
        self.loras.refresh()
        self.embedding_dirs = list(embedding_dirs)
        self.allow_pickle = allow_pickle
        self._embeddings: dict[str, Embedding] | None = None
        self.embedding_errors: dict = {}
        self._per_model: dict = {}  # unet → (patcher, index, cache); dropped by `forget` when the model leaves memory

    def refresh(self) -> None:
        self.loras.refresh()
        self._embeddings = None

    def embeddings(self) -> dict[str, Embedding]:
        if self._embeddings is None:
            scan = scan_embeddings(self.embedding_dirs, allow_pickle=self.allow_pickle)
            self._embeddings, self.embedding_errors = dict(scan.embeddings), dict(scan.skipped)
        return self._embeddings

    def _state(self, model):
        state = self._per_model.get(model.unet)
        if state is None:
            roles = model_roles(model)
            state = (WeightPatcher(roles), build_module_index(roles, ldm_names(model.unet)), {})
            self._per_model[model.unet] = state
        return state

    def forget(self, model) -> None:
        """Drop the patch state of a model that leaves memory (its patcher holds the model's modules)."""
        self._per_model.pop(model.unet, None)

    def patcher(self, model) -> WeightPatcher:
        return self._state(model)[0]

    def activate(self, model, tags, warnings: list[str], fields: dict) -> dict[str, Embedding]:
        """Patch the LoRAs named by ``tags`` into ``model`` (removing others); returns the usable embeddings."""
        patcher, index, cache = self._state(model)
        patches, hashes = [], []
        for tag in tags:
            if tag.kind not in LORA_KINDS:
                warnings.append(f"extra network type '{tag.kind}' is not supported: <{tag.kind}:{tag.name}> ignored")
                continue
            info = self.loras.find(tag.name)
            if info is None:
                warnings.append(f"LoRA not found: '{tag.name}'")
                continue
            key = (info.path, info.path.stat().st_mtime_ns)
            network = cache.get(key)
            if network is None:
                try:
                    network = load_network(info.path, index, allow_pickle=self.allow_pickle)
                except (OSError, ValueError) as e:
                    warnings.append(f"LoRA '{tag.name}' could not be loaded: {e}")
                    continue
                cache[key] = network
                if network.unmatched:
                    warnings.append(f"LoRA '{tag.name}': {len(network.unmatched)} keys match nothing in this model "
                                    f"(e.g. {network.unmatched[0]}); is it for another model family?")
            patches.append(NetworkPatch(network, tag.te_multiplier, tag.unet_multiplier))
            hashes.append(f"{info.name}: {self.loras.short_hash(info)}")
        patcher.apply(patches)
        if hashes:
            fields["Lora hashes"] = ", ".join(hashes)
        return self.embeddings()
