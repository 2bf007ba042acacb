"""Extensions: discovery, metadata, dependency order, isolation, enable/disable, callbacks and page assets.

An extension is a folder (``extensions/<name>/``) with ``scripts/*.py``, optionally ``extension.toml``
(name, version, description, requires, load_before, load_after), ``install.py``, ``javascript/*.js`` and
``style.css``. Each script file is imported; it may have a ``register(api)`` function receiving an
:class:`ExtensionApi` to add scripts, callbacks, engine hooks, settings and contributions, and the
:class:`~modules.scripts.Script` subclasses it defines are instantiated (without arguments) unless ``register``
added an instance of that class itself. An extension whose install, import or registration fails is reported with
its name and left out as a whole (nothing it registered stays); the app goes on. A folder in AUTOMATIC1111's
format (see :func:`a1111_reason`) is recognised without running any of its code and reported as not supported.
Which extensions the user turned off is kept in ``config.json`` under ``disabled_extensions`` (a list of names).
See docs/extensions.md.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .hooks import HookPoint, HookRegistry, JobEnd
from .scripts import Control, Script

log = logging.getLogger(__name__)

METADATA_FILE = "extension.toml"
DISABLED_KEY = "disabled_extensions"
INSTALL_TIMEOUT_S = 600
CALLBACK_NAMES = ("model_loaded", "ui_tabs", "ui_settings", "before_image_saved", "image_saved", "infotext_pasted",
                  "app_started")
A1111_FILES = ("install.py", "preload.py")  # besides scripts/*.py: the Python files A1111 itself runs
A1111_ROOTS = ("modules", "launch")  # A1111's engine package (ours has the same name) and its install helpers
A1111_LISTED = 12  # names shown in the reason; the rest are counted


@dataclass(frozen=True)
class ExtensionMeta:
    name: str
    version: str = ""
    description: str = ""
    requires: tuple[str, ...] = ()
    load_before: tuple[str, ...] = ()
    load_after: tuple[str, ...] = ()


@dataclass
class Extension:
    """One extension folder: its metadata, whether it is enabled and loaded, and what went wrong."""

    meta: ExtensionMeta
    path: Path
    enabled: bool = True
    loaded: bool = False
    errors: list[str] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def version(self) -> str:
        return self.meta.version


@dataclass(frozen=True)
class UiTab:
    """A whole tab an extension adds (returned by a ``ui_tabs`` callback); the web UI renders it.

    ``markdown`` is shown at the top; ``controls`` are rendered by kind; ``action(values: dict) -> str`` (if any)
    is run by a button labelled ``action_label`` with the controls' values by name, and its text result shown.
    """

    title: str
    elem_id: str
    markdown: str = ""
    controls: tuple[Control, ...] = ()
    action: Callable[[dict], str] | None = None
    action_label: str = "Run"


@dataclass(frozen=True)
class SettingsSection:
    """An extension's own section on the Settings page; each control's name is its key in config.json."""

    title: str
    controls: tuple[Control, ...]
    extension: str = ""


@dataclass(frozen=True)
class ImageSaved:
    """Payload of ``image_saved`` callbacks: an image written to disk."""

    path: Path
    image: object
    infotext: str
    params: object


@dataclass
class _Callback:
    name: str
    fn: Callable
    owner: str


class ExtensionApi:
    """What a script file's ``register(api)`` uses. Registrations take effect only if the whole extension loads."""

    def __init__(self, state, extension: Extension):
        self.state = state
        self.extension = extension
        self.name = extension.name
        self.path = extension.path
        self.hooks = HookRegistry()
        self.callbacks: list[_Callback] = []
        self.scripts: list[Script] = []
        self.contributions: list[tuple[str, object]] = []

    def _on(self, name: str, fn: Callable) -> Callable:
        self.callbacks.append(_Callback(name, fn, self.name))
        return fn

    def on_model_loaded(self, fn: Callable) -> Callable:
        """``fn(model)`` after a checkpoint is loaded (and once at start for the model already loaded)."""
        return self._on("model_loaded", fn)

    def on_ui_tabs(self, fn: Callable) -> Callable:
        """``fn() -> UiTab | list[UiTab]``: tabs added to the web UI."""
        return self._on("ui_tabs", fn)

    def on_ui_settings(self, fn: Callable) -> Callable:
        """``fn() -> list[Control]``: this extension's settings (its section on the Settings page)."""
        return self._on("ui_settings", fn)

    def on_before_image_saved(self, fn: Callable) -> Callable:
        """``fn(BeforeSave)`` before each generated image is kept and saved; may change image and infotext."""
        return self._on("before_image_saved", fn)

    def on_image_saved(self, fn: Callable) -> Callable:
        """``fn(ImageSaved)`` after each generated image was written to disk."""
        return self._on("image_saved", fn)

    def on_infotext_pasted(self, fn: Callable) -> Callable:
        """``fn(infotext: str, fields: dict)`` when infotext is pasted into the UI; may change ``fields``."""
        return self._on("infotext_pasted", fn)

    def on_app_started(self, fn: Callable) -> Callable:
        """``fn(app)`` with the FastAPI app once the server is built (add routes here; they get the app's auth)."""
        return self._on("app_started", fn)

    def add_hook(self, point: HookPoint, fn: Callable, order: int = 0) -> None:
        """An engine hook for every job (see docs/hooks.md); per-request hooks belong in a Script's setup."""
        self.hooks.register(point, fn, self.name, order)

    def add_script(self, script: Script) -> None:
        self.scripts.append(script)

    def contribute(self, topic: str, value: object) -> None:
        """Offer ``value`` to other extensions under ``topic`` (e.g. ``"xyz_axis"`` with an XyzAxis)."""
        self.contributions.append((topic, value))

    def option(self, key: str, default=None):
        """The stored value of one of this app's extension settings (config.json)."""
        return self.state.extensions.option(key, default)


