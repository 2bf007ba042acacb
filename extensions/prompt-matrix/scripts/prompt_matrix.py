"""Prompt matrix (A1111's script): one image per combination of the prompt's ``|``-separated parts, and a grid.

``a red circle|on blue|large`` makes 2² images: the first part alone, then with "on blue", with "large", with both
(combination ``c`` holds variable part ``n`` when bit ``n`` of ``c`` is set; parts joined by ", " or " ", after the
first part or before it). Each runs as a job of the request (batch size 1) through :func:`run_generation` with the
request's always-on scripts, all with the request's seed, or seed + i with ``different_seeds``. The grid leads the
result as in A1111: ``2^(k // 2)`` rows for ``k`` variable parts, the first half of the parts across the columns and
the rest down the rows, every label listing its parts, the absent ones grey and struck through; its infotext is the
first image's. At most ``limit_images_per_request`` images: more parts are refused before anything runs.

Arguments in A1111's order: ``put_at_start``, ``different_seeds``, ``prompt_type`` (positive, negative),
``variations_delimiter`` (comma, space), ``margin_size`` (px between the grid's cells).
"""
from __future__ import annotations

import dataclasses
import math

from PIL import Image, ImageDraw, ImageFont

from modules.processing import script_results
from modules.processing.params import ParamError, steps_per_batch
from modules.processing.runner import JobResult
from modules.sampling import resolve_seed
from modules.scripts import Control, Script, run_generation

TITLE = "Prompt matrix"
ACTIVE, INACTIVE = (0, 0, 0), (153, 153, 153)  # A1111's label colours


def combinations(text: str, put_at_start: bool, delimiter: str) -> list[str]:
    """Every prompt of the matrix, in A1111's order: combination ``c`` holds part ``n + 1`` when bit ``n`` is set."""
    first, *variable = text.split("|")
    prompts = []
    for c in range(2 ** len(variable)):
        chosen = [part.strip().strip(",") for n, part in enumerate(variable) if c & (1 << n)]
        prompts.append(delimiter.join([*chosen, first] if put_at_start else [first, *chosen]))
    return prompts


