"""Scripts: the per-job part of extensions (see docs/extensions.md).

A script declares its inputs as named :class:`Control` s. Always-on scripts (``alwayson = True``) run on every job
of their kinds and register per-job hooks in :meth:`Script.setup`; selectable scripts are picked by title
(``script_name``) and may run the whole job in :meth:`Script.run`. Arguments arrive as a dict by control name; the
A1111 positional list form is accepted too (in the order of :meth:`Script.controls`).
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from . import requester
from .hooks import HookRegistry
from .processing.params import ParamError
from .remote_limits import PassSize, RemoteLimits

log = logging.getLogger(__name__)

# info: a line to read; checkboxes: several of ``choices`` (a list); textarea: text of several lines
CONTROL_KINDS = ("checkbox", "slider", "number", "text", "textarea", "dropdown", "radio", "checkboxes", "image",
                 "info")


@dataclass(frozen=True)
class Control:
    """One UI input a script declares, addressed by ``name`` (also the key in API requests)."""

    name: str
    kind: str  # one of CONTROL_KINDS
    label: str
    default: object = None
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    tooltip: str = ""
    switch: bool = False  # a checkbox that turns the script on: the closed panel's header shows it
    group: str = ""  # controls of one group share a tab in the panel (e.g. "Unit 0")
    enables: str = ""  # image controls: the switch that an upload turns on
    upload: str = ""  # textarea controls: the label of a text-file upload beside the box that fills it


class Script:
    """Base class of scripts. Subclasses set ``title`` and override ``controls`` and ``setup`` or ``run``."""

    title: str = ""
    alwayson: bool = False
    kinds: tuple = ("txt2img", "img2img")
    extension: str = ""  # set by the loader: the owning extension's name

    def controls(self, kind: str) -> list[Control]:
        """The inputs shown for ``kind`` ("txt2img" / "img2img"), in positional order."""
        return []

    def setup(self, state, params, args: dict, hooks: "ScriptHooks") -> None:
        """Always-on scripts: register this job's hooks on ``hooks`` (``hooks.progress`` is the job's progress)."""

    def run(self, state, params, args: dict, progress, alwayson: dict | None = None):
        """Selectable scripts: run the job (return a JobResult) or return None to run it normally.

        ``alwayson`` is the request's always-on script arguments; pass it on to :func:`run_generation` for each
        job the script runs so that always-on scripts (hires fix, …) apply to them. It may be left out of the
        signature.
        """
        return None

    def planned_jobs(self, state, params, args: dict, alwayson: dict) -> list[tuple[object, dict]]:
        """Selectable scripts: the jobs :meth:`run` would make, as (params, always-on arguments by title), so that
        checks made before queueing (the remote limits) see each of them; default: the request itself."""
        return [(params, alwayson)]

    def extra_passes(self, params, args: dict) -> list[PassSize]:
        """Always-on scripts: the sampling passes this script adds to a job of ``params`` (hires fix: its second
        pass at the target size), for the remote limits; default: none."""
        return []

    def previews(self, kind: str) -> list["Preview"]:
        """Preview buttons shown under the controls in the panel (e.g. a preprocessed map)."""
        return []

    def describe(self, kind: str, args: dict, width: int, height: int) -> str:
        """A short line shown in the script's panel, from the panel's values and the tab's output size."""
        return ""

    def values_from_infotext(self, fields: dict) -> dict:
        """Control values (by name) read back from a parsed infotext (``modules.infotext.parse_infotext``), so
        that pasting generation parameters fills the script's panel too; values not in the infotext are left out."""
        return {}


@dataclass(frozen=True)
class Preview:
    """A button in an always-on script's panel that shows an image made from the panel's current values.

    ``render(args, width, height)`` gets the script's arguments by control name (checked as for a job) and the
    tab's output size, and returns a PIL image; a ValueError is shown to the user as a warning.
    """

    name: str
    label: str
    render: Callable[[dict, int, int], object]
    group: str = ""  # shown in the tab of the controls of this group, beside its image


