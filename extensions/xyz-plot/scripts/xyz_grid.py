"""X/Y/Z plot: one job per combination of up to three axes' values, shown as a labelled grid.

Built-in axes change the job's parameters; other extensions add axes by contributing :class:`XyzAxis` values under
the topic ``"xyz_axis"`` (the hires fix adds "Hires steps", "Hires upscaler" and txt2img "Denoising"). Values are
comma-separated (quotes as in CSV); numeric axes also take ranges: ``1-5``, ``1-10 (+2)``, ``10-1 (-3)``,
``1-10 [5]`` (5 evenly spaced values). Each cell runs through :func:`modules.scripts.run_generation` with the
request's always-on scripts, so a cell is exactly the single run with those settings. A checkpoint axis switches
models; the model loaded before the plot is loaded again afterwards.
"""
from __future__ import annotations

import copy
import csv
import itertools
import math
import re

from PIL import Image

from modules.processing import outputs
from modules.processing.params import Img2ImgParams
from modules.processing.runner import JobResult
from modules.prompts.styles import load_styles
from modules.sampling import resolve_seed
from modules.sampling.registry import SAMPLERS, SCHEDULES, resolve
from modules.scripts import Control, Script, XyzAxis, XyzCell, find_script, named_args, run_generation

TITLE = "X/Y/Z plot"
NOTHING = "Nothing"
DEFAULT_MAX_VALUES = 1000  # an axis's values when no limit is given (the limit_images_per_request setting's default)
_RANGE = re.compile(r"^\s*([+-]?[\d.]+)\s*-\s*([+-]?[\d.]+)\s*(?:\(\s*([+-]?[\d.]+)\s*\)|\[\s*(\d+)\s*\])?\s*$")


def split_values(text: str) -> list[str]:
    """Comma-separated values, CSV quoting allowed ("a, b", c); blanks dropped."""
    row = next(csv.reader([text], skipinitialspace=True), [])
    return [v.strip() for v in row if v.strip()]


def expand_numbers(text: str, kind: type, max_values: int = DEFAULT_MAX_VALUES) -> list:
    """Values of a numeric axis: items and ranges (``1-5``, ``1-10 (+2)``, ``1-10 [5]``) as ``kind`` (int/float).
    A range is counted before it is built: ValueError when the axis would get more than ``max_values``."""
    values: list = []
    for item in split_values(text):
        m = _RANGE.match(item)
        if m is None:
            values.append(kind(float(item)) if kind is int else kind(item))
            continue
        start, end = float(m.group(1)), float(m.group(2))
        if m.group(4):  # [count]: evenly spaced, both ends included
            count = _checked_count(item, int(m.group(4)), len(values), max_values)
            points = [start + (end - start) * k / max(1, count - 1) for k in range(count)] if count > 1 else [start]
        else:
            step = float(m.group(3)) if m.group(3) else (1.0 if end >= start else -1.0)
            if step == 0 or (end - start) * step < 0:
                raise ValueError(f"range {item!r} never reaches its end")
            n = _checked_count(item, int(math.floor((end - start) / step + 1e-9)) + 1, len(values), max_values)
            points = [start + step * k for k in range(n)]
        values.extend(int(p) if kind is int else round(p, 10) for p in points)  # int() truncates, as A1111
    return values


def _match(text: str, names, what: str) -> str:
    found = next((n for n in names if n.lower() == text.strip().lower()), None)
    if found is None:
        raise ValueError(f"unknown {what} {text!r}")
    return found


def _sampler(text: str) -> str:
    resolve(text, "Automatic")  # accepts aliases, raises ValueError when unknown
    return text.strip()


def _set(name: str):
    def apply(cell: XyzCell, value) -> None:
        setattr(cell.params, name, value)
    return apply


def _override(name: str):
    def apply(cell: XyzCell, value) -> None:
        cell.params.override_settings = {**cell.params.override_settings, name: value}
    return apply


def _prompt_sr(cell: XyzCell, value) -> None:
    search, replacement = value
    cell.params.prompt = cell.params.prompt.replace(search, replacement)
    cell.params.negative_prompt = cell.params.negative_prompt.replace(search, replacement)


def _add_styles(cell: XyzCell, names: tuple[str, ...]) -> None:
    cell.params.styles = [*cell.params.styles, *names]


def _prompt_order(cell: XyzCell, terms: tuple[str, ...]) -> None:
    """A1111's "Prompt order": the places of the terms in the prompt, taken in the prompt's order, get the terms
    in the order of this permutation."""
    prompt = cell.params.prompt
    places = []
    for term in terms:
        at = prompt.find(term)
        if at < 0:
            raise ValueError(f"Prompt order: {term!r} is not in the prompt")
        places.append((at, term))
    pieces, end = [], 0
    for (at, original), term in zip(sorted(places), terms):
        pieces += [prompt[end:at], term]
        end = at + len(original)
    cell.params.prompt = "".join(pieces) + prompt[end:]


