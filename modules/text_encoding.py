"""Prompt text → conditioning tensors, with A1111's chunking, emphasis, embeddings and clip skip.

- Tokens go in chunks of 75, each encoded as ``[BOS] + 75 + [EOS]``; a long prompt is several chunks whose
  encodings are concatenated along the token axis. ``BREAK`` ends a chunk. When a chunk fills and its last comma
  is within 20 tokens of the end, the words after the comma move to the next chunk.
- Padding after the first end token is the end token (CLIP-L) or id 0 (OpenCLIP encoders).
- Emphasis modes: "Original" (multiply each token vector by its weight, then restore the chunk's mean),
  "No norm" (multiply only), "Ignore" (parse but use weight 1), "None" (no emphasis syntax: text is literal).
- Textual-inversion embeddings are matched by the token sequence of their name and injected as vectors; an
  embedding is never split across chunks.
- Clip skip N takes the hidden state N-1 layers before the family's usual one (SD1: last layer; SD2:
  penultimate; SDXL: penultimate without the final norm).
- SDXL: both encoders see the same tokens; outputs are concatenated; the pooled output is the second encoder's
  projected end-token state of the first chunk.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .clip_tokenizer import BOS_ID, EOS_ID, load_clip_tokenizer
from .prompts import is_break, parse_emphasis
from .settings import CHOICES

CHUNK = 75
COMMA_ID = 267  # ",</w>"
COMMA_LOOKBACK = 20
MEAN_RATIO_EPSILON = 1e-3  # a weighted mean below this fraction of the mean magnitude is taken as zero
EMPHASIS_MODES = CHOICES["emphasis"]


@dataclass(frozen=True)
class Conditioning:
    """Encoded prompt: ``context`` [1, 77·chunks, width]; ``pooled`` [1, dim] for SDXL-style models."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def chunks(self) -> int:
        return self.context.shape[1] // (CHUNK + 2)


def _mean_ratio(before: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per chunk, the factor that gives weighted ``z`` its unweighted mean ``before`` back ("Original" emphasis).
    A chunk whose weighted mean is (nearly) zero keeps its scale: the ratio would be unbounded (seen on tiny
    encoders whose outputs average to ~0; it turned the image into NaN)."""
    after = z.mean(dim=(1, 2), keepdim=True)
    scale = z.abs().mean(dim=(1, 2), keepdim=True)
    usable = after.abs() > MEAN_RATIO_EPSILON * scale
    return torch.where(usable, before / torch.where(usable, after, torch.ones_like(after)), torch.ones_like(after))


@dataclass
class _Chunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    # (position in chunk, embedding name) of injected vectors
    embeddings: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class TokenizedPrompt:
    chunks: tuple[_Chunk, ...]
    token_count: int  # tokens used, without BOS/EOS/padding
    embeddings_used: tuple[str, ...]


class EmbeddingIndex:
    """Embedding lookup by the token sequence of each embedding's name (longest match first)."""

    def __init__(self, embeddings: Mapping[str, object], tokenize):
        self.embeddings = dict(embeddings)
        self._by_first: dict[int, list[tuple[tuple[int, ...], str]]] = {}
        for name in self.embeddings:
            ids = tuple(tokenize(name))
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, name))
        for options in self._by_first.values():
            options.sort(key=lambda o: -len(o[0]))

    def match(self, ids: list[int], i: int) -> tuple[str, int] | None:
        for seq, name in self._by_first.get(ids[i], ()):
            if tuple(ids[i:i + len(seq)]) == seq:
                return name, len(seq)
        return None


