"""Prompts from file or textbox (A1111's script): one job per line of a list, each line a prompt or a set of options.

A line that starts with ``--`` holds options in A1111's command-line syntax, e.g.
``--prompt "a red circle" --negative_prompt blurry --steps 10 --seed 5``: ``--prompt`` and ``--negative_prompt``
take every word up to the next option, the others one value (quote values with spaces). Any other line is a plain
prompt. A line's prompt is joined to the request's prompt with a space, before it or after it
(``prompt_position``), as in A1111; its other options replace the request's values for that line's job. The options
are A1111's: ``sd_model``, ``outpath_samples``, ``outpath_grids``, ``prompt_for_display`` (accepted, not used),
``prompt``, ``negative_prompt``, ``styles`` (comma-separated names), ``seed``, ``subseed_strength``, ``subseed``,
``seed_resize_from_h``, ``seed_resize_from_w``, ``sampler_index``, ``sampler_name``, ``batch_size``, ``n_iter``,
``steps``, ``cfg_scale``, ``width``, ``height``, ``restore_faces``, ``tiling``, ``do_not_save_samples``,
``do_not_save_grid`` (booleans: ``true`` or anything else for false).

Every line's job is checked as a request is (:meth:`GenerationParams.validate`, the sampler, the override settings
with their output folders confined)
before anything runs; an unknown option or an unusable value is a :class:`ParamError` naming ``prompt_txt`` and the
line (HTTP 400), where A1111 would use the line as a prompt. The jobs run through :func:`run_generation` with the
request's always-on scripts; their images are kept and saved as the jobs' own (no grid, as in A1111).

Arguments in A1111's order: ``checkbox_iterate`` (the seed goes up by batch size × batch count after every line),
``checkbox_iterate_batch`` (a random seed is drawn once for all lines), ``prompt_position`` (start, end),
``prompt_txt`` (the lines: the file's text).
"""
from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable

from modules.processing import script_results
from modules.processing.params import ParamError, steps_per_batch
from modules.processing.runner import JobResult
from modules.sampling import resolve_seed
from modules.sampling.registry import SAMPLERS, resolve
from modules.scripts import Control, Script, run_generation

TITLE = "Prompts from file or textbox"
JOINED = ("prompt", "negative_prompt")  # options that take every word up to the next option


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _flag(text: str) -> bool:
    return text == "true"  # A1111: anything but "true" is false


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _sampler_at(text: str) -> str:
    index = _whole(text)
    if not 0 <= index < len(SAMPLERS):
        raise ValueError(f"{index} is not a sampler index (0..{len(SAMPLERS) - 1})")
    return SAMPLERS[index].name


@dataclasses.dataclass(frozen=True)
class LineOption:
    """Where a line's ``--name value`` goes: a job field, an override setting, or nowhere (accepted for A1111)."""

    target: str | None
    convert: Callable[[str], object] = str
    setting: bool = False


OPTIONS: dict[str, LineOption] = {
    "sd_model": LineOption("sd_model_checkpoint", setting=True),
    "outpath_samples": LineOption("outdir_samples", setting=True),
    "outpath_grids": LineOption("outdir_grids", setting=True),
    "prompt_for_display": LineOption(None),
    "prompt": LineOption("prompt"),
    "negative_prompt": LineOption("negative_prompt"),
    "styles": LineOption("styles", _names),
    "seed": LineOption("seed", _whole),
    "subseed_strength": LineOption("subseed_strength", _number),
    "subseed": LineOption("subseed", _whole),
    "seed_resize_from_h": LineOption("seed_resize_from_h", _whole),
    "seed_resize_from_w": LineOption("seed_resize_from_w", _whole),
    "sampler_index": LineOption("sampler_name", _sampler_at),
    "sampler_name": LineOption("sampler_name"),
    "batch_size": LineOption("batch_size", _whole),
    "n_iter": LineOption("n_iter", _whole),
    "steps": LineOption("steps", _whole),
    "cfg_scale": LineOption("cfg_scale", _number),
    "width": LineOption("width", _whole),
    "height": LineOption("height", _whole),
    "restore_faces": LineOption("restore_faces", _flag),
    "tiling": LineOption("tiling", _flag),
    "do_not_save_samples": LineOption("do_not_save_samples", _flag),
    "do_not_save_grid": LineOption("do_not_save_grid", _flag),
}


def parse_line(line: str) -> dict[str, str]:
    """A line's options by name (raw text); a line that does not start with ``--`` is ``{"prompt": line}``.
    ValueError for an unknown option, a missing value or unbalanced quotes."""
    if not line.startswith("--"):
        return {"prompt": line}
    words = shlex.split(line)
    options, i = {}, 0
    while i < len(words):
        word = words[i]
        name = word[2:] if word.startswith("--") else None
        if name not in OPTIONS:
            what = f"unknown option {word}" if name is not None else f"{word!r} is not an option (they start with --)"
            raise ValueError(f"{what}; known: {', '.join('--' + n for n in OPTIONS)}")
        if i + 1 >= len(words) or (name in JOINED and words[i + 1].startswith("--")):
            raise ValueError(f"{word} needs a value")
        end = i + 2
        while name in JOINED and end < len(words) and not words[end].startswith("--"):
            end += 1
        options[name] = " ".join(words[i + 1:end])
        i = end
    return options