def infotext_values(state, kind: str, fields: dict) -> dict:
    """``{title: {control name: value}}`` that the always-on scripts of ``kind`` read from a parsed infotext
    (values a control would reject are dropped, with a log line). A script the infotext says nothing of gets its
    switches turned off, so that pasted parameters never leave a panel on from an earlier paste."""
    out = {}
    for script in (s for s in scripts_for(state, kind) if s.alwayson):
        try:
            found = script.values_from_infotext(fields)
        except Exception:  # noqa: BLE001 - a broken extension must not stop the paste
            log.exception("%s: reading the infotext failed", script.title)
            continue
        controls = {c.name: c for c in script.controls(kind)}
        values = {}
        for name, value in found.items():
            try:
                values[name] = _coerce(controls[name], value)
            except (KeyError, ValueError) as e:
                log.warning("%s: infotext value for %s ignored (%s)", script.title, name, e)
        if not found:
            values = {c.name: False for c in controls.values() if c.switch}
        if values:
            out[script.title] = values
    return out


@dataclass(frozen=True)
class XyzAxis:
    """An axis an extension offers to the X/Y/Z plot (contributed under the topic ``"xyz_axis"``).

    ``apply(cell, value)`` changes one cell's request: ``cell.params`` (the job parameters) and ``cell.alwayson``
    (always-on script arguments by title, each ``{"args": {name: value}}``). ``parse(text) -> value`` converts
    and checks one value (ValueError when unusable); ``choices(state)`` lists values for the UI.
    """

    label: str
    parse: Callable[[str], object]
    apply: Callable[["XyzCell", object], None]
    kinds: tuple = ("txt2img", "img2img")
    choices: Callable | None = None
    numeric: bool = False  # values may use range syntax


@dataclass
class XyzCell:
    params: object
    alwayson: dict


class ScriptHooks(HookRegistry):
    """The per-job hook registry handed to :meth:`Script.setup`; ``progress`` is the job's JobProgress."""

    def __init__(self, progress=None):
        super().__init__()
        self.progress = progress


def scripts_for(state, kind: str) -> list[Script]:
    """Scripts of the loaded, enabled extensions that apply to ``kind``."""
    extensions = getattr(state, "extensions", None)
    return [s for s in (extensions.scripts if extensions else []) if kind in s.kinds]


def find_script(state, kind: str, title: str, alwayson: bool | None = None) -> Script | None:
    """A script by title (case-insensitive, as A1111 matches API titles)."""
    wanted = title.strip().lower()
    for script in scripts_for(state, kind):
        if script.title.lower() == wanted and (alwayson is None or script.alwayson == alwayson):
            return script
    return None


def _coerce(control: Control, value):
    kind = control.kind
    if kind == "checkbox":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, (bool, int)):
            raise ValueError(f"{control.name}: expected true/false, got {value!r}")
        return bool(value)
    if kind in ("slider", "number"):
        if isinstance(value, bool):
            raise ValueError(f"{control.name}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{control.name}: expected a number, got {value!r}") from None
        if control.minimum is not None and number < control.minimum:
            raise ValueError(f"{control.name}: {number:g} is below {control.minimum:g}")
        if control.maximum is not None and number > control.maximum:
            raise ValueError(f"{control.name}: {number:g} is above {control.maximum:g}")
        integral = isinstance(control.default, int) and (control.step is None or float(control.step).is_integer())
        if integral:
            if not number.is_integer():
                raise ValueError(f"{control.name}: expected a whole number, got {value!r}")
            return int(number)
        return number
    if kind in ("dropdown", "radio"):
        if control.choices and value not in control.choices:
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(control.choices):
                return control.choices[value]  # A1111 radio/dropdown "index" values
            same = [c for c in control.choices if isinstance(value, str) and str(c).lower() == value.strip().lower()]
            if len(same) == 1:  # another spelling of a choice: "CFG Scale" (A1111's X/Y/Z label) for "CFG scale"
                return same[0]
            raise ValueError(f"{control.name}: {value!r} is not one of {', '.join(map(str, control.choices))}")
        return value
    if kind == "checkboxes":
        return _chosen(control, value)
    if kind in ("text", "textarea"):
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)):
            raise ValueError(f"{control.name}: expected text, got {type(value).__name__}")
        return str(value)
    return value  # image: passed as given (PIL image or None)


