"""Checkpoint load / switch and LoRA apply benchmark on SD1.5-size checkpoints (random fp16 weights, original layout).

Writes two ~2 GB files to a temp dir, then reports in one run: first load of each, ten switches between them
(from the page cache), peak RSS, RSS growth over the switches, and LoRA apply/remove for a rank-32 LoRA.
Run: python bench/bench_models.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def kept_sd15(keep: Path | None, prefix: str) -> Path:
    """The SD1.5-size checkpoint ``sd15.safetensors`` in ``keep`` (a new temporary folder when None), written
    (seed 0) only when it is not there yet."""
    folder = keep or Path(tempfile.mkdtemp(prefix=prefix))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sd15.safetensors"
    if not path.exists():
        write_sd15(path, 0)
    return path


def write_sd15(path: Path, seed: int) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from modules.models.builders import build_on_meta
    from modules.models.export import original_state_dict, save_safetensors

    unet = build_on_meta(lambda: UNet2DConditionModel(
        sample_size=64, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, cross_attention_dim=768,
        attention_head_dim=8, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3))
    vae = build_on_meta(lambda: AutoencoderKL(
        block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4))
    te = build_on_meta(lambda: CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                            num_attention_heads=12, vocab_size=49408)))
    meta = original_state_dict(unet, vae, [te], __import__("modules.models.spec", fromlist=["Family"]).Family.SD1)
    g = torch.Generator().manual_seed(seed)
    tensors = {k: (torch.randn(v.shape, generator=g) * 0.02).to(torch.float16) for k, v in meta.items()}
    save_safetensors(tensors, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", type=Path, help="folder to write (and reuse) the two checkpoints in")
    args = ap.parse_args()
    import torch

    from modules.devices import plan_devices
    from modules.hashing import HashCache
    from modules.models.catalog import CheckpointCatalog, VaeCatalog
    from modules.models.manager import ModelManager

    folder = args.keep or Path(tempfile.mkdtemp(prefix="sd-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    names = ["bench-a.safetensors", "bench-b.safetensors"]
    for seed, name in enumerate(names):
        if not (folder / name).exists():
            t = time.perf_counter()
            write_sd15(folder / name, seed)
            print(f"wrote {name}: {(folder / name).stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - t:.1f} s")
    manager = ModelManager(CheckpointCatalog([folder], HashCache(folder / "hashes.json")), VaeCatalog(folder / "none"),
                           plan_devices("cpu"))
    base = rss_mb()
    first = []
    for name in names:
        t = time.perf_counter()
        manager.load(name)
        first.append(time.perf_counter() - t)
    rss_after_first = rss_mb()
    switches = []
    for i in range(10):
        t = time.perf_counter()
        manager.load(names[i % 2])
        switches.append(time.perf_counter() - t)
    rss_after = rss_mb()
    print(f"first load: {first[0]:.2f} s, {first[1]:.2f} s (the second takes over the first one's memory: same architecture)")
    print(f"switch x10: median {statistics.median(switches):.2f} s, max {max(switches):.2f} s")
    print(f"RSS: before {base:.0f} MiB, after first loads {rss_after_first:.0f} MiB, after 10 switches {rss_after:.0f} MiB "
          f"(growth {rss_after - rss_after_first:+.0f} MiB), peak {peak_rss_mb():.0f} MiB")
    print(f"torch threads {torch.get_num_threads()}")
    lora_timings(manager.current)


def lora_timings(model, rank: int = 32, repeats: int = 5) -> None:
    """Apply/remove a rank-``rank`` kohya LoRA (every transformer-block linear + CLIP linear) on the loaded model."""
    from bench.bench_lora import kohya_lora, median_of
    from modules.models.export import save_safetensors
    from modules.networks.active import ldm_names
    from modules.networks.lora import build_module_index, load_network
    from modules.networks.patcher import NetworkPatch, WeightPatcher

    models = {"unet": model.unet, "te1": model.text_encoders[0]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rank.safetensors"
        save_safetensors(kohya_lora(models, rank), path)
        network = load_network(path, build_module_index(models, ldm_names(model.unet)))
    patcher = WeightPatcher(models)
    full = [NetworkPatch(network)]
    first = median_of(1, patcher.release_backups, lambda: patcher.apply(full), "cpu")[0]
    apply = median_of(repeats, patcher.remove_all, lambda: patcher.apply(full), "cpu")[0]
    remove = median_of(repeats, lambda: patcher.apply(full), patcher.remove_all, "cpu")[0]
    patcher.release_backups()
    print(f"LoRA rank {rank} ({len(network.updates)} weights): first apply (with backups) {first:.2f} s, "
          f"apply median {apply:.2f} s, remove median {remove:.2f} s (target apply <= 0.5 s)")


if __name__ == "__main__":
    main()
