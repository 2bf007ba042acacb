"""How soon Interrupt acts inside a step: an SD1.5-size UNet (random fp32 weights) at 512×512, batch 2 (cond and
uncond, as CFG runs it), under the job's stop checks (``modules.processing.interrupt.stop_checks``).

Reports, from one run: the time of one step (one UNet call); from the times of the checks in an uninterrupted
call, the longest stretch without a check (the worst-case latency) and the expected latency of an interrupt at a
random moment, beside checking between steps only (half a step); and the latency measured for interrupts set from
another thread halfway between two checks at evenly spread points of the call. All also as fractions of the step.
Target: interrupt latency ≤ 1/10 of a step.
Run: python bench/bench_interrupt.py [--size 512] [--trials 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.processing.interrupt import checkpoints, stop_checks
from modules.sampling import Interrupted, SamplingControl


def sd15_unet(device: str) -> torch.nn.Module:
    """SD1.5's UNet layout with random weights (built on the meta device, then filled: no slow default init)."""
    from diffusers import UNet2DConditionModel

    from modules.models.builders import build_on_meta

    unet = build_on_meta(lambda: UNet2DConditionModel(
        sample_size=64, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, cross_attention_dim=768,
        attention_head_dim=8, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3))
    unet = unet.to_empty(device=device)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
        for b in unet.buffers():
            b.zero_()
    return unet.eval()


class Call:
    """One UNet call on the inputs of a 512² CFG step."""

    def __init__(self, unet, size: int, device: str):
        g = torch.Generator().manual_seed(1)
        self.unet = unet
        self.x = torch.randn(2, 4, size // 8, size // 8, generator=g).to(device)
        self.t = torch.tensor([500.0, 500.0], device=device)
        self.context = torch.randn(2, 77, 768, generator=g).to(device)

    def __call__(self) -> None:
        with torch.inference_mode():
            self.unet(self.x, self.t, encoder_hidden_states=self.context)
        if self.x.device.type == "cuda":
            torch.cuda.synchronize()


def check_times(call: Call) -> tuple[float, list[float]]:
    """(start, [time of each check …, end]) of one uninterrupted call."""
    stamps: list[float] = []
    handles = [m.register_forward_pre_hook(lambda m, a: stamps.append(time.perf_counter()))
               for m in checkpoints(call.unet)]
    try:
        start = time.perf_counter()
        call()
        stamps.append(time.perf_counter())
    finally:
        for h in handles:
            h.remove()
    return start, stamps


def interrupt_latency(call: Call, after_check: int, delay: float) -> float:
    """Seconds from an interrupt set (from another thread) ``delay`` s after check number ``after_check`` of a call
    until the call has stopped."""
    control = SamplingControl()
    reached, ended = threading.Event(), []
    target = checkpoints(call.unet)[after_check]
    handle = target.register_forward_pre_hook(lambda m, a: reached.set())

    def run() -> None:
        try:
            with stop_checks(call.unet, control):
                call()
        except Interrupted:
            pass
        ended.append(time.perf_counter())

    thread = threading.Thread(target=run)
    thread.start()
    reached.wait()
    time.sleep(delay)
    pressed = time.perf_counter()
    control.interrupted = True
    thread.join()
    handle.remove()
    return ended[0] - pressed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    t = time.perf_counter()
    unet = sd15_unet(args.device)
    count = len(checkpoints(unet))
    print(f"SD1.5-size UNet built in {time.perf_counter() - t:.1f} s; {count} checks per call; "
          f"{torch.get_num_threads()} torch threads on {args.device}")
    call = Call(unet, args.size, args.device)
    call()  # warm-up
    start, stamps = check_times(call)
    step = stamps[-1] - start
    gaps = [b - a for a, b in zip([start, *stamps], stamps)]  # gaps[i]: up to check i (the last: to the end)
    expected = sum(g * g for g in gaps) / (2 * step)  # an interrupt at a uniformly random moment of the call
    print(f"one step ({args.size}², batch 2): {step:.2f} s")
    print(f"longest stretch without a check: {max(gaps):.3f} s = {max(gaps) / step:.3f} of a step (worst case)")
    print(f"expected latency of an interrupt at a random moment: {expected:.3f} s = {expected / step:.3f} of a step; "
          f"checked between steps only: {step / 2:.2f} s = 0.500 of a step ({step / 2 / expected:.0f}× longer)")
    ratios = []
    for k in range(args.trials):
        after = min(count - 1, int(count * (k + 0.5) / args.trials))
        delay = gaps[after + 1] / 2  # halfway to the next check (or to the end)
        latency = interrupt_latency(call, after, delay)
        ratios.append(latency / step)
        print(f"  interrupt halfway after check {after}/{count}: stopped {latency:.3f} s later "
              f"(= {latency / step:.3f} of a step; the stretch is {gaps[after + 1]:.3f} s)")
    print(f"measured from another thread: mean {statistics.mean(ratios):.3f}, max {max(ratios):.3f} of a step "
          f"(target ≤ 0.100)")


if __name__ == "__main__":
    main()