def _permutations(text: str, max_values: int) -> list[tuple[str, ...]]:
    """Every order of the listed terms (A1111's "Prompt order"); ValueError when they are more than ``max_values``."""
    terms = split_values(text)
    if math.factorial(len(terms)) > max_values:
        raise ValueError(f"{len(terms)} terms give {math.factorial(len(terms))} orders; an axis takes at most "
                         f"{max_values} (setting limit_images_per_request)")
    return list(itertools.permutations(terms))


def builtin_axes(state) -> list[XyzAxis]:
    """The plot's own axes (checkpoint, VAE and style choices come from the state's catalogs)."""
    def checkpoint(text: str) -> str:
        info = state.models.catalog.find(text)
        if info is None:
            raise ValueError(f"unknown checkpoint {text!r}")
        return state.models.catalog.title(info)

    def refiner(text: str) -> str | None:
        return None if text.strip().lower() == "none" else checkpoint(text)

    def vae(text: str) -> str:
        return _match(text, state.vaes.choices(), "VAE")

    def styles(text: str) -> tuple[str, ...]:
        """One cell's styles: one name, or several joined by commas inside quotes ("a, b"), as in A1111."""
        known = load_styles(state.styles_path)
        return tuple(_match(name, known, "style") for name in text.split(",") if name.strip())

    def checkpoints(s) -> list[str]:
        return [s.models.catalog.title(i) for i in s.models.catalog.items()]

    return [
        XyzAxis(NOTHING, str, lambda cell, value: None),
        XyzAxis("Seed", int, _set("seed"), numeric=True),
        XyzAxis("Var. seed", int, _set("subseed"), numeric=True),
        XyzAxis("Var. strength", float, _set("subseed_strength"), numeric=True),
        XyzAxis("Steps", int, _set("steps"), numeric=True),
        XyzAxis("CFG scale", float, _set("cfg_scale"), numeric=True),
        XyzAxis("Sampler", _sampler, _set("sampler_name"), choices=lambda s: [x.name for x in SAMPLERS]),
        XyzAxis("Schedule type", lambda t: _match(t, [x.label for x in SCHEDULES], "schedule type"), _set("scheduler"),
                choices=lambda s: [x.label for x in SCHEDULES]),
        XyzAxis("Checkpoint name", checkpoint, _override("sd_model_checkpoint"), choices=checkpoints),
        XyzAxis("VAE", vae, _override("sd_vae"), choices=lambda s: s.vaes.choices()),
        XyzAxis("Prompt S/R", str, _prompt_sr),
        XyzAxis("Prompt order", str, _prompt_order),
        XyzAxis("Styles", styles, _add_styles, choices=lambda s: list(load_styles(s.styles_path))),
        XyzAxis("Denoising", float, _set("denoising_strength"), ("img2img",), numeric=True),
        XyzAxis("Eta", float, _set("eta"), numeric=True),
        XyzAxis("Clip skip", int, _set("clip_skip"), numeric=True),
        XyzAxis("Refiner checkpoint", refiner, _set("refiner_checkpoint"),
                choices=lambda s: ["None", *checkpoints(s)]),
        XyzAxis("Refiner switch at", float, _set("refiner_switch_at"), numeric=True),
    ]


def axes_for(state, kind: str) -> list[XyzAxis]:
    """Every axis available for ``kind``: built-in, then those contributed by extensions."""
    extensions = getattr(state, "extensions", None)
    contributed = extensions.contributions("xyz_axis") if extensions else []
    return [a for a in [*builtin_axes(state), *contributed] if isinstance(a, XyzAxis) and kind in a.kinds]


def _checked_count(item: str, count: int, before: int, max_values: int) -> int:
    """``count`` values of range ``item``, unless the axis would then hold more than ``max_values``."""
    if before + count > max_values:
        raise ValueError(f"range {item!r} gives {count} values; an axis takes at most {max_values} "
                         "(setting limit_images_per_request)")
    return count


