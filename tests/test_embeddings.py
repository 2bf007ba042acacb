"""Textual-inversion embeddings: each A1111 file format, the family it fits, and the pickle rule."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from modules.networks.catalog import PickleNotAllowedError
from modules.networks.embeddings import default_embedding_dirs, load_embedding, scan_embeddings

SD1 = {"te1": 768}
SD2 = {"te1": 1024}
SDXL = {"te1": 768, "te2": 1280}


def a1111_pt(vectors: torch.Tensor) -> dict:
    """The dict A1111's textual-inversion trainer pickles into a .pt file."""
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(vectors)},
        "name": "trained-name",
        "step": 1500,
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "v1-5-pruned",
    }


def test_safetensors_emb_params_sd1(tmp_path):
    vectors = torch.randn(3, 768)
    save_file({"emb_params": vectors}, str(tmp_path / "bad-hands.safetensors"))
    emb = load_embedding(tmp_path / "bad-hands.safetensors")
    assert (emb.name, emb.vector_count, emb.dims, emb.family) == ("bad-hands", 3, {"te1": 768}, "SD1")
    assert torch.equal(emb.vectors["te1"], vectors)
    assert emb.fits(SD1) and not emb.fits(SD2)
    assert not emb.fits(SDXL)  # CLIP-L vectors alone are an incomplete SDXL embedding


def test_safetensors_string_to_param_sd2(tmp_path):
    save_file({"string_to_param.*": torch.randn(5, 1024)}, str(tmp_path / "style.safetensors"))
    emb = load_embedding(tmp_path / "style.safetensors")
    assert (emb.vector_count, emb.dims, emb.family) == (5, {"te1": 1024}, "SD2")
    assert emb.fits(SD2) and not emb.fits(SD1)


def test_safetensors_sdxl_clip_l_and_clip_g(tmp_path):
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, str(tmp_path / "xl.safetensors"))
    emb = load_embedding(tmp_path / "xl.safetensors")
    assert (emb.vector_count, emb.dims, emb.family) == (2, {"te1": 768, "te2": 1280}, "SDXL")
    assert emb.fits(SDXL) and not emb.fits(SD1 | {"te2": 1024})


def test_sdxl_halves_with_different_counts_are_rejected(tmp_path):
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(3, 1280)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ValueError, match="odd.safetensors.*different vector counts"):
        load_embedding(tmp_path / "odd.safetensors")


def test_pickled_a1111_embedding_needs_the_flag(tmp_path):
    path = tmp_path / "old-style.pt"
    torch.save(a1111_pt(torch.randn(4, 768)), path)
    with pytest.raises(PickleNotAllowedError, match="--allow-pickle"):
        load_embedding(path)
    emb = load_embedding(path, allow_pickle=True)
    assert (emb.name, emb.vector_count, emb.family) == ("old-style", 4, "SD1")
    assert not emb.vectors["te1"].requires_grad


def test_allowed_pickle_still_refuses_code(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"string_to_param": {"*": Payload()}}, protocol=2))
    with pytest.raises(ValueError, match="evil.pt.*weights-only"):
        load_embedding(path, allow_pickle=True)
    assert "must never run" not in capsys.readouterr().out


def test_diffusers_single_token_bin(tmp_path):
    path = tmp_path / "cat-toy.bin"
    torch.save({"<cat-toy>": torch.randn(768)}, path)
    emb = load_embedding(path, allow_pickle=True)
    assert (emb.vector_count, emb.family) == (1, "SD1")


def test_scan_lists_both_folders_recursively_and_reports_what_it_skips(tmp_path):
    first, second = default_embedding_dirs(tmp_path)
    (first / "people").mkdir(parents=True)
    (second / "xl").mkdir(parents=True)
    save_file({"emb_params": torch.randn(2, 768)}, str(first / "people" / "face.safetensors"))
    save_file({"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}, str(second / "xl" / "sky.safetensors"))
    save_file({"emb_params": torch.randn(7, 768)}, str(second / "face.safetensors"))  # same name, later folder
    torch.save(a1111_pt(torch.randn(1, 1024)), first / "legacy.pt")
    save_file({"a.weight": torch.zeros(2), "b.weight": torch.zeros(2)}, str(first / "not-an-embedding.safetensors"))
    (first / "notes.txt").write_text("ignored")

    scan = scan_embeddings([first, second])
    assert {n: (e.vector_count, e.family) for n, e in scan.embeddings.items()} == {
        "face": (2, "SD1"),
        "sky": (1, "SDXL"),
    }
    assert set(scan.skipped) == {
        second / "face.safetensors",
        first / "legacy.pt",
        first / "not-an-embedding.safetensors",
    }
    assert "--allow-pickle" in scan.skipped[first / "legacy.pt"]
    assert "duplicate" in scan.skipped[second / "face.safetensors"]
    assert "not a textual-inversion embedding" in scan.skipped[first / "not-an-embedding.safetensors"]

    with_pickles = scan_embeddings([first, second], allow_pickle=True)
    assert with_pickles.embeddings["legacy"].family == "SD2"


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"emb_params": torch.randn(2, 768)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="cut.safetensors"):
        load_embedding(path)
