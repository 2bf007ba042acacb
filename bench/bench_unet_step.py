"""One UNet step (batch 2: cond + uncond) at SD1.5 size in each of our configurations, calls interleaved so that a
machine loaded by others slows all alike: diffusers' default (fp32), ours (bf16 + channels_last + convolution
weights kept in oneDNN's blocked layout on a CPU with native bf16), ours with the convolution weights re-laid out at
each call (as before modules/models/packed_conv.py) and ours with token merging at ``--token-merging``. Reports the
median and fastest call of each and their ratios against fp32. Quicker than bench_engine.py at 512² (no sampling loop, no VAE).
Run: python bench/bench_unet_step.py [--size 512] [--calls 3] [--token-merging 0.5] [--keep DIR]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_models import kept_sd15


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--token-merging", type=float, default=0.5)
    ap.add_argument("--keep", type=Path, help="folder for the SD1.5-size checkpoint (reused if present)")
    args = ap.parse_args()

    import torch

    from modules.devices import plan_devices
    from modules.models.loader import LoadOptions, load_checkpoint
    from modules.models.packed_conv import pack_convolutions
    from modules.processing.token_merging import TokenMerging

    path = kept_sd15(args.keep, "sd-bench-unet-")
    plan = plan_devices("cpu")
    full = load_checkpoint(path, LoadOptions(dtype=torch.float32, vae_dtype=torch.float32))
    options = LoadOptions(dtype=plan.dtype, vae_dtype=plan.vae_dtype, channels_last=plan.channels_last)
    ours, unpacked = load_checkpoint(path, options), load_checkpoint(path, options)
    if plan.packed_convs:
        pack_convolutions(ours.unet)
    side = args.size // 8
    x = torch.randn(2, 4, side, side, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 77, 768, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500.0, 500.0])

    def call(model, ratio: float = 0.0) -> float:
        unet = model.unet
        with TokenMerging(ratio) as merging:
            merging.cover(model)
            start = time.perf_counter()
            unet(x.to(unet.dtype), t, encoder_hidden_states=context.to(unet.dtype))
            return time.perf_counter() - start

    runs = {"diffusers default (fp32)": lambda: call(full), f"ours ({plan.precision})": lambda: call(ours),
            "ours, convolution weights re-laid out per call": lambda: call(unpacked),
            f"ours + token merging {args.token_merging}": lambda: call(ours, args.token_merging)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    print(f"SD1.5-size UNet, batch 2, {args.size}², torch threads {torch.get_num_threads()}; ours: {plan}")
    with torch.inference_mode():
        for run in runs.values():  # warm-up
            run()
        for _ in range(args.calls):
            for name, run in runs.items():
                times[name].append(run())
    base = times["diffusers default (fp32)"]
    for name, values in times.items():
        print(f"  {name}: median {statistics.median(values):.2f} s, fastest {min(values):.2f} s | ratio to fp32: "
              f"median {statistics.median(values) / statistics.median(base):.3f}, fastest {min(values) / min(base):.3f}")


if __name__ == "__main__":
    main()