def _chosen(control: Control, value) -> list:
    """A checkbox group's value: a list (or comma-separated text) of its choices, any case, in the choices' order."""
    if isinstance(value, str):
        value = [part for part in (p.strip() for p in value.split(",")) if part]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{control.name}: expected a list of choices, got {type(value).__name__}")
    by_lower = {str(c).lower(): c for c in control.choices}
    unknown = [v for v in value if str(v).strip().lower() not in by_lower]
    if unknown:
        raise ValueError(f"{control.name}: {', '.join(map(repr, unknown))} not among "
                         f"{', '.join(map(str, control.choices))}")
    wanted = {str(v).strip().lower() for v in value}
    return [c for c in control.choices if str(c).lower() in wanted]


def named_args(script: Script, kind: str, args: dict | list | tuple | None) -> dict:
    """The script's arguments by control name: defaults filled, values checked.

    ``args`` is a dict by name or A1111's positional list (in control order). Unknown names, too many positional
    values and bad values raise ValueError naming the control.
    """
    controls = script.controls(kind)
    values = {c.name: c.default for c in controls}
    by_name = {c.name: c for c in controls}
    if args is None:
        return values
    if isinstance(args, dict):
        unknown = [k for k in args if k not in by_name]
        if unknown:
            raise ValueError(f"{script.title}: unknown argument(s) {', '.join(map(str, unknown))} "
                             f"(known: {', '.join(by_name) or 'none'})")
        given = args.items()
    elif isinstance(args, (list, tuple)):
        if len(args) > len(controls):
            raise ValueError(f"{script.title}: {len(args)} positional arguments, at most {len(controls)} expected")
        given = ((c.name, v) for c, v in zip(controls, args))
    else:
        raise ValueError(f"{script.title}: args must be an object by name or a list, got {type(args).__name__}")
    for name, value in given:
        values[name] = _coerce(by_name[name], value)
    return values


@dataclass
class _Plan:
    """A request's scripts resolved and its arguments checked, before the job runs."""

    alwayson: list[tuple[Script, dict]] = field(default_factory=list)
    selected: Script | None = None
    selected_args: dict = field(default_factory=dict)
    request_alwayson: dict = field(default_factory=dict)


def _plan(state, params, script_name, script_args, alwayson) -> _Plan:
    kind = params.kind
    plan = _Plan(request_alwayson=dict(alwayson or {}))
    requested = {str(k).strip().lower(): v for k, v in (alwayson or {}).items()}
    known = {s.title.lower(): s for s in scripts_for(state, kind) if s.alwayson}
    unknown = [k for k in requested if k not in known]
    if unknown:
        raise ValueError(f"alwayson_scripts: unknown script(s) {', '.join(unknown)} for {kind} "
                         f"(available: {', '.join(s.title for s in known.values()) or 'none'})")
    for key, script in known.items():
        entry = requested.get(key)
        raw = entry.get("args") if isinstance(entry, dict) else entry
        plan.alwayson.append((script, named_args(script, kind, raw)))
    if script_name:
        script = find_script(state, kind, script_name, alwayson=False)
        if script is None:
            names = [s.title for s in scripts_for(state, kind) if not s.alwayson]
            raise ValueError(f"script_name: unknown script {script_name!r} for {kind} "
                             f"(available: {', '.join(names) or 'none'})")
        plan.selected, plan.selected_args = script, named_args(script, kind, script_args)
    return plan


