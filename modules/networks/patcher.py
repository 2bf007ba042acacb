"""The weight patcher: applies sets of networks to model weights in place, and undoes them exactly.

Only parameter values change — no forward replacement, no hooks, and each Parameter keeps its storage.
For every patched weight W = W0 + Σ multiplier·Δ is computed in float32 on the weight's device, from a backup of
W0 taken the first time the weight is touched, and written into the weight (cast to its dtype). A weight that no
network touches any more gets its backup copied back, bit-identical. Backups are kept for the next application
(allocating and first-touching memory costs more than the arithmetic) until `release_backups()`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from modules.networks.lora import UNET, ModuleUpdate, Network, WeightRef, dora_delta

_Contribution = tuple[ModuleUpdate, float]


@dataclass(frozen=True)
class NetworkPatch:
    """One network with the strengths it is applied at (`<lora:name:te:unet>`)."""

    network: Network
    te_multiplier: float = 1.0
    unet_multiplier: float = 1.0

    def multiplier(self, role: str) -> float:
        """The multiplier for a model role ("unet" or a text encoder)."""
        return self.unet_multiplier if role == UNET else self.te_multiplier

    @property
    def key(self) -> tuple[str, float, float]:
        """What identifies this patch's effect: the network's content identity and the multipliers."""
        return self.network.identity, self.te_multiplier, self.unet_multiplier


class _Workspace:
    """Float32 scratch memory for one `apply` call, handed out in consecutive pieces and reused for every weight
    (allocating and first-touching fresh memory per weight costs more than the arithmetic)."""

    def __init__(self) -> None:
        self._buffers: dict[torch.device, torch.Tensor] = {}
        self._used: dict[torch.device, int] = {}

    def reset(self) -> None:
        """Make all memory available again (the pieces handed out before must no longer be used)."""
        self._used.clear()

    def take(self, device: torch.device, shape: torch.Size) -> torch.Tensor:
        size = math.prod(shape)
        buffer, used = self._buffers.get(device), self._used.get(device, 0)
        if buffer is None or used + size > buffer.numel():  # earlier pieces keep the old buffer alive
            grown = max(size, 2 * buffer.numel() if buffer is not None else 0)
            buffer, used = torch.empty(grown, dtype=torch.float32, device=device), 0
            self._buffers[device] = buffer
        self._used[device] = used + size
        return buffer[used : used + size].view(shape)

    def as_f32(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """`tensor` as float32 on `device`: itself when it already is, else a copy in scratch memory."""
        if tensor.dtype == torch.float32 and tensor.device == device:
            return tensor
        return self.take(device, tensor.shape).copy_(tensor)


class WeightPatcher:
    """Owns the patch state of one loaded model (role → module). Create one per loaded model.

    `backup_device` is where originals are kept: "cpu" (default; keeps accelerator memory free, as A1111 does)
    or None for beside each weight (faster re-application on a GPU, at the cost of its memory).
    """

    def __init__(self, models: Mapping[str, torch.nn.Module], backup_device: str | torch.device | None = "cpu"):
        self._models = dict(models)
        self._backup_device = None if backup_device is None else torch.device(backup_device)
        self._backups: dict[WeightRef, tuple[torch.nn.Parameter, torch.Tensor]] = {}
        self._signatures: dict[WeightRef, tuple[tuple[str, float], ...]] = {}
        self._applied: tuple[NetworkPatch, ...] = ()

    @property
    def applied(self) -> tuple[NetworkPatch, ...]:
        """The patches currently in the weights."""
        return self._applied

    @property
    def backup_bytes(self) -> int:
        """Memory held by backups of original weights."""
        return sum(t.numel() * t.element_size() for _, t in self._backups.values())

    def apply(self, patches: Sequence[NetworkPatch]) -> int:
        """Make the weights reflect exactly `patches` (replacing what was applied before); returns weights written.

        The same set again (same network identities and multipliers) writes nothing, and a weight whose
        contributions did not change is not rewritten. On any error every weight is restored to its original
        and the error raised.
        """
        patches = tuple(patches)
        if tuple(p.key for p in patches) == tuple(p.key for p in self._applied):
            self._applied = patches
            return 0
        wanted: dict[WeightRef, list[_Contribution]] = {}
        signatures: dict[WeightRef, list[tuple[str, float]]] = {}
        for patch in patches:
            for ref, update in patch.network.updates.items():
                multiplier = patch.multiplier(ref.role)
                if multiplier != 0.0:
                    wanted.setdefault(ref, []).append((update, multiplier))
                    signatures.setdefault(ref, []).append((patch.network.identity, multiplier))
        new_signatures = {ref: tuple(sig) for ref, sig in signatures.items()}
        params = {ref: self._parameter(ref) for ref in wanted}
        workspace = _Workspace()
        written = 0
        try:
            with torch.no_grad():
                for ref in [r for r in self._signatures if r not in new_signatures]:
                    self._restore(ref)
                    written += 1
                for ref, contributions in wanted.items():
                    if self._signatures.get(ref) != new_signatures[ref]:
                        self._write(ref, params[ref], contributions, workspace)
                        written += 1
        except BaseException:
            self.remove_all()
            raise
        self._signatures, self._applied = new_signatures, patches
        return written

    def remove_all(self) -> int:
        """Restore every patched weight to its original, bit for bit; returns weights written."""
        patched = list(self._signatures)
        with torch.no_grad():
            for ref in patched:
                self._restore(ref)
        self._signatures, self._applied = {}, ()
        return len(patched)

    def release_backups(self) -> None:
        """Restore all originals and free the memory held by backups."""
        self.remove_all()
        self._backups.clear()

    def _parameter(self, ref: WeightRef) -> torch.nn.Parameter:
        model = self._models.get(ref.role)
        if model is None:
            raise KeyError(f"no model for role {ref.role!r} (have {sorted(self._models)})")
        param = model.get_submodule(ref.module)._parameters.get(ref.param)
        if param is None:
            raise KeyError(f"{ref.role}: module {ref.module!r} has no {ref.param}")
        backed_up = self._backups.get(ref)
        if backed_up is not None and backed_up[0] is not param:
            raise RuntimeError(f"{ref.role}.{ref.module}.{ref.param} was replaced behind the patcher's back")
        return param

    def _restore(self, ref: WeightRef) -> None:
        param, original = self._backups[ref]
        param.detach().copy_(original)
        self._signatures.pop(ref, None)

    def _write(
        self, ref: WeightRef, param: torch.nn.Parameter, contributions: list[_Contribution], workspace: _Workspace
    ) -> None:
        weight = param.detach()
        holds_original = ref not in self._signatures  # never patched, or restored: W0 bit for bit
        if ref not in self._backups:
            self._backups[ref] = (param, weight.to(device=self._backup_device or weight.device, copy=True))
        original = self._backups[ref][1]
        device, rows = weight.device, weight.shape[0]
        workspace.reset()
        in_place = weight.dtype == torch.float32 and weight.is_contiguous()
        acc = weight if in_place else workspace.take(device, weight.shape)
        # W0 as float32 on the device, kept apart from `acc`: the backup itself when it already is, a copy when
        # DoRA needs it, else W0 is brought straight into `acc` — or is already there (one pass over the weight)
        w0 = original if original.device == device and original.dtype == torch.float32 else None
        if w0 is None and any(update.dora_scale is not None for update, _ in contributions):
            w0 = original.to(device=device, dtype=torch.float32)
        started = in_place and holds_original
        if not started and w0 is None:
            acc.copy_(original)
            started = True
        for update, multiplier in contributions:
            factors = update.low_rank()
            if factors is not None:
                up, down = (workspace.as_f32(f, device) for f in factors)
                alpha = multiplier * update.scale
                if started:
                    acc.view(rows, -1).addmm_(up, down, alpha=alpha)
                else:
                    torch.addmm(w0.view(rows, -1), up, down, alpha=alpha, out=acc.view(rows, -1))
            else:
                delta = update.delta(weight.shape, device)
                if update.dora_scale is not None:
                    delta = dora_delta(w0, delta, update.dora_scale.to(device))
                if started:
                    acc.add_(delta, alpha=multiplier)
                else:
                    torch.add(w0, delta, alpha=multiplier, out=acc)
            started = True
        if acc is not weight:
            weight.copy_(acc)