def axis_values(axis: XyzAxis, text: str, max_values: int = DEFAULT_MAX_VALUES) -> list:
    """Parse an axis's value text (at most ``max_values`` values); Prompt S/R gives (search, replacement) pairs,
    the first pair the original."""
    if axis.label == NOTHING:
        return [None]
    if axis.label == "Prompt order":
        values = _permutations(text, max_values)
    elif axis.numeric:
        values = expand_numbers(text, axis.parse if axis.parse in (int, float) else float, max_values)
        values = [axis.parse(v) if axis.parse not in (int, float) else v for v in values]
    else:
        values = [axis.parse(v) for v in split_values(text)]
    if axis.label == "Prompt S/R":
        values = [(values[0], v) for v in values] if values else []
    if not values:
        raise ValueError(f"{axis.label}: no values given")
    if len(values) > max_values:
        raise ValueError(f"{axis.label}: {len(values)} values; an axis takes at most {max_values} "
                         "(setting limit_images_per_request)")
    return values


def _label(axis: XyzAxis, value) -> str:
    if axis.label == "Prompt S/R":
        return value[1]
    if axis.label == "Prompt order":  # the terms alone, as A1111 labels it
        return ", ".join(value)
    if isinstance(value, tuple):  # Styles
        value = ", ".join(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value) if axis.parse is not float else value
    return f"{axis.label}: {value}"


