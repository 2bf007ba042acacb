"""The Checkpoint Merger on tiny checkpoints in the real key layouts: the formulas bit for bit, the file it writes
(name, metadata, sidecar), and the merges it refuses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from modules.hashing import HashCache
from modules.job_queue import JobQueue
from modules.models.catalog import CheckpointCatalog, VaeCatalog
from modules.models.loader import load_checkpoint
from modules.models.merge import MergeError, MergeParams, run_merge
from modules.processing.progress import JobProgress
from tests import tiny_models

REPO = Path(__file__).resolve().parents[1]
UNET_KEY = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
INPUT_CONV = "model.diffusion_model.input_blocks.0.0.weight"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    ckpt, vae = root / "models" / "Stable-diffusion", root / "models" / "VAE"
    vae.mkdir(parents=True)
    for name, family, seed in (("a", "sd1", 0), ("b", "sd1", 1), ("c", "sd1", 2), ("v2", "sd2", 0),
                               ("inpaint", "sd1-inpaint", 3)):
        tiny_models.write(family, ckpt / f"{name}.safetensors", seed=seed,
                          metadata={"ss_note": name} if name == "b" else None)
    (ckpt / "demo.safetensors").symlink_to(REPO / "models" / "Stable-diffusion" / "demo-shapes.safetensors")  # SD1
    (ckpt / "b.yaml").write_text("model:\n  params:\n    parameterization: \"eps\"\n")
    vae_sd = {k: v + 1 for k, v in load_file(ckpt / "c.safetensors").items() if k.startswith("first_stage_model.")}
    save_file(vae_sd, str(vae / "plus-one.safetensors"))
    return root


@pytest.fixture()
def catalogs(folders, tmp_path):
    hashes = HashCache(tmp_path / "hashes.json")
    return CheckpointCatalog([folders / "models" / "Stable-diffusion"], hashes), VaeCatalog(folders / "models" / "VAE")


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def _merge(catalogs, **kw) -> Path:
    result = run_merge(*catalogs, MergeParams(**kw))
    assert result.path is not None and result.path.is_file()
    return result.path


def _equal_bits(x: dict, y: dict) -> bool:
    return x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and torch.equal(x[k].view(torch.int32)
                                        if x[k].dtype == torch.float32 else x[k], y[k].view(torch.int32)
                                        if y[k].dtype == torch.float32 else y[k]) for k in x)


def test_weighted_sum_at_0_and_1_gives_each_model_bit_for_bit_and_halfway_their_mean(catalogs, folders):
    ckpt = folders / "models" / "Stable-diffusion"
    a, b = _tensors(ckpt / "a.safetensors"), _tensors(ckpt / "b.safetensors")
    assert _equal_bits(_tensors(_merge(catalogs, primary="a", secondary="b", multiplier=0.0, custom_name="m0")), a)
    assert _equal_bits(_tensors(_merge(catalogs, primary="a", secondary="b", multiplier=1.0, custom_name="m1")), b)
    path = _merge(catalogs, primary="a.safetensors", secondary="b", multiplier=0.25)
    assert path == ckpt / "0.75(a) + 0.25(b).safetensors"  # A1111's name, in the checkpoint folder
    half = _tensors(path)[UNET_KEY]
    assert torch.allclose(half, a[UNET_KEY] * 0.75 + b[UNET_KEY] * 0.25, rtol=0, atol=1e-6)
    assert not torch.equal(half, a[UNET_KEY])
    assert "0.75(a) + 0.25(b).safetensors" in [i.filename for i in catalogs[0].items()]  # the list is rescanned


def test_add_difference_is_a_plus_b_minus_c_times_m_with_the_recipe_and_the_config_sidecar(catalogs, folders):
    ckpt = folders / "models" / "Stable-diffusion"
    a, b, c = (_tensors(ckpt / f"{n}.safetensors") for n in "abc")
    path = _merge(catalogs, primary="a", secondary="b", tertiary="c", method="Add difference", multiplier=0.7)
    assert path.name == "a + 0.7(b - c).safetensors"
    out = _tensors(path)
    for key in (UNET_KEY, "first_stage_model.decoder.conv_out.weight",
                "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"):
        assert torch.allclose(out[key], a[key] + (b[key] - c[key]) * 0.7, rtol=0, atol=1e-6), key
        assert not torch.allclose(out[key], a[key], rtol=0, atol=1e-3), key
    position_ids = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    if position_ids in a:
        assert torch.equal(out[position_ids], a[position_ids])
    assert path.with_suffix(".yaml").read_text() == (ckpt / "b.yaml").read_text()  # "A, B or C": B has one

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    recipe = json.loads(meta["sd_merge_recipe"])
    hashes = [catalogs[0].sha256(catalogs[0].find(n)) for n in "abc"]
    assert recipe["type"] == "webui" and recipe["interp_method"] == "Add difference"
    assert [recipe[f"{k}_model_hash"] for k in ("primary", "secondary", "tertiary")] == hashes
    assert recipe["multiplier"] == 0.7 and recipe["config_source"] == 0 and recipe["is_inpainting"] is False
    models = json.loads(meta["sd_merge_models"])
    assert models[hashes[1]]["name"] == "b.safetensors" and len(models[hashes[1]]["legacy_hash"]) == 8
    assert meta["format"] == "pt" and meta["ss_note"] == "b"  # the models' own metadata is copied


def test_the_merged_file_loads_through_the_normal_path_and_the_options_apply(catalogs, folders):
    ckpt = folders / "models" / "Stable-diffusion"
    path = _merge(catalogs, primary="a", secondary="b", multiplier=0.5, save_as_half=True, bake_in_vae="plus-one",
                  custom_name="half")
    model = load_checkpoint(path)
    assert model.spec.family.value == "SD1"
    assert json.loads(model.metadata["sd_merge_recipe"])["save_as_half"] is True  # the recipe travels with it
    out = _tensors(path)
    assert {v.dtype for v in out.values() if v.is_floating_point()} == {torch.float16}
    c = _tensors(ckpt / "c.safetensors")
    key = "first_stage_model.decoder.conv_out.weight"
    assert torch.equal(out[key], (c[key] + 1).half())  # the VAE baked in
    assert json.loads(load_recipe(path))["bake_in_vae"] == "plus-one"

    kept = _tensors(_merge(catalogs, primary="a", method="No interpolation", discard_weights=r"^first_stage_model\.",
                           custom_name="no-vae"))
    assert sorted(kept) == sorted(k for k in _tensors(ckpt / "a.safetensors") if not k.startswith("first_stage"))


def load_recipe(path: Path) -> str:
    with safe_open(str(path), "pt") as f:
        return f.metadata()["sd_merge_recipe"]


def test_an_inpainting_a_merges_its_first_four_input_channels_with_a_normal_b(catalogs, folders):
    ckpt = folders / "models" / "Stable-diffusion"
    path = _merge(catalogs, primary="inpaint", secondary="a", multiplier=1.0)
    assert path.name == "0.0(inpaint) + 1.0(a).inpainting.safetensors"
    conv, a, inp = (_tensors(p)[INPUT_CONV] for p in (path, ckpt / "a.safetensors", ckpt / "inpaint.safetensors"))
    assert conv.shape[1] == 9 and torch.equal(conv[:, :4], a) and torch.equal(conv[:, 4:], inp[:, 4:])
    assert json.loads(load_recipe(path))["is_inpainting"] is True
    with pytest.raises(MergeError, match="Primary model \\(A\\) must be the inpaint model"):
        run_merge(*catalogs, MergeParams(primary="a", secondary="inpaint"))


def test_refused_merges_say_why_and_leave_no_file(catalogs, folders):
    ckpt = folders / "models" / "Stable-diffusion"
    before = sorted(p.name for p in ckpt.iterdir())
    cases = [
        ({"primary": "a", "secondary": "v2"}, ("Secondary model \\(B\\): v2.safetensors is SD2 but .* is SD1; "
                                                "checkpoints of different families cannot be merged")),
        ({"primary": "a", "secondary": "demo"}, ("Secondary model \\(B\\): demo.safetensors does not have the size "
                                                  "of a.safetensors .*only checkpoints of the same size")),
        ({"primary": "a", "secondary": ""}, "Secondary model \\(B\\): choose a checkpoint"),
        ({"primary": "a", "secondary": "b", "method": "Add difference"}, "Tertiary model \\(C\\): choose a checkpoint"),
        ({"primary": "a", "secondary": "nope"}, "no checkpoint named 'nope'"),
        ({"primary": "a", "secondary": "b", "discard_weights": "("}, "Discard weights with matching name: not a valid"),
        ({"primary": "a", "secondary": "b", "metadata_json": "{oops"}, "Metadata in JSON format: not valid JSON"),
        ({"primary": "a", "secondary": "b", "custom_name": "../x"}, "Custom Name: .* plain file name"),
        ({"primary": "a", "secondary": "b", "custom_name": "a"}, "Custom Name: a.safetensors is one of the models"),
        ({"primary": "a", "method": "No interpolation", "bake_in_vae": "none-such"}, "Bake in VAE: no VAE named"),
    ]
    for kw, message in cases:
        with pytest.raises(MergeError, match=message):
            run_merge(*catalogs, MergeParams(**kw))
    assert sorted(p.name for p in ckpt.iterdir()) == before


def test_a_merge_is_one_queue_job_with_progress_and_an_interrupted_one_leaves_no_file(catalogs, folders):
    ckpt = folders / "models" / "Stable-diffusion"
    progress = JobProgress()
    result = run_merge(*catalogs, MergeParams(primary="a", method="No interpolation", custom_name="copy"), progress)
    assert progress.step == progress.total_steps == result.tensors == len(_tensors(ckpt / "a.safetensors"))
    assert _equal_bits(_tensors(result.path), _tensors(ckpt / "a.safetensors"))

    stopped = JobProgress()
    stopped.interrupt()
    assert run_merge(*catalogs, MergeParams(primary="a", secondary="b", custom_name="gone"), stopped).interrupted
    assert not [p for p in ckpt.iterdir() if p.name.startswith((".gone", "gone"))]

    from types import SimpleNamespace

    from modules.models.merge import submit_merge

    state = SimpleNamespace(checkpoints=catalogs[0], vaes=catalogs[1], queue=JobQueue())
    job = submit_merge(state, MergeParams(primary="a", secondary="b", custom_name="queued"))
    assert job.wait(60).path == ckpt / "queued.safetensors" and job.progress.state == "done"
    with pytest.raises(MergeError, match="Secondary model"):  # refused before it is queued
        submit_merge(state, MergeParams(primary="a", secondary=""))