def _joined(own: str, request: str, position: str) -> str:
    """A line's prompt with the request's, as A1111 joins them (a space between; the line's first at "start")."""
    if not (own and request):
        return own or request
    return f"{own} {request}" if position == "start" else f"{request} {own}"


class PromptsFromFile(Script):
    title = TITLE
    alwayson = False

    def __init__(self, state):
        self.catalog = state.models.catalog

    def controls(self, kind: str) -> list[Control]:
        return [
            Control("checkbox_iterate", "checkbox", "Iterate seed every line", False),
            Control("checkbox_iterate_batch", "checkbox", "Use same random seed for all lines", False),
            Control("prompt_position", "radio", "Insert prompts at the", "start", choices=("start", "end")),
            Control("prompt_txt", "textarea", "List of prompt inputs", "",
                    tooltip="One prompt per line, or options: --prompt \"a red circle\" --steps 10 --seed 5",
                    upload="Upload prompt inputs"),
        ]

    def _line_job(self, state, base, line: str, position: str):
        """The job of one line: ``base`` (a copy) with the line's options, checked as a request (ValueError)."""
        options = parse_line(line)
        job = dataclasses.replace(base, override_settings=dict(base.override_settings))
        for name, text in options.items():
            option = OPTIONS[name]
            try:
                value = option.convert(text)
            except ValueError as e:
                raise ValueError(f"--{name}: {e}") from None
            if name == "sd_model":
                info = self.catalog.find(value)
                if info is None:
                    raise ValueError(f"--sd_model: unknown checkpoint {value!r}")
                value = self.catalog.title(info)
            if option.setting:
                job.override_settings[option.target] = value
            elif option.target in JOINED:
                setattr(job, option.target, _joined(value, getattr(base, option.target), position))
            elif option.target is not None:
                setattr(job, option.target, value)
        dataclasses.replace(job).validate()
        resolve(job.sampler_name, job.scheduler)
        state.settings.checked(job.override_settings)  # output folders confined as a request's are
        return job

    def jobs(self, state, params, args: dict) -> list:
        """One job per non-empty line, seeds as the checkboxes say (ParamError naming ``prompt_txt`` and the line)."""
        lines = [line.strip() for line in str(args["prompt_txt"]).splitlines()]
        numbered = [(n, line) for n, line in enumerate(lines, 1) if line]
        if not numbered:
            raise ParamError("prompt_txt", "no prompts: the list is empty")
        base = dataclasses.replace(params, do_not_save_grid=True)
        if (args["checkbox_iterate"] or args["checkbox_iterate_batch"]) and int(base.seed) == -1:
            base.seed = resolve_seed(-1)
        jobs, seed = [], int(base.seed)
        for n, line in numbered:
            try:
                jobs.append(self._line_job(state, dataclasses.replace(base, seed=seed), line, args["prompt_position"]))
            except ValueError as e:
                raise ParamError("prompt_txt", f"line {n} ({line[:80]}): {e}") from None
            if args["checkbox_iterate"]:
                seed += int(base.batch_size) * int(base.n_iter)
        return jobs

    def planned_jobs(self, state, params, args: dict, alwayson: dict) -> list[tuple[object, dict]]:
        """Every line's job (its own batch size, batch count and size count towards the request limits)."""
        return [(job, alwayson) for job in self.jobs(state, params, args)]

    def run(self, state, params, args: dict, progress, alwayson: dict | None = None):
        jobs = self.jobs(state, params, args)
        settings = state.settings.current
        counts = [steps_per_batch(job, settings) * int(job.n_iter) for job in jobs]
        progress.begin(sum(counts), 1)
        original_model = state.models.current_info
        result = JobResult()
        try:
            for k, job in enumerate(jobs):
                if progress.control.interrupted:
                    break
                progress.step = max(progress.step, sum(counts[:k]))
                child = progress.nested(f"{TITLE}: line {k + 1}/{len(jobs)}, step {{step}}")
                one = run_generation(state, job, child, alwayson=alwayson)
                progress.images.extend(one.images)
                script_results.add_job(result, one)
        finally:
            if original_model is not None and state.models.current_info != original_model:
                state.models.load(original_model)
        result.interrupted = progress.control.interrupted
        script_results.finish_info(result)
        progress.finish()
        return result


def register(api) -> None:
    """The script (it reads the checkpoint list for ``--sd_model``)."""
    api.add_script(PromptsFromFile(api.state))