def read_meta(path: Path) -> ExtensionMeta:
    """Metadata from ``extension.toml`` (all keys optional; the name defaults to the folder's)."""
    file = path / METADATA_FILE
    raw = tomllib.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    raw = raw.get("extension", raw)

    def names(key: str) -> tuple[str, ...]:
        value = raw.get(key, [])
        return (value,) if isinstance(value, str) else tuple(str(v) for v in value)

    return ExtensionMeta(name=str(raw.get("name", path.name)), version=str(raw.get("version", "")),
                         description=str(raw.get("description", "")), requires=names("requires"),
                         load_before=names("load_before"), load_after=names("load_after"))


def a1111_reason(path: Path) -> str | None:
    """Why the extension folder ``path`` is an AUTOMATIC1111 extension that this app cannot load, or None.

    A folder without ``extension.toml`` is taken for one when its ``scripts/*.py``, ``install.py`` or
    ``preload.py`` (parsed with ``ast``, never imported or run) import a ``modules.<name>`` module this project
    lacks or A1111's ``launch``, or define A1111's ``ui(self, is_img2img)``. The reason lists the ``modules.…``
    modules and names they use that this project does not provide."""
    if (path / METADATA_FILE).is_file():
        return None
    trees = [tree for tree in map(_parse, _a1111_files(path)) if tree is not None]
    needs = sorted({m for m in map(_missing_part, {n for t in trees for n in _used_names(t)}) if m})
    missing_module = any(n.count(".") < 2 for n in needs)  # "launch" or "modules.<name>", not a name inside one
    if not missing_module and not any(map(_has_a1111_ui, trees)):
        return None
    reason = "A1111 extension: not supported"
    if not needs:
        return f"{reason} — its scripts use A1111's ui(self, is_img2img)"
    more = f" and {len(needs) - A1111_LISTED} more" if len(needs) > A1111_LISTED else ""
    return f"{reason} — needs {', '.join(needs[:A1111_LISTED])}{more}"


def _a1111_files(path: Path) -> list[Path]:
    return [*sorted((path / "scripts").glob("*.py")), *(path / n for n in A1111_FILES if (path / n).is_file())]


def _parse(file: Path) -> ast.Module | None:
    try:
        return ast.parse(file.read_bytes(), str(file))
    except (OSError, SyntaxError, ValueError):
        return None


def _used_names(tree: ast.Module) -> set[str]:
    """Dotted names under :data:`A1111_ROOTS` a file uses: modules it imports, names it imports from them, and
    attributes it reads from the names those imports bound."""
    bound: dict[str, str] = {}
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                used.add(alias.name)
                root = alias.name.split(".")[0]
                bound[alias.asname or root] = alias.name if alias.asname else root
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                full = node.module if alias.name == "*" else f"{node.module}.{alias.name}"
                used.add(full)
                bound[alias.asname or alias.name] = full
    used |= {f"{bound[node.value.id]}.{node.attr}" for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound}
    return {n for n in used if n.split(".")[0] in A1111_ROOTS}