def tokenize_prompt(text: str, tokenize, emphasis: str = "Original", embeddings: EmbeddingIndex | None = None,
                    vector_counts: Mapping[str, int] | None = None) -> TokenizedPrompt:
    """Split a (scheduled, plain) prompt into 75-token chunks with per-token weights and embedding slots."""
    pieces = [(text, 1.0)] if emphasis == "None" else parse_emphasis(text)
    chunks: list[_Chunk] = []
    current = _Chunk()
    last_comma = -1
    used: list[str] = []
    count = 0

    def close(keep_from: int | None = None) -> None:
        nonlocal current, last_comma
        if keep_from is not None:
            rest = _Chunk(current.tokens[keep_from:], current.weights[keep_from:],
                          [(p - keep_from, n) for p, n in current.embeddings if p >= keep_from])
            current = _Chunk(current.tokens[:keep_from], current.weights[:keep_from],
                             [(p, n) for p, n in current.embeddings if p < keep_from])
        else:
            rest = _Chunk()
        chunks.append(current)
        current = rest
        last_comma = -1

    for piece in pieces:
        if is_break(piece):
            close()
            continue
        piece_text, weight = piece
        if emphasis == "Ignore":
            weight = 1.0
        ids = tokenize(piece_text)
        i = 0
        while i < len(ids):
            if len(current.tokens) == CHUNK:  # full and more to come: wrap at a recent comma if there is one
                close(last_comma + 1 if last_comma >= 0 and CHUNK - last_comma <= COMMA_LOOKBACK else None)
            hit = embeddings.match(ids, i) if embeddings else None
            if hit is not None:
                name, consumed = hit
                n = (vector_counts or {}).get(name, 1)
                if len(current.tokens) + n > CHUNK:
                    close()
                current.embeddings.append((len(current.tokens), name))
                current.tokens.extend([EOS_ID] * n)  # placeholder ids; vectors are injected
                current.weights.extend([weight] * n)
                used.append(name)
                count += n
                i += consumed
            else:
                if ids[i] == COMMA_ID:
                    last_comma = len(current.tokens)
                current.tokens.append(ids[i])
                current.weights.append(weight)
                count += 1
                i += 1
    if current.tokens or not chunks:
        close()
    return TokenizedPrompt(tuple(chunks), count, tuple(dict.fromkeys(used)))


def _causal_mask(n: int, dtype, device) -> torch.Tensor:
    return torch.full((n, n), float("-inf"), dtype=dtype, device=device).triu(1)[None, None]


def _core(encoder):
    """The CLIPTextModel inside a CLIPTextModelWithProjection (or the model itself)."""
    return getattr(encoder, "text_model", encoder)


