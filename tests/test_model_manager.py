"""Checkpoint discovery, hashing, switching, the RAM cache, VAE selection and failure safety."""
from __future__ import annotations

import gc
import hashlib
import shutil
import weakref

import pytest
import torch

from modules.devices import plan_devices
from modules.hashing import HashCache
from modules.models import builders, keymap
from modules.models.catalog import CheckpointCatalog, VaeCatalog
from modules.models.export import save_safetensors
from modules.models.manager import ModelManager
from modules.models.safetensors_file import ModelFileError
from tests import tiny_models


@pytest.fixture
def folders(tmp_path):
    ckpt = tmp_path / "models" / "Stable-diffusion"
    vae = tmp_path / "models" / "VAE"
    (ckpt / "sub").mkdir(parents=True)
    vae.mkdir(parents=True)
    tiny_models.write("sd1", ckpt / "alpha.safetensors", seed=1)
    tiny_models.write("sd2", ckpt / "sub" / "beta.safetensors", seed=2)
    return tmp_path, ckpt, vae


def _manager(tmp_path, ckpt, vae, cache_size=1):
    hashes = HashCache(tmp_path / "data" / "cache" / "hashes.json")
    return ModelManager(CheckpointCatalog([ckpt], hashes), VaeCatalog(vae), plan_devices("cpu", precision="full"),
                        cache_size=cache_size)