def _missing_part(name: str) -> str | None:
    """The shortest leading part of ``name`` this project does not provide (as a module or an attribute), or None.
    A1111's ``launch`` is never provided: ``install.py`` runs in its own process, where it cannot be imported."""
    root, *parts = name.split(".")
    if root != "modules":
        return root
    obj, prefix = importlib.import_module(root), root
    for part in parts:
        prefix = f"{prefix}.{part}"
        if not hasattr(obj, part) and hasattr(obj, "__path__"):
            try:
                importlib.import_module(prefix)
            except ImportError:
                return prefix
        if not hasattr(obj, part):
            return prefix
        obj = getattr(obj, part)
    return None


def _has_a1111_ui(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.FunctionDef) and node.name == "ui"
               and [a.arg for a in node.args.args[1:2]] == ["is_img2img"] for node in ast.walk(tree))


def discover(dirs: list[Path]) -> list[Extension]:
    """Extension folders in ``dirs`` (a folder with ``scripts/`` or ``extension.toml``), by name; a repeated name,
    unreadable metadata or A1111's format (:func:`a1111_reason`) is an error on that extension."""
    found: dict[str, Extension] = {}
    broken: list[Extension] = []
    for root in dirs:
        if not Path(root).is_dir():
            continue
        for path in sorted(Path(root).iterdir()):
            if not path.is_dir() or path.name.startswith(".") or not (
                    (path / "scripts").is_dir() or (path / METADATA_FILE).is_file()):
                continue
            try:
                meta = read_meta(path)
            except (OSError, ValueError) as e:
                broken.append(Extension(ExtensionMeta(path.name), path, errors=[f"bad {METADATA_FILE}: {e}"]))
                continue
            if meta.name in found:
                broken.append(Extension(meta, path, errors=[f"another extension named {meta.name!r} is at "
                                                            f"{found[meta.name].path}"]))
                continue
            reason = a1111_reason(path)
            found[meta.name] = Extension(meta, path, errors=[reason] if reason else [])
    return list(found.values()) + broken


def load_order(extensions: list[Extension]) -> list[Extension]:
    """Extensions in an order that honours ``requires``, ``load_after`` and ``load_before`` (names sorted where
    free). Those in a cycle get an error and come last."""
    by_name = {e.name: e for e in extensions}
    after: dict[str, set[str]] = {e.name: set() for e in extensions}
    for e in extensions:
        after[e.name] |= {n for n in (*e.meta.requires, *e.meta.load_after) if n in by_name and n != e.name}
        for n in e.meta.load_before:
            if n in by_name and n != e.name:
                after[n].add(e.name)
    ordered: list[Extension] = []
    remaining = dict(after)
    while remaining:
        ready = sorted(n for n, deps in remaining.items() if not deps & remaining.keys())
        if not ready:
            for n in sorted(remaining):
                by_name[n].errors.append(f"load order cycle among {', '.join(sorted(remaining))}")
                ordered.append(by_name[n])
            break
        for n in ready:
            ordered.append(by_name[n])
            del remaining[n]
    return ordered


def _run_install(ext: Extension) -> None:
    script = ext.path / "install.py"
    if not script.is_file():
        return
    done = subprocess.run([sys.executable, str(script)], cwd=ext.path, capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"install.py failed (exit {done.returncode}): {tail[0]}")


def _import_scripts(ext: Extension, api: ExtensionApi) -> None:
    """Import the extension's script files (as ``sdwebui_ext.<name>.<file>``); on failure none stay imported."""
    imported: list[str] = []
    try:
        for file in sorted((ext.path / "scripts").glob("*.py")):
            module_name = ".".join(("sdwebui_ext", _identifier(ext.name), _identifier(file.stem)))
            imported.append(module_name)
            _import_one(module_name, file, api)
    except BaseException:
        for name in imported:
            sys.modules.pop(name, None)
        raise


def _identifier(name: str) -> str:
    return re.sub(r"\W", "_", name)


def _import_one(module_name: str, file: Path, api: ExtensionApi) -> None:
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    register = getattr(module, "register", None)
    if callable(register):
        register(api)
    added = {type(s) for s in api.scripts}
    for value in list(vars(module).values()):
        if isinstance(value, type) and issubclass(value, Script) and value is not Script \
                and value.__module__ == module_name and value.title and value not in added:
            api.add_script(value())


