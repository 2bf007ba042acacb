"""Loopback (A1111's img2img script): img2img run again and again on its own output.

Each image of the batch count starts from the request's init image at the request's denoising strength; every loop
is an img2img job of the request (batch size 1, as in A1111) through :func:`run_generation` with the request's
always-on scripts, its output the next loop's input (an inpainting mask's content becomes "original" after the first
loop), its seed one more than the loop before. After loop ``i`` of ``loops`` the strength moves from the request's
towards ``final_denoising_strength`` by ``f(i / (loops - 1))``: Linear ``x``, Aggressive ``sin(x·π/2)``, Lazy
``1 - cos(x·π/2)``. Every loop's image (with one image of batch count) or each chain's last image (with more) is
kept, led by a one-row grid of them when there are several, as in A1111. Infotexts carry "Final denoising strength"
and "Denoising curve". The loops count as that many jobs for the request limits.

Arguments in A1111's order: ``loops``, ``final_denoising_strength``, ``denoising_curve``, ``append_interrogation``
(only "None": no interrogator ships with this application).
"""
from __future__ import annotations

import dataclasses
import math

from modules.hooks import HookPoint
from modules.processing import outputs, script_results
from modules.processing.params import steps_per_batch
from modules.processing.runner import JobResult
from modules.sampling import resolve_seed
from modules.scripts import Control, Script, run_generation

TITLE = "Loopback"
CURVES = {"Aggressive": lambda x: math.sin(x * math.pi / 2), "Linear": lambda x: x,
          "Lazy": lambda x: 1 - math.cos(x * math.pi / 2)}


def strengths(initial: float, final: float, loops: int, curve: str) -> list[float]:
    """The denoising strength of each loop: ``initial``, then along the curve to ``final`` at the last loop."""
    if loops == 1:
        return [initial]
    return [initial + (final - initial) * CURVES[curve](i / (loops - 1)) for i in range(loops)]


class Loopback(Script):
    title = TITLE
    alwayson = False
    kinds = ("img2img",)

    def __init__(self):
        self._fields: dict[int, dict] = {}  # id(loop job params) -> the infotext fields its images get

    def controls(self, kind: str) -> list[Control]:
        return [
            Control("loops", "slider", "Loops", 4, minimum=1, maximum=32, step=1),
            Control("final_denoising_strength", "slider", "Final denoising strength", 0.5, minimum=0, maximum=1,
                    step=0.01),
            Control("denoising_curve", "dropdown", "Denoising strength curve", "Linear", choices=tuple(CURVES)),
            Control("append_interrogation", "dropdown", "Append interrogated prompt at each iteration", "None",
                    choices=("None", "CLIP", "DeepBooru")),
        ]

    def infotext_fields(self, event) -> None:
        """App-wide INFOTEXT hook: the loop jobs of a running loopback get its fields."""
        event.fields.update(self._fields.get(id(event.params), {}))

    @staticmethod
    def _base(params, args: dict):
        """The request as every loop runs it (a copy; ValueError for an interrogator that is not available)."""
        if args["append_interrogation"] != "None":
            raise ValueError(f"{TITLE}: append_interrogation: {args['append_interrogation']} is not available "
                             "(no interrogator ships with this application); use None")
        return dataclasses.replace(params, batch_size=1, n_iter=1, do_not_save_grid=True)

    def planned_jobs(self, state, params, args: dict, alwayson: dict) -> list[tuple[object, dict]]:
        """Loops × batch count img2img jobs of one image each."""
        base = self._base(params, args)
        return [(base, alwayson)] * (int(args["loops"]) * int(params.n_iter))

    def run(self, state, params, args: dict, progress, alwayson: dict | None = None):
        base = self._base(params, args)
        loops, batches = int(args["loops"]), int(params.n_iter)
        settings = state.settings.current.with_overrides(params.override_settings)
        plan = strengths(float(params.denoising_strength), float(args["final_denoising_strength"]), loops,
                         args["denoising_curve"])
        fields = {"Final denoising strength": args["final_denoising_strength"],
                  "Denoising curve": args["denoising_curve"]}
        progress.begin(steps_per_batch(params, settings), loops * batches)
        seed, result, history = resolve_seed(int(params.seed)), JobResult(), []
        for n in range(batches):
            image, finished = base.init_images[0], None
            for i, strength in enumerate(plan):
                if progress.control.interrupted or progress.control.skipped:
                    break
                progress.start_batch(n * loops + i)
                job = dataclasses.replace(base, init_images=[image], denoising_strength=strength, seed=seed,
                                          inpainting_fill=base.inpainting_fill if i == 0 else 1)
                self._fields[id(job)] = fields
                try:
                    text = f"{TITLE}: loop {i + 1}/{loops}, batch {n + 1}/{batches}, step {{step}}"
                    one = run_generation(state, job, progress.nested(text), alwayson=alwayson)
                finally:
                    del self._fields[id(job)]
                seed = one.seeds[0] + 1
                if progress.control.interrupted or progress.control.skipped or not one.images:
                    break
                image, finished = one.images[0], one
                if batches == 1:
                    self._keep(result, history, progress, one)
            if batches > 1 and finished is not None:
                self._keep(result, history, progress, finished)
            progress.control.skipped = False
        result.interrupted = progress.control.interrupted
        if len(history) > 1:
            unsaved = script_results.unsaved_images(settings)
            script_results.lead_with_grid(state, settings, params, result, outputs.make_grid(history, rows=1), unsaved)
            result.warnings.extend(unsaved.report())
        script_results.finish_info(result)
        progress.finish()
        return result

    @staticmethod
    def _keep(result: JobResult, history: list, progress, one: JobResult) -> None:
        """Keep a loop's image in the result, the grid's row and the progress."""
        history.append(one.images[0])
        progress.images.append(one.images[0])
        script_results.add_job(result, one)


def register(api) -> None:
    """The script and the hook that writes its infotext fields."""
    script = Loopback()
    api.add_script(script)
    api.add_hook(HookPoint.INFOTEXT, script.infotext_fields)
