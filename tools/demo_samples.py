"""The README's sample image: the bundled model through the app's runner, 6 prompts × 3 seeds, labelled grid
(cells shown at 2×). Run: python tools/demo_samples.py"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")

PROMPTS = ["a large red circle on a blue background, left", "a large yellow square on a black background, center",
           "a small white triangle on a green background, top", "a large purple circle on a yellow background, right",
           "a large orange triangle on a white background, bottom", "a small blue square on a red background, left"]
SEEDS = (1, 2, 3)


def main() -> None:
    from PIL import Image

    from bench.bench_demo_quality import DEMO, make_state
    from modules.processing.outputs import labelled_grid
    from modules.processing.params import Txt2ImgParams
    from modules.processing.runner import run_job

    with tempfile.TemporaryDirectory() as tmp:
        state = make_state(DEMO, Path(tmp))
        cells = []
        for seed in SEEDS:
            for prompt in PROMPTS:
                params = Txt2ImgParams(prompt=prompt, seed=seed, steps=20, sampler_name="DPM++ 2M", scheduler="Karras",
                                       width=64, height=64, do_not_save_samples=True, do_not_save_grid=True)
                cells.append(run_job(state, params).images[0].resize((128, 128), Image.NEAREST))
    grid = labelled_grid(cells, [p.removeprefix("a ") for p in PROMPTS], [f"seed {s}" for s in SEEDS])
    grid.save(ROOT / "docs" / "demo-samples.png")


if __name__ == "__main__":
    main()