def _wrapped(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines = [""]
    for word in text.split():
        line = f"{lines[-1]} {word}".strip()
        if lines[-1] and draw.textlength(line, font=font) > width:
            lines.append(word)
        else:
            lines[-1] = line
    return lines


def _label(draw, parts: list[str], bits: int, font, width: int) -> list[tuple[str, bool]]:
    """A row's or column's label: each part's wrapped lines with whether the part is in its images."""
    return [(line, bool(bits & (1 << i))) for i, part in enumerate(parts) for line in _wrapped(draw, part, font, width)]


def matrix_grid(images: list[Image.Image], variable: list[str], margin: int = 0) -> Image.Image:
    """The labelled grid of a matrix's images (A1111's layout): the first ``ceil(k / 2)`` variable parts label the
    columns, the others the rows; ``margin`` px between cells."""
    half = math.ceil(len(variable) / 2)
    across, down = [p.strip() for p in variable[:half]], [p.strip() for p in variable[half:]]
    cols, rows = 2 ** len(across), 2 ** len(down)
    width, height = images[0].size
    font = ImageFont.load_default(size=max(10, (width + height) // 25))
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(sum(font.getmetrics()) * 1.1)
    left = width * 3 // 4 if down else 0
    col_labels = [_label(draw, across, c, font, width) for c in range(cols)] if across else []
    row_labels = [_label(draw, down, r, font, max(1, left - 4)) for r in range(rows)]
    top = max((len(lines) for lines in col_labels), default=0) * line_h + (line_h if col_labels else 0)
    grid = Image.new("RGB", (left + cols * width + margin * (cols - 1), top + rows * height + margin * (rows - 1)),
                     "white")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), (left + (i % cols) * (width + margin), top + (i // cols) * (height + margin)))
    draw = ImageDraw.Draw(grid)
    for c, lines in enumerate(col_labels):
        _draw_lines(draw, lines, left + c * (width + margin) + width / 2, (top - len(lines) * line_h) / 2, font, line_h)
    for r, lines in enumerate(row_labels):
        y = top + r * (height + margin) + (height - len(lines) * line_h) / 2
        _draw_lines(draw, lines, left / 2, y, font, line_h)
    return grid


def _draw_lines(draw, lines: list[tuple[str, bool]], centre_x: float, y: float, font, line_h: int) -> None:
    """Label lines centred on ``centre_x`` from ``y`` down; inactive ones grey and struck through."""
    for n, (text, active) in enumerate(lines):
        top = y + n * line_h
        draw.text((centre_x, top), text, fill=ACTIVE if active else INACTIVE, font=font, anchor="ma")
        if not active:
            half = draw.textlength(text, font=font) / 2
            middle = top + line_h * 0.45
            draw.line((centre_x - half, middle, centre_x + half, middle), fill=INACTIVE, width=max(1, line_h // 14))


class PromptMatrix(Script):
    title = TITLE
    alwayson = False

    def controls(self, kind: str) -> list[Control]:
        return [
            Control("put_at_start", "checkbox", "Put variable parts at start of prompt", False),
            Control("different_seeds", "checkbox", "Use different seed for each picture", False),
            Control("prompt_type", "radio", "Select prompt", "positive", choices=("positive", "negative")),
            Control("variations_delimiter", "radio", "Select joining char", "comma", choices=("comma", "space")),
            Control("margin_size", "slider", "Grid margins (px)", 0, minimum=0, maximum=500, step=2),
        ]

    @staticmethod
    def _text(params, args: dict) -> str:
        return params.prompt if args["prompt_type"] == "positive" else params.negative_prompt

    def jobs(self, state, params, args: dict) -> list:
        """One job per combination (batch size 1), the request's seed fixed once (ParamError when too many)."""
        field = "prompt" if args["prompt_type"] == "positive" else "negative_prompt"
        variable = self._text(params, args).count("|")
        limit = state.settings.current.limit_images_per_request
        if variable.bit_length() > 16 or 2 ** variable > limit:
            raise ParamError(field, f"{TITLE}: {variable} variable parts make 2^{variable} images; at most {limit} "
                                    "(setting limit_images_per_request)")
        prompts = combinations(self._text(params, args), args["put_at_start"],
                               ", " if args["variations_delimiter"] == "comma" else " ")
        seed, subseed = resolve_seed(int(params.seed)), resolve_seed(int(params.subseed))
        step = 1 if args["different_seeds"] else 0
        return [dataclasses.replace(params, **{field: prompt}, seed=seed + i * step, subseed=subseed, batch_size=1,
                                    n_iter=1, do_not_save_grid=True) for i, prompt in enumerate(prompts)]

    def planned_jobs(self, state, params, args: dict, alwayson: dict) -> list[tuple[object, dict]]:
        """Every combination's job."""
        return [(job, alwayson) for job in self.jobs(state, params, args)]

    def run(self, state, params, args: dict, progress, alwayson: dict | None = None):
        jobs = self.jobs(state, params, args)
        settings = state.settings.current.with_overrides(params.override_settings)
        progress.begin(steps_per_batch(params, settings), len(jobs))
        result = JobResult()
        for k, job in enumerate(jobs):
            if progress.control.interrupted:
                break
            progress.start_batch(k)
            one = run_generation(state, job, progress.nested(f"{TITLE}: image {k + 1}/{len(jobs)}, step {{step}}"),
                                 alwayson=alwayson)
            progress.images.extend(one.images)
            script_results.add_job(result, one)
        result.interrupted = progress.control.interrupted
        if len(result.images) == len(jobs) and len(jobs) > 1:
            grid = matrix_grid(result.images, self._text(params, args).split("|")[1:], int(args["margin_size"]))
            unsaved = script_results.unsaved_images(settings)
            script_results.lead_with_grid(state, settings, params, result, grid, unsaved)
            result.warnings.extend(unsaved.report())
        script_results.finish_info(result, prompt=params.prompt, negative_prompt=params.negative_prompt)
        progress.finish()
        return result