def _denoise(model):
    """One UNet call with fixed inputs: what a sampling step would see."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 77, model.unet.config.cross_attention_dim, generator=g)
    with torch.inference_mode():
        return model.unet(x, torch.tensor([10.0]), encoder_hidden_states=ctx).sample


def test_discovery_titles_hashes_and_families(folders):
    tmp_path, ckpt, vae = folders
    hashes = HashCache(tmp_path / "cache.json")
    catalog = CheckpointCatalog([ckpt], hashes)
    items = {i.filename: i for i in catalog.items()}
    assert set(items) == {"alpha.safetensors", "sub/beta.safetensors"}
    beta = items["sub/beta.safetensors"]
    assert catalog.short_hash(beta, compute=False) is None  # lazy: nothing hashed by listing
    expected = hashlib.sha256(beta.path.read_bytes()).hexdigest()
    assert catalog.title(beta, compute_hash=True) == f"sub/beta.safetensors [{expected[:10]}]"
    assert catalog.family(beta) == "SD2" and catalog.family(items["alpha.safetensors"]) == "SD1"
    # the hash survives in the cache file, keyed by path + size + mtime
    assert HashCache(tmp_path / "cache.json").cached(beta.path) == expected
    assert catalog.find(expected[:10]) == beta and catalog.find("sub/beta") == beta and catalog.find("beta") == beta
    assert catalog.find(str(tmp_path / "elsewhere.safetensors")) is None
    tiny_models.write("sd1", ckpt / "gamma.safetensors", seed=3)
    assert "gamma.safetensors" not in {i.filename for i in catalog.items()}
    assert "gamma.safetensors" in {i.filename for i in catalog.refresh()}


def test_switching_and_failed_load_keeps_previous(folders):
    tmp_path, ckpt, vae = folders
    manager = _manager(tmp_path, ckpt, vae)
    alpha = manager.load("alpha")
    reference = _denoise(alpha)
    shutil.copy(ckpt / "alpha.safetensors", ckpt / "broken.safetensors")
    with open(ckpt / "broken.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    manager.catalog.refresh()
    with pytest.raises(ModelFileError, match="broken.safetensors.*truncated"):
        manager.load("broken")
    assert manager.current is alpha and manager.current_info.filename == "alpha.safetensors"
    assert torch.equal(_denoise(manager.current), reference)  # still generating, same output
    with pytest.raises(ModelFileError, match="not found"):
        manager.load("../../etc/passwd")

    beta = manager.load("sub/beta.safetensors")
    assert beta.family.value == "SD2"
    ref = weakref.ref(alpha.unet)
    del alpha
    gc.collect()
    assert ref() is None  # cache of 1: the previous model is really released
    assert torch.equal(_denoise(manager.load("alpha")), reference)


def test_cache_keeps_previous_model_in_ram(folders):
    tmp_path, ckpt, vae = folders
    manager = _manager(tmp_path, ckpt, vae, cache_size=2)
    alpha = manager.load("alpha")
    manager.load("beta")
    assert manager.load("alpha") is alpha  # served from RAM, not reloaded


def test_vae_choices_do_not_reload_the_unet(folders):
    tmp_path, ckpt, vae_dir = folders
    _, own_vae, _, _ = tiny_models.build("sd1", seed=1)
    _, other, _, _ = tiny_models.build("sd1", seed=7)
    spec = builders.vae_spec_from_config(other.config)
    save_safetensors(keymap.export_vae(other.state_dict(), spec, "first_stage_model."), vae_dir / "other.safetensors")
    manager = _manager(tmp_path, ckpt, vae_dir)
    model = manager.load("alpha")
    unet = model.unet
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        own_image = manager.decode(z)
        manager.set_vae("other.safetensors")
        other_image = manager.decode(z)
        assert not torch.equal(own_image, other_image) and model.unet is unet
        manager.set_vae("None")
        assert torch.equal(manager.decode(z), own_image)
        # Automatic: a VAE named like the checkpoint wins
        shutil.copy(vae_dir / "other.safetensors", ckpt / "alpha.vae.safetensors")
        manager.set_vae("Automatic")
        assert torch.equal(manager.decode(z), other_image)
    with pytest.raises(ModelFileError, match="VAE not found"):
        manager.set_vae("missing.safetensors")


def _weights(model) -> dict[str, torch.Tensor]:
    parts = {"unet": model.unet, "vae": model.vae, **{f"te{i}": te for i, te in enumerate(model.text_encoders)}}
    return {f"{role}.{k}": v.clone() for role, m in parts.items() for k, v in m.state_dict().items()}


def test_switch_within_one_architecture_reuses_memory_and_equals_a_fresh_load(folders):
    tmp_path, ckpt, vae = folders
    tiny_models.write("sd1", ckpt / "gamma.safetensors", seed=3)
    fresh = {name: _weights(_manager(tmp_path, ckpt, vae).load(name)) for name in ("alpha", "gamma")}
    manager = _manager(tmp_path, ckpt, vae)
    alpha = manager.load("alpha")
    pointer, old_unet = alpha.unet.conv_in.weight.data_ptr(), weakref.ref(alpha.unet)
    for name in ("gamma", "alpha", "gamma"):
        model = manager.load(name)
        got = _weights(model)
        assert got.keys() == fresh[name].keys()
        assert all(torch.equal(got[k], fresh[name][k]) for k in got), name  # bit-identical to loading it alone
        assert model.unet.conv_in.weight.data_ptr() == pointer  # the outgoing model's memory took the weights
    del alpha, model
    gc.collect()
    assert old_unet() is None  # new module objects each time: nothing keyed on the old ones survives


def test_switch_to_a_same_family_file_with_a_bad_layout_keeps_the_previous_model(folders):
    tmp_path, ckpt, vae = folders
    from safetensors.torch import load_file, save_file

    state = load_file(str(ckpt / "alpha.safetensors"))
    del state["first_stage_model.decoder.conv_out.bias"]
    save_file(state, str(ckpt / "damaged.safetensors"))
    manager = _manager(tmp_path, ckpt, vae)
    alpha = manager.load("alpha")
    reference = _denoise(alpha)
    before = _weights(alpha)
    with pytest.raises(ModelFileError, match="damaged.safetensors"):
        manager.load("damaged")
    assert manager.current is alpha and torch.equal(_denoise(alpha), reference)
    assert all(torch.equal(v, before[k]) for k, v in _weights(alpha).items())


def test_lora_state_is_dropped_with_its_model_and_never_leaks_into_the_next(tmp_path):
    from modules.networks.active import model_roles
    from modules.prompts.network_tags import extract_network_tags
    from tests.engine_fixtures import make_state
    from tests.test_lora import make_kohya_lora, save

    state = make_state(tmp_path, {"alpha": "sd1", "gamma": "sd1"}, load="alpha")
    fresh_gamma = _weights(_manager(tmp_path, tmp_path / "models" / "Stable-diffusion", tmp_path / "none").load("gamma"))
    alpha = state.models.current
    (tmp_path / "models" / "Lora").mkdir(parents=True, exist_ok=True)
    save(tmp_path / "models" / "Lora", "style", make_kohya_lora(model_roles(alpha)))
    state.networks.refresh()
    warnings: list[str] = []
    state.networks.activate(alpha, extract_network_tags("x <lora:style:1>")[1], warnings, {})
    assert not warnings and state.networks.patcher(alpha).applied  # alpha's weights now carry the LoRA
    old_unet = weakref.ref(alpha.unet)
    del alpha
    gamma = state.models.load("gamma")
    assert all(torch.equal(v, fresh_gamma[k]) for k, v in _weights(gamma).items())
    gc.collect()
    assert old_unet() is None  # the patcher (which holds the model) went with it: no leak per switch
    state.networks.activate(gamma, [], warnings, {})
    assert all(torch.equal(v, fresh_gamma[k]) for k, v in _weights(gamma).items())


def test_hash_prefetch_runs_in_the_background_and_concurrent_requests_agree(tmp_path, monkeypatch):
    import threading

    from modules import hashing

    big = tmp_path / "big.safetensors"
    big.write_bytes(bytes(range(256)) * (40 * 4096))  # 40 MiB
    expected = hashlib.sha256(big.read_bytes()).hexdigest()
    real, gate, started, calls = hashing.sha256_file, threading.Event(), threading.Event(), []

    def held_back(path, **kw):  # the real hash, once the test lets it go on
        calls.append(threading.current_thread().name)
        started.set()
        gate.wait(10)
        return real(path, **kw)

    monkeypatch.setattr(hashing, "sha256_file", held_back)
    hashes = HashCache(tmp_path / "hashes.json")
    hashes.prefetch(big)  # returns while its thread is still hashing
    assert started.wait(10) and hashes.cached(big) is None
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(hashes.get(big))) for _ in range(3)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert results == [expected] * 3 and hashes.cached(big) == expected
    assert calls == ["hash"]  # hashed once, by the background thread; the requests waited for it
    assert HashCache(tmp_path / "hashes.json").cached(big) == expected  # persisted
