"""Token merging (A1111's ``token_merging_ratio`` settings): fewer tokens in the UNet's largest self-attentions.

Self-attention at the UNet's full latent resolution compares every latent cell with every other one, so its cost
grows with the square of the cell count; it is most of a step's time at 512² and above. Before such an attention
the tokens (cells) are split in two sets: one *anchor* per 2×2 patch of the latent grid (its top-left cell) and the
other cells. Each other cell finds its most similar anchor (cosine similarity of the normalised hidden states);
the ``ratio × cells`` pairs that match best are merged — the cell is averaged into its anchor and leaves the
sequence. Attention runs on what is left; afterwards each merged cell takes its anchor's output again, so the
block's output has every cell (bipartite soft matching, as in "Token Merging for Fast Stable Diffusion", Bolya &
Hoffman 2023, with its fixed choice of anchors so that a seed gives the same image every time).

:class:`TokenMerging` puts a :class:`MergingProcessor` around the attention processor of each self-attention of a
model's UNet for one job, through diffusers' attention-processor interface, and puts the UNet's own processors back
when the job ends, however it ends. Ratio 0 changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LatentGrid:
    """The latent height and width of the UNet call in progress (recorded by a forward pre-hook)."""

    height: int = 0
    width: int = 0

    @property
    def cells(self) -> int:
        return self.height * self.width


@dataclass(frozen=True)
class Merge:
    """Which cells merge into which anchors, for one attention call ([B, N, C] hidden states)."""

    anchors: torch.Tensor  # [A] cell index of each anchor
    kept: torch.Tensor  # [B, K] cell index of each other cell that stays
    merged: torch.Tensor  # [B, R] cell index of each cell that merges
    into: torch.Tensor  # [B, R] the anchor (0..A-1) each merged cell joins

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, C] → [B, K + A, C]: the kept cells, then the anchors with their merged cells averaged in."""
        channels = x.shape[-1]
        anchors = x[:, self.anchors]
        joining = x.gather(1, _expand(self.merged, channels))
        anchors = anchors.scatter_reduce(1, _expand(self.into, channels), joining, reduce="mean", include_self=True)
        return torch.cat([x.gather(1, _expand(self.kept, channels)), anchors], dim=1)

    def restore(self, y: torch.Tensor, cells: int) -> torch.Tensor:
        """[B, K + A, C] → [B, N, C]: every cell gets its own output, a merged one its anchor's."""
        batch, channels = y.shape[0], y.shape[-1]
        kept, anchors = y[:, :self.kept.shape[1]], y[:, self.kept.shape[1]:]
        out = y.new_empty(batch, cells, channels)
        out[:, self.anchors] = anchors
        out.scatter_(1, _expand(self.kept, channels), kept)
        out.scatter_(1, _expand(self.merged, channels), anchors.gather(1, _expand(self.into, channels)))
        return out


def _expand(index: torch.Tensor, channels: int) -> torch.Tensor:
    return index.unsqueeze(-1).expand(-1, -1, channels)


def anchor_cells(height: int, width: int, device=None) -> torch.Tensor:
    """Cell indices (row-major) of the top-left cell of each whole 2×2 patch of a height × width grid."""
    rows = torch.arange(0, height - height % 2, 2, device=device)
    cols = torch.arange(0, width - width % 2, 2, device=device)
    return (rows[:, None] * width + cols[None, :]).reshape(-1)


def plan_merge(x: torch.Tensor, height: int, width: int, ratio: float) -> Merge | None:
    """The merge of ``ratio × cells`` cells of ``x`` ([B, N, C], N = height × width) into their most similar
    anchors; None when nothing would merge."""
    cells = x.shape[1]
    anchors = anchor_cells(height, width, x.device)
    is_anchor = torch.zeros(cells, dtype=torch.bool, device=x.device)
    is_anchor[anchors] = True
    others = (~is_anchor).nonzero().squeeze(1)
    count = min(int(cells * ratio), len(others))
    if count <= 0 or len(anchors) == 0:
        return None
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    similarity = unit[:, others] @ unit[:, anchors].transpose(1, 2)  # [B, O, A]
    best, nearest = similarity.max(dim=-1)  # [B, O]
    order = best.argsort(dim=-1, descending=True)
    merging, staying = order[:, :count], order[:, count:]
    return Merge(anchors, others[staying], others[merging], nearest.gather(1, merging))


class MergingProcessor:
    """An attention processor that merges tokens around ``inner`` (the module's own processor) when the call is
    a self-attention over the full latent grid; any other call goes to ``inner`` as it is."""

    def __init__(self, inner, grid: LatentGrid, ratio: float):
        self.inner = inner
        self.grid = grid
        self.ratio = ratio

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        grid = self.grid
        merge = None
        if encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3 \
                and hidden_states.shape[1] == grid.cells:
            merge = plan_merge(hidden_states, grid.height, grid.width, self.ratio)
        if merge is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        out = self.inner(attn, merge.reduce(hidden_states), None, None, **kwargs)
        return merge.restore(out, grid.cells)


class TokenMerging:
    """A context for one job: :meth:`cover` a model's UNet; leaving the context gives each covered UNet its own
    attention processors back. Ratio 0 changes nothing."""

    def __init__(self, ratio: float):
        self.ratio = float(ratio)
        self._covered: list[tuple[torch.nn.Module, dict, object]] = []

    def cover(self, model) -> None:
        """Token merging in the self-attentions (``attn1``) of ``model``'s UNet (an SDModel)."""
        unet = model.unet
        if self.ratio <= 0 or any(u is unet for u, _, _ in self._covered):
            return
        own = unet.attn_processors
        grid = LatentGrid()

        def record(module, args, kwargs) -> None:
            sample = args[0] if args else kwargs["sample"]
            grid.height, grid.width = sample.shape[-2], sample.shape[-1]

        handle = unet.register_forward_pre_hook(record, with_kwargs=True)
        unet.set_attn_processor({name: MergingProcessor(p, grid, self.ratio) if name.endswith("attn1.processor")
                                 else p for name, p in own.items()})
        self._covered.append((unet, own, handle))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for unet, own, handle in reversed(self._covered):
            handle.remove()
            unet.set_attn_processor(own)
        self._covered.clear()