def _accepts_alwayson(script: Script) -> bool:
    try:
        return "alwayson" in inspect.signature(script.run).parameters
    except (TypeError, ValueError):
        return False


def _execute(state, params, progress, plan: _Plan):
    from .processing.progress import JobProgress
    from .processing.runner import run_job

    progress = progress or JobProgress()
    if plan.selected is not None:
        script = plan.selected
        extra = {"alwayson": plan.request_alwayson} if _accepts_alwayson(script) else {}
        result = script.run(state, params, plan.selected_args, progress, **extra)
        if result is not None:
            return result
    hooks = ScriptHooks(progress)
    setup_warnings = []
    for script, args in plan.alwayson:
        try:
            script.setup(state, params, args, hooks)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken script must not end the job
            hooks.unregister_owner(script.extension or script.title)
            message = (f"extension '{script.extension}': script '{script.title}' setup failed "
                       f"({type(e).__name__}: {e}); skipped")
            log.exception(message)
            setup_warnings.append(message)
    result = run_job(state, params, progress, extra_hooks=hooks)
    result.warnings[:0] = setup_warnings
    return result


def run_generation(state, params, progress=None, script_name: str | None = None, script_args=None,
                   alwayson: dict | None = None):
    """Run a job with its scripts: always-on scripts set up their hooks, a selected script may run it all.

    ``alwayson`` = ``{"Title": {"args": {...} or [...]}}`` (titles case-insensitive). Unknown titles or bad
    arguments raise ValueError (``"script_name: …"`` / ``"alwayson_scripts: …"`` / ``"<title>: …"``).
    """
    return _execute(state, params, progress, _plan(state, params, script_name, script_args, alwayson))


def _planned_jobs(state, params, plan: _Plan) -> list[tuple[object, dict]]:
    """Every job the request makes: (params, always-on arguments by title)."""
    if plan.selected is None:
        return [(params, plan.request_alwayson)]
    return plan.selected.planned_jobs(state, params, plan.selected_args, plan.request_alwayson)


def _check_image_count(state, jobs: list[tuple[object, dict]]) -> None:
    """All the request's jobs together make at most the ``limit_images_per_request`` setting's images (ParamError)."""
    limit = state.settings.current.limit_images_per_request
    images = sum(int(p.batch_size) * int(p.n_iter) for p, _ in jobs)
    if images > limit:
        where = f" in {len(jobs)} jobs" if len(jobs) > 1 else ""
        raise ParamError("n_iter", f"the request makes {images} images{where} (batch count × batch size); at most "
                                   f"{limit} (setting limit_images_per_request)")


def _check_remote_limits(state, jobs: list[tuple[object, dict]]) -> None:
    """For a remote requester: every pass of every job the request makes within ``--remote-max-*`` (ParamError)."""
    limits = RemoteLimits.from_options(state.options.server)
    if not limits.applies_to(requester.current()):
        return
    for job_params, alwayson in jobs:
        passes = [PassSize(job_params.width, job_params.height, job_params.steps)]
        for script, args in _plan(state, job_params, None, None, alwayson).alwayson:
            passes += script.extra_passes(job_params, args)
        limits.check(passes)


def submit(state, params, script_name: str | None = None, script_args=None, alwayson: dict | None = None):
    """Check the scripts and arguments now (ValueError at once), the number of images, and for a remote client the
    remote limits (:mod:`modules.remote_limits`); then queue the job on ``state.queue``."""
    plan = _plan(state, params, script_name, script_args, alwayson)
    jobs = _planned_jobs(state, params, plan)
    _check_image_count(state, jobs)
    _check_remote_limits(state, jobs)
    label = plan.selected.title if plan.selected else params.kind
    remote = None
    if state.queue.workers is not None:  # generation workers (modules.workers) run it with their own scripts
        from .workers.messages import GenerationRequest

        remote = GenerationRequest(params, script_name, script_args, alwayson)
    return state.queue.submit(lambda progress: _execute(state, params, progress, plan), label, remote)