class XyzPlot(Script):
    title = TITLE
    alwayson = False

    def __init__(self, state):
        self.state = state  # the axis list depends on the catalogs and on what other extensions contribute

    def controls(self, kind: str) -> list[Control]:
        labels = tuple(a.label for a in axes_for(self.state, kind))
        return [
            Control("x_type", "dropdown", "X type", NOTHING, choices=labels),
            Control("x_values", "text", "X values", ""),
            Control("y_type", "dropdown", "Y type", NOTHING, choices=labels),
            Control("y_values", "text", "Y values", ""),
            Control("z_type", "dropdown", "Z type", NOTHING, choices=labels),
            Control("z_values", "text", "Z values", ""),
            Control("draw_legend", "checkbox", "Draw legend", True),
            Control("include_lone_images", "checkbox", "Include sub images", True),
            Control("no_fixed_seeds", "checkbox", "Keep -1 for seeds", False),
        ]

    @staticmethod
    def _chosen(state, kind: str, args: dict) -> list[tuple[XyzAxis, list]]:
        """The X, Y and Z axes with their values, checked (ValueError naming the axis; at most as many cells as the
        ``limit_images_per_request`` setting allows images)."""
        axes = {a.label.lower(): a for a in axes_for(state, kind)}
        limit = state.settings.current.limit_images_per_request
        chosen = []
        for key in ("x", "y", "z"):
            name = (args[f"{key}_type"] or NOTHING).strip().lower()
            if name not in axes:
                raise ValueError(f"{TITLE}: unknown {key.upper()} axis {args[f'{key}_type']!r} "
                                 f"(available: {', '.join(a.label for a in axes.values())})")
            axis = axes[name]
            try:
                chosen.append((axis, axis_values(axis, args[f"{key}_values"], limit)))
            except ValueError as e:
                raise ValueError(f"{TITLE}: {key.upper()} axis {axis.label}: {e}") from None

        cells_wanted = math.prod(len(values) for _, values in chosen)
        if cells_wanted > limit:
            raise ValueError(f"{TITLE}: {cells_wanted} cells; a plot makes at most {limit} images "
                             "(setting limit_images_per_request)")
        return chosen

    def _cell(self, base, request_alwayson: dict, chosen, values: tuple) -> XyzCell:
        """The request of the cell at ``values`` (x, y, z): the base request with the three axes applied."""
        cell = XyzCell(self._copy_params(base), copy.deepcopy(request_alwayson, _shared_images(request_alwayson)))
        for (axis, _), value in zip(chosen, values):
            axis.apply(cell, value)
        cell.params.do_not_save_grid = True
        return cell

    def planned_jobs(self, state, params, args: dict, alwayson: dict) -> list[tuple[object, dict]]:
        """Every cell's request, in the order :meth:`run` makes them."""
        chosen = self._chosen(state, params.kind, args)
        named = self._named_alwayson(state, params.kind, alwayson)
        (_, xs), (_, ys), (_, zs) = chosen
        cells = (self._cell(params, named, chosen, (x, y, z)) for z, y, x in itertools.product(zs, ys, xs))
        return [(cell.params, cell.alwayson) for cell in cells]

    def run(self, state, params, args: dict, progress, alwayson: dict | None = None):
        kind = params.kind
        chosen = self._chosen(state, kind, args)
        base = copy.copy(params)
        if not args["no_fixed_seeds"]:
            base.seed = resolve_seed(int(base.seed))
            base.subseed = resolve_seed(int(base.subseed))
        request_alwayson = self._named_alwayson(state, kind, alwayson)
        (_, xs), (_, ys), (_, zs) = chosen
        original_model = state.models.current_info
        cells, infotexts, warnings = [], [], []
        result = JobResult()
        try:
            for z in zs:
                for y in ys:
                    for x in xs:
                        if progress.control.interrupted:
                            result.interrupted = True
                            break
                        cell = self._cell(base, request_alwayson, chosen, (x, y, z))
                        progress.step = 0  # progress shows the cell being made
                        progress.textinfo = f"X/Y/Z plot: cell {len(cells) + 1} of {len(xs) * len(ys) * len(zs)}"
                        one = run_generation(state, cell.params, progress, alwayson=cell.alwayson)
                        image = one.images[0] if len(one.images) == 1 else outputs.make_grid(one.images)
                        cells.append(image)
                        infotexts.append(one.infotexts[0] if one.infotexts else "")
                        warnings.extend(w for w in one.warnings if w not in warnings)
                        result.seeds.append(one.seeds[0])
                        result.subseeds.append(one.subseeds[0])
                        result.prompts.append(one.prompts[0])
                        result.negative_prompts.append(one.negative_prompts[0])
                        result.paths.extend(one.paths)
                        result.info = result.info or one.info
        finally:
            if original_model is not None and state.models.current_info != original_model:
                state.models.load(original_model)
        result.warnings = warnings
        if len(cells) != len(xs) * len(ys) * len(zs):  # interrupted: the finished cells, no grid
            result.images, result.infotexts = cells, infotexts
            return result
        grid = self._grid(cells, chosen, args["draw_legend"])
        result.grid = grid
        result.images = [grid, *(cells if args["include_lone_images"] else [])]
        result.infotexts = [infotexts[0], *(infotexts if args["include_lone_images"] else [])]
        settings = state.settings.current
        if settings.grid_save and settings.samples_save:
            from modules.processing.saving import UnsavedImages

            unsaved = UnsavedImages(settings.save_txt)  # a full disk: the plot is still returned, with a warning
            result.grid_path = unsaved.save(grid, settings.output_dir(f"{kind}-grids", state.options.data_dir),
                                            lambda dated: outputs.next_grid_path(dated, settings.grid_format),
                                            infotexts[0])
            result.warnings.extend(unsaved.report())
        result.info = {**result.info, "infotexts": result.infotexts, "all_seeds": result.seeds}
        return result

    def axis_choices(self, state, kind: str) -> dict[str, list]:
        """Axis name → value choices (empty list: free text), for the UI's axis and value dropdowns."""
        return {a.label: (a.choices(state) if a.choices else []) for a in axes_for(state, kind)}

    @staticmethod
    def _copy_params(params):
        clone = copy.copy(params)
        clone.override_settings = dict(params.override_settings)
        clone.styles = list(params.styles)
        if isinstance(params, Img2ImgParams):
            clone.init_images = list(params.init_images)
        return clone

    @staticmethod
    def _named_alwayson(state, kind: str, alwayson: dict | None) -> dict:
        """The request's always-on arguments by script title and control name, so axes can change them."""
        named = {}
        for title, entry in (alwayson or {}).items():
            script = find_script(state, kind, str(title), alwayson=True)
            raw = entry.get("args") if isinstance(entry, dict) else entry
            if script is None:
                named[title] = entry
            else:
                named[script.title] = {"args": named_args(script, kind, raw)}
        return named

    @staticmethod
    def _grid(cells: list, chosen, legend: bool):
        (x_axis, xs), (y_axis, ys), (z_axis, zs) = chosen
        per_z = len(xs) * len(ys)
        x_labels = [_label(x_axis, x) for x in xs] if legend and x_axis.label != NOTHING else []
        y_labels = [_label(y_axis, y) for y in ys] if legend and y_axis.label != NOTHING else []
        grids = []
        for k in range(len(zs)):
            part = cells[k * per_z:(k + 1) * per_z]
            if x_labels or y_labels:
                grids.append(outputs.labelled_grid(part, x_labels, y_labels))
            else:
                grids.append(outputs.make_grid(part, rows=len(ys)))
        if len(grids) == 1:
            return grids[0]
        z_labels = [_label(z_axis, z) for z in zs] if legend and z_axis.label != NOTHING else []
        return outputs.labelled_grid(grids, z_labels, []) if z_labels else outputs.make_grid(grids, rows=1)


def _shared_images(value, memo: dict | None = None) -> dict:
    """A ``deepcopy`` memo that keeps the PIL images inside ``value`` as they are: cells only read them, and a plot
    of many cells would otherwise hold a copy of every control image per cell."""
    memo = {} if memo is None else memo
    if isinstance(value, Image.Image):
        memo[id(value)] = value
    elif isinstance(value, dict):
        for item in value.values():
            _shared_images(item, memo)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _shared_images(item, memo)
    return memo


def register(api) -> None:
    api.add_script(XyzPlot(api.state))