def run_text_encoder(encoder, ids: torch.Tensor, injected: list[tuple[int, int, torch.Tensor]], skip: int,
                     final_norm: bool, want_pooled: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states ``skip`` layers before the last (optionally final-normed), and the projected pooled output.

    ``injected``: (row, position, vectors [n, width]) replacing token embeddings. Our own forward over the
    transformers modules, so embeddings can be injected and layers after the needed one are not run.
    """
    core = _core(encoder)
    layers = core.encoder.layers
    weight = core.embeddings.token_embedding.weight
    tokens = core.embeddings.token_embedding(ids.to(weight.device))
    for row, pos, vectors in injected:
        tokens[row, pos:pos + vectors.shape[0]] = vectors.to(tokens.device, tokens.dtype)
    h = core.embeddings(inputs_embeds=tokens)
    mask = _causal_mask(h.shape[1], h.dtype, h.device)
    wanted = len(layers) - skip
    out = h if wanted == 0 else None
    run = len(layers) if want_pooled else max(wanted, 0)
    for i, layer in enumerate(layers[:run]):
        h = layer(h, mask)
        if i + 1 == wanted:
            out = h
    if out is None:
        raise ValueError(f"clip skip too large for a {len(layers)}-layer text encoder")
    if final_norm:
        out = core.final_layer_norm(out)
    pooled = None
    if want_pooled:
        last = core.final_layer_norm(h)
        eos = (ids.to(last.device) == EOS_ID).int().argmax(dim=-1)
        pooled = last[torch.arange(last.shape[0], device=last.device), eos]
        if hasattr(encoder, "text_projection"):
            pooled = encoder.text_projection(pooled)
    return out, pooled


class PromptEncoder:
    """Encodes plain prompt texts for one loaded model; results are cached by text (LRU)."""

    def __init__(self, model, clip_skip: int = 1, emphasis: str = "Original", embeddings: Mapping | None = None,
                 cache_size: int = 64, offloader=None):
        if emphasis not in EMPHASIS_MODES:
            raise ValueError(f"unknown emphasis mode {emphasis!r}; choose one of {', '.join(EMPHASIS_MODES)}")
        self.model = model
        self.clip_skip = max(1, int(clip_skip))
        self.emphasis = emphasis
        self._tok = load_clip_tokenizer()
        dims = {f"te{i + 1}": te.config.hidden_size for i, te in enumerate(model.text_encoders)}
        fitting = {name: e for name, e in (embeddings or {}).items() if e.fits(dims)}
        self._embeddings = fitting
        self.skipped_embeddings = sorted(set(embeddings or {}) - set(fitting))
        self._index = EmbeddingIndex(fitting, self.tokenize) if fitting else None
        self._cache: OrderedDict[str, Conditioning] = OrderedDict()
        self._cache_size = cache_size
        self.offloader = offloader  # --medvram/--lowvram: brings each text encoder to the device while it runs

    def tokenize(self, text: str) -> list[int]:
        return self._tok(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    def tokenized(self, text: str) -> TokenizedPrompt:
        counts = {n: e.vector_count for n, e in self._embeddings.items()}
        return tokenize_prompt(text, self.tokenize, self.emphasis, self._index, counts)

    def token_count(self, text: str) -> tuple[int, int]:
        """(tokens used, token capacity of the chunks) as the UI counter shows it ("12/75")."""
        t = self.tokenized(text)
        return t.token_count, CHUNK * len(t.chunks)

    def encode(self, text: str) -> Conditioning:
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        cond = self._encode(self.tokenized(text))
        self._cache[text] = cond
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return cond

    def _encode(self, tp: TokenizedPrompt) -> Conditioning:
        specs = self.model.spec.text_encoders
        parts, pooled = [], None
        for role_i, (te, spec) in enumerate(zip(self.model.text_encoders, specs)):
            role = f"te{role_i + 1}"
            pad = 0 if spec.pad_with_zero else EOS_ID
            rows, injected = [], []
            for r, chunk in enumerate(tp.chunks):
                ids = [BOS_ID] + chunk.tokens + [EOS_ID] * (CHUNK - len(chunk.tokens) + 1)
                first_end = 1 + len(chunk.tokens)
                ids = ids[: first_end + 1] + [pad] * (len(ids) - first_end - 1)
                rows.append(ids)
                for pos, name in chunk.embeddings:
                    injected.append((r, 1 + pos, self._embeddings[name].vectors[role]))
            ids_t = torch.tensor(rows, dtype=torch.long)
            want_pooled = role_i == len(specs) - 1 and self.model.spec.unet.adm_in_channels is not None
            skip = spec.default_skip + self.clip_skip - 1
            with self.offloader.use(te) if self.offloader else contextlib.nullcontext():
                hidden, pool = run_text_encoder(te, ids_t, injected, skip, spec.final_norm, want_pooled)
            if want_pooled:
                pooled = pool[:1].float()
            parts.append(hidden.float())
        z = torch.cat(parts, dim=-1)  # [chunks, 77, width]
        if self.emphasis in ("Original", "No norm"):
            w = torch.tensor([[1.0] + c.weights + [1.0] * (CHUNK - len(c.weights) + 1) for c in tp.chunks],
                             dtype=z.dtype, device=z.device)
            if not torch.all(w == 1):
                means = z.mean(dim=(1, 2), keepdim=True)
                z = z * w[:, :, None]
                if self.emphasis == "Original":
                    z = z * _mean_ratio(means, z)
        return Conditioning(z.reshape(1, -1, z.shape[-1]), pooled)