class Extensions:
    """The app's extensions (``state.extensions``): what loaded, their scripts, callbacks and contributions."""

    def __init__(self, state, dirs: list[Path]):
        self.state = state
        self.dirs = [Path(d) for d in dirs]
        self.items: list[Extension] = []
        self.scripts: list[Script] = []
        self.callbacks: list[_Callback] = []
        self._contributions: list[tuple[str, object]] = []
        self._settings: list[SettingsSection] = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    # --- loading -----------------------------------------------------------------------------------------------

    def load(self, run_install: bool = True) -> None:
        """Discover and load every enabled extension in dependency order; failures are recorded, never raised."""
        disabled = set(self.state.settings.extra.get(DISABLED_KEY, []))
        self.items = load_order(discover(self.dirs))
        loaded: set[str] = set()
        for ext in self.items:
            ext.enabled = ext.name not in disabled
            if ext.errors or not ext.enabled:
                self._report(ext)
                continue
            missing = [r for r in ext.meta.requires if r not in loaded]
            if missing:
                ext.errors.append(f"requires {', '.join(missing)}, which is missing, disabled or failed to load")
                self._report(ext)
                continue
            self._load_one(ext, run_install)
            if ext.loaded:
                loaded.add(ext.name)
        self._attach_engine_callbacks()
        self._collect_settings()

    def _load_one(self, ext: Extension, run_install: bool) -> None:
        api = ExtensionApi(self.state, ext)
        try:
            if run_install:
                _run_install(ext)
            _import_scripts(ext, api)
            titles = {s.title.lower() for s in self.scripts}
            clash = [s.title for s in api.scripts if s.title.lower() in titles]
            if clash:
                raise ValueError(f"script title(s) already taken: {', '.join(clash)}")
        except BaseException as e:  # noqa: BLE001 - an extension must never take the app down
            if isinstance(e, KeyboardInterrupt):
                raise
            ext.errors.append(f"{type(e).__name__}: {e}")
            self._report(ext)
            return
        for script in api.scripts:
            script.extension = ext.name
        ext.scripts = api.scripts
        ext.loaded = True
        self.scripts.extend(api.scripts)
        self.callbacks.extend(api.callbacks)
        self._contributions.extend(api.contributions)
        self.state.hooks.hooks.extend(api.hooks.hooks)
        log.info("extension %s %s loaded (%d script(s))", ext.name, ext.version, len(api.scripts))

    @staticmethod
    def _report(ext: Extension) -> None:
        if ext.errors:
            log.error("extension '%s' skipped: %s", ext.name, "; ".join(ext.errors))
        else:
            log.info("extension '%s' is disabled", ext.name)

    def _attach_engine_callbacks(self) -> None:
        """Image-saved callbacks become engine hooks; model-loaded ones listen to the model manager."""
        for cb in self._named("before_image_saved"):
            self.state.hooks.register(HookPoint.BEFORE_SAVE, cb.fn, cb.owner)
        for cb in self._named("image_saved"):
            self.state.hooks.register(HookPoint.JOB_END, _saved_notifier(cb.fn), cb.owner)
        if self._named("model_loaded"):
            self.state.models.on_loaded.append(lambda model: self.run_callbacks("model_loaded", model))
            if self.state.models.current is not None:
                self.run_callbacks("model_loaded", self.state.models.current)

    def _collect_settings(self) -> None:
        for cb in self._named("ui_settings"):
            controls = self._call(cb)
            if controls:
                self._settings.append(SettingsSection(cb.owner, tuple(controls), cb.owner))

    # --- callbacks ---------------------------------------------------------------------------------------------

    def _named(self, name: str) -> list[_Callback]:
        return [cb for cb in self.callbacks if cb.name == name]

    def _call(self, cb: _Callback, *args):
        try:
            return cb.fn(*args)
        except Exception as e:  # noqa: BLE001
            message = f"{cb.name} callback failed ({type(e).__name__}: {e}); skipped"
            log.exception("extension '%s': %s", cb.owner, message)
            ext = self.get(cb.owner)
            if ext is not None:
                ext.errors.append(message)
            return None

    def run_callbacks(self, name: str, *args) -> list:
        """Call every ``name`` callback with ``args``; a failing one is reported on its extension and skipped.
        Returns the callbacks' results (None for failures)."""
        if name not in CALLBACK_NAMES:
            raise ValueError(f"unknown callback {name!r}; known: {', '.join(CALLBACK_NAMES)}")
        return [self._call(cb, *args) for cb in self._named(name)]

    def app_started(self, app) -> None:
        """Give the FastAPI app to the ``app_started`` callbacks (the server calls this once, before serving)."""
        self.run_callbacks("app_started", app)

    def infotext_pasted(self, infotext: str, fields: dict) -> dict:
        """Let extensions adjust the fields parsed from pasted infotext; returns ``fields``."""
        self.run_callbacks("infotext_pasted", infotext, fields)
        return fields

    def ui_tabs(self) -> list[UiTab]:
        tabs: list[UiTab] = []
        for result in self.run_callbacks("ui_tabs"):
            if isinstance(result, UiTab):
                tabs.append(result)
            elif result:
                tabs.extend(t for t in result if isinstance(t, UiTab))
        return tabs

    def settings_sections(self) -> list[SettingsSection]:
        return list(self._settings)

    def contributions(self, topic: str) -> list:
        """Values extensions offered under ``topic`` (see :meth:`ExtensionApi.contribute`)."""
        return [value for t, value in self._contributions if t == topic]

    # --- settings and enable/disable -----------------------------------------------------------------------------

    def _setting_control(self, key: str) -> Control | None:
        return next((c for s in self._settings for c in s.controls if c.name == key), None)

    def option(self, key: str, default=None):
        """An extension setting's stored value, else its declared default, else ``default``."""
        extra = self.state.settings.extra
        if key in extra:
            return extra[key]
        control = self._setting_control(key)
        return control.default if control is not None else default

    def set_options(self, values: dict) -> None:
        """Store extension settings (validated against their controls) in config.json."""
        from .scripts import _coerce

        checked = {}
        for key, value in values.items():
            control = self._setting_control(key)
            if control is None:
                raise ValueError(f"unknown extension setting {key!r}")
            checked[key] = _coerce(control, value)
        self.state.settings.extra.update(checked)
        self.state.settings.update({})  # saves the file, extra keys included

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Turn an extension on or off (kept in config.json; takes effect at the next start)."""
        if self.get(name) is None:
            raise ValueError(f"unknown extension {name!r}")
        disabled = set(self.state.settings.extra.get(DISABLED_KEY, []))
        disabled = disabled - {name} if enabled else disabled | {name}
        self.state.settings.extra[DISABLED_KEY] = sorted(disabled)
        self.state.settings.update({})

    def get(self, name: str) -> Extension | None:
        return next((e for e in self.items if e.name == name), None)

    # --- page assets ---------------------------------------------------------------------------------------------

    def ui_assets(self) -> tuple[str, str]:
        """(JavaScript, CSS) of the loaded extensions, in load order, each file introduced by a comment."""
        js, css = [], []
        for ext in self.items:
            if not ext.loaded:
                continue
            for file in sorted((ext.path / "javascript").glob("*.js")):
                js.append(f"// {ext.name}/javascript/{file.name}\n{file.read_text(encoding='utf-8')}")
            style = ext.path / "style.css"
            if style.is_file():
                css.append(f"/* {ext.name}/style.css */\n{style.read_text(encoding='utf-8')}")
        return "\n".join(js), "\n".join(css)


def _saved_notifier(fn: Callable) -> Callable:
    def notify(event: JobEnd) -> None:
        result = event.result
        for path, image, text in zip(result.paths, result.images, result.infotexts):
            fn(ImageSaved(path, image, text, event.params))
    return notify


def default_dirs(state) -> list[Path]:
    """The shipped/user extensions folder next to the code."""
    from .cmd_args import REPO_ROOT

    return [REPO_ROOT / "extensions"]


def load_extensions(state, dirs: list[Path] | None = None) -> Extensions:
    """Load the extensions in ``dirs`` (default: ``extensions/``; none with ``--disable-all-extensions``) onto
    ``state.extensions`` and return them. ``install.py`` files run unless ``--skip-install`` was given."""
    if state.options.disable_all_extensions:
        log.info("--disable-all-extensions: no extension is loaded")
        dirs = []
    extensions = Extensions(state, dirs if dirs is not None else default_dirs(state))
    state.extensions = extensions
    extensions.load(run_install=not state.options.skip_install)
    return extensions


def ui_assets(state) -> tuple[str, str]:
    """(js, css) of the loaded extensions for the web UI page."""
    extensions = getattr(state, "extensions", None)
    return extensions.ui_assets() if extensions else ("", "")
