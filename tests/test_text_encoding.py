"""Prompt encoding: chunking, word wrap, BREAK, emphasis modes, clip skip, embeddings, the encoding cache."""
from __future__ import annotations

import pytest
import torch

from modules.clip_tokenizer import EOS_ID
from modules.models.loader import load_checkpoint
from modules.networks.embeddings import Embedding
from modules.text_encoding import PromptEncoder, run_text_encoder
from tests import tiny_models


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return load_checkpoint(tiny_models.write("sd1", tmp_path_factory.mktemp("te") / "m.safetensors"))


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    return load_checkpoint(tiny_models.write("sd2", tmp_path_factory.mktemp("te2") / "m.safetensors"))


@pytest.mark.parametrize("prompt,chunks", [
    ("a red circle", 1),
    ("word " * 75, 1),
    ("word " * 76, 2),
    ("word " * 200, 3),
    ("a BREAK b BREAK c", 3),
    ("", 1),
])
def test_chunk_counts(sd1, prompt, chunks):
    enc = PromptEncoder(sd1)
    cond = enc.encode(prompt)
    assert cond.chunks == chunks and cond.context.shape == (1, 77 * chunks, 32)


def test_comma_word_wrap_moves_the_tail_to_the_next_chunk(sd1):
    enc = PromptEncoder(sd1)
    t = enc.tokenized(("word " * 70) + ", x y z w v u")
    assert [len(c.tokens) for c in t.chunks] == [71, 6]  # the comma ends chunk 1; the words after it move on


def test_matches_plain_transformers_encoding(sd1):
    enc = PromptEncoder(sd1)
    ids = enc.tokenize("a red circle")
    row = torch.tensor([[49406, *ids, EOS_ID] + [EOS_ID] * (75 - len(ids))])
    with torch.inference_mode():
        expected = sd1.text_encoders[0](row).last_hidden_state
    assert torch.allclose(enc.encode("a red circle").context, expected, atol=1e-6)


def _encodings(model, prompt: str) -> dict:
    return {mode: PromptEncoder(model, emphasis=mode).encode(prompt).context for mode in ("Original", "No norm")}


def test_emphasis_modes(sd1):
    plain = PromptEncoder(sd1).encode("a red circle").context
    ignore = PromptEncoder(sd1, emphasis="Ignore").encode("a (red:1.5) circle").context
    assert torch.allclose(ignore, plain, atol=1e-6)
    # the tiny encoder's final norm has no bias, so its outputs average to exactly 0: "Original" keeps the scale
    zero_mean = _encodings(sd1, "a (red:1.5) circle")
    assert torch.isfinite(zero_mean["Original"]).all() and torch.equal(zero_mean["Original"], zero_mean["No norm"])
    norm = sd1.text_encoders[0].final_layer_norm
    with torch.no_grad():
        norm.bias.add_(0.3)  # outputs with a mean, as a real CLIP's
        try:
            plain = PromptEncoder(sd1).encode("a red circle").context
            weighted = _encodings(sd1, "a (red:1.5) circle")
        finally:
            norm.bias.sub_(0.3)
    red = 2  # BOS, "a", "red"
    no_norm, original = weighted["No norm"], weighted["Original"]
    assert torch.allclose(no_norm[0, red], plain[0, red] * 1.5, atol=1e-5)
    assert plain.mean().abs() > 0.1 and torch.allclose(original.mean(), plain.mean(), atol=1e-5)  # mean restored
    assert torch.allclose(original, no_norm * (plain.mean() / no_norm.mean()), atol=1e-5)
    literal = PromptEncoder(sd1, emphasis="None").tokenized("a (red:1.5) circle")
    assert literal.token_count > 4  # brackets and number stay as text


def test_clip_skip_and_sd2_penultimate(sd1, sd2):
    assert not torch.equal(PromptEncoder(sd1, clip_skip=2).encode("x").context, PromptEncoder(sd1).encode("x").context)
    enc = PromptEncoder(sd2)
    ids = torch.tensor([[49406, *enc.tokenize("x"), EOS_ID] + [0] * 74])  # OpenCLIP pads with 0
    with torch.inference_mode():
        out = sd2.text_encoders[0](ids, output_hidden_states=True)
        core = sd2.text_encoders[0].text_model
        penultimate = core.final_layer_norm(out.hidden_states[-2])
    assert torch.allclose(enc.encode("x").context, penultimate, atol=1e-5)


def test_embedding_vectors_are_injected(sd1):
    enc = PromptEncoder(sd1)
    table = sd1.text_encoders[0].embeddings.token_embedding.weight
    red = enc.tokenize("red")[0]
    same_as_red = Embedding("myemb", {"te1": table[red:red + 1].detach().clone()})
    two = Embedding("twovec", {"te1": table[[red, red]].detach().clone()})
    with_emb = PromptEncoder(sd1, embeddings={"myemb": same_as_red, "twovec": two, "wide": Embedding("wide", {"te1": torch.zeros(1, 999)})})
    assert torch.allclose(with_emb.encode("a myemb circle").context, enc.encode("a red circle").context, atol=1e-6)
    assert with_emb.tokenized("twovec").token_count == 2
    assert with_emb.skipped_embeddings == ["wide"]  # wrong width for this model: not used
    # never split across chunks: 74 words + a 2-vector embedding starts a new chunk
    t = with_emb.tokenized("word " * 74 + "twovec")
    assert [len(c.tokens) for c in t.chunks] == [74, 2]


def test_encoding_cache(sd1):
    enc = PromptEncoder(sd1)
    calls = []
    layer = sd1.text_encoders[0].embeddings
    handle = layer.register_forward_hook(lambda *a: calls.append(1))
    try:
        enc.encode("same")
        enc.encode("same")
        enc.encode("other")
    finally:
        handle.remove()
    assert len(calls) == 2


def test_run_text_encoder_rejects_too_much_skip(sd1):
    with pytest.raises(ValueError, match="clip skip"):
        run_text_encoder(sd1.text_encoders[0], torch.tensor([[49406, 49407]]), [], 5, True, False)


def test_original_emphasis_keeps_the_mean_and_never_divides_by_a_zero_mean():
    from modules.text_encoding import _mean_ratio

    z = torch.tensor([[[1.0, 3.0]], [[-1.0, 1.0000001]]])  # chunk 0: mean 2; chunk 1: mean ~0
    ratio = _mean_ratio(torch.tensor([[[4.0]], [[5.0]]]), z)
    assert ratio[0].item() == pytest.approx(2.0)  # restores the unweighted mean 4 from 2
    assert ratio[1].item() == 1.0  # a weighted mean of ~0 would give a ratio of ~1e8 (NaN images on tiny encoders)
    assert torch.isfinite(ratio).all()
