"""LoRA apply/remove timing on SD1.5-size models (UNet + CLIP-L with random fp32 weights).

A rank-32 kohya LoRA over every attention linear / 1×1 projection of the UNet's transformer blocks and every
linear of the text encoder (the usual kohya targets) is written to a temp dir, loaded, then applied and removed.
Median of 5 for each case. Target on the 2-core CPU machine: apply ≤ 0.5 s.

    python bench/bench_lora.py [--rank 32] [--repeats 5] [--dtype float32|float16|bfloat16] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.networks.lora import build_module_index, load_network
from modules.networks.patcher import NetworkPatch, WeightPatcher


def build_models(dtype: torch.dtype, device: str) -> dict[str, torch.nn.Module]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    te = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768
        )
    )
    return {"unet": unet.to(device, dtype).eval(), "te1": te.to(device, dtype).eval()}


def kohya_lora(models: dict[str, torch.nn.Module], rank: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def add(stem: str, module: torch.nn.Module) -> None:
        out_features, fan_in = module.weight.shape[0], module.weight[0].numel()
        extra = (1, 1) if module.weight.dim() == 4 else ()
        state[f"{stem}.lora_down.weight"] = (torch.randn(rank, fan_in, *extra, generator=gen) * 0.01).half()
        state[f"{stem}.lora_up.weight"] = (torch.randn(out_features, rank, *extra, generator=gen) * 0.01).half()
        state[f"{stem}.alpha"] = torch.tensor(float(rank // 2))

    for name, module in models["unet"].named_modules():
        one_by_one = isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1)
        if ".attentions." in name and (isinstance(module, torch.nn.Linear) or one_by_one):
            add("lora_unet_" + name.replace(".", "_"), module)
    for name, module in models["te1"].named_modules():
        if isinstance(module, torch.nn.Linear):
            add("lora_te_text_model_" + name.replace(".", "_"), module)
    return state


def timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_of(repeats: int, setup: Callable[[], object], fn: Callable[[], object], device: str) -> tuple[float, float]:
    """(median, min) seconds of `fn` over `repeats` runs, each after `setup`."""
    samples = []
    for _ in range(repeats):
        setup()
        samples.append(timed(fn, device))
    return statistics.median(samples), min(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backup-device", default="cpu", help="'same' keeps backups beside the weights")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_grad_enabled(False)

    start = time.perf_counter()
    models = build_models(dtype, args.device)
    print(f"built SD1.5 UNet + CLIP-L ({args.dtype}, {args.device}) in {time.perf_counter() - start:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_rank.safetensors"
        from safetensors.torch import save_file

        state = kohya_lora(models, args.rank)
        save_file(state, str(path))
        size_mb = path.stat().st_size / 2**20
        start = time.perf_counter()
        index = build_module_index(models)
        index_s = time.perf_counter() - start
        start = time.perf_counter()
        net = load_network(path, index)
        load_s = time.perf_counter() - start
    touched = sum(models[r.role].get_submodule(r.module).weight.numel() for r in net.updates)
    print(
        f"LoRA rank {args.rank}: {len(net.updates)} weights ({touched / 1e6:.0f} M parameters), "
        f"file {size_mb:.0f} MiB; "
        f"index {index_s * 1000:.0f} ms, load {load_s * 1000:.0f} ms; unmatched {len(net.unmatched)}"
    )

    backup = None if args.backup_device == "same" else args.backup_device
    patcher = WeightPatcher(models, backup_device=backup)
    full, half = [NetworkPatch(net, 1.0, 1.0)], [NetworkPatch(net, 0.5, 0.5)]
    n = args.repeats
    results = {
        "first apply (incl. backups)": median_of(n, patcher.release_backups, lambda: patcher.apply(full), args.device),
        "apply": median_of(n, patcher.remove_all, lambda: patcher.apply(full), args.device),
        "remove all (restore)": median_of(n, lambda: patcher.apply(full), patcher.remove_all, args.device),
        "change weight 1 -> 0.5": median_of(n, lambda: patcher.apply(full), lambda: patcher.apply(half), args.device),
        "same set again (no-op)": median_of(n, lambda: patcher.apply(full), lambda: patcher.apply(full), args.device),
    }
    backup_mib = patcher.backup_bytes / 2**20
    patcher.release_backups()
    print(f"median of {n}, torch threads {torch.get_num_threads()}, backups held {backup_mib:.0f} MiB:")
    for what, (median, fastest) in results.items():
        print(f"  {what:<30} {median * 1000:8.1f} ms   (min {fastest * 1000:.1f} ms)")
    target = 0.5
    print(f"apply median / target ({target} s): {results['apply'][0] / target:.2f}")


if __name__ == "__main__":
    main()
