"""What every tab of the UI shares: the application state, per-browser-session jobs and results, tooltips."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class SessionOutput:
    """The last job of one kind in one browser session, and what it produced."""

    job: object = None
    images: list = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    paths: list = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)
    selected: int = 0

    def keep(self, result) -> list[str]:
        """Hold a finished job's images and data; its warnings for the user (with a line when it was interrupted)."""
        self.images, self.infotexts, self.paths = list(result.images), list(result.infotexts), list(result.paths)
        self.seeds, self.subseeds, self.selected = list(result.seeds), list(result.subseeds), 0
        return list(result.warnings) + (["Interrupted: the images finished so far are kept"]
                                        if result.interrupted else [])


class SessionOutputs:
    """Per (browser session, tab kind) outputs, so that Interrupt and send-to act on the user's own job only."""

    def __init__(self, limit: int = 256):
        self._items: dict[tuple[str, str], SessionOutput] = {}
        self._lock = threading.Lock()
        self._limit = limit

    def get(self, session: str | None, kind: str) -> SessionOutput:
        key = (session or "", kind)
        with self._lock:
            if key not in self._items:
                if len(self._items) >= self._limit:
                    self._items.pop(next(iter(self._items)))
                self._items[key] = SessionOutput()
            return self._items[key]


def script_field(title: str, name: str) -> str:
    """The key of an always-on script's control among a tab's fields."""
    return f"{title}/{name}"


@dataclass
class UiContext:
    """Built once per app; passed to every tab builder."""

    state: object
    startup_job: object = None
    outputs: SessionOutputs = field(default_factory=SessionOutputs)
    tooltips: dict[str, str] = field(default_factory=dict)
    tabs: dict = field(default_factory=dict)  # kind -> GenerationTab, filled while building
    top_bar: object = None  # webui.top_bar.TopBar
    ui_config: object = None  # webui.ui_config.UiConfig (ui-config.json)
    restarter: object = None  # webui.restart.Restarter
    card_panels: list = field(default_factory=list)  # webui.extra_networks.CardPanel per generation tab

    def tip(self, elem_id: str, text: str) -> str:
        """Register a tooltip for the element id and return the id (used inline as ``elem_id=ctx.tip(...)``)."""
        self.tooltips[elem_id] = text
        return elem_id

    def infotext_fields(self, text: str) -> dict:
        """UI field values from an infotext (empty for no text), adjusted by the extensions' infotext_pasted.

        Always-on script panels are filled too: their values are keyed ``"<script title>/<control name>"``.
        ``override_settings`` lists the settings the infotext names that differ from the current ones."""
        from modules import scripts
        from modules.infotext import infotext_to_settings, parse_infotext
        from webui.params_fields import fields_from_infotext, to_ui

        if not text:
            return {}
        fields = fields_from_infotext(text)
        parsed = parse_infotext(text)
        current = self.state.settings.current
        wanted = current.valid_overrides(infotext_to_settings(parsed))
        fields["override_settings"] = to_ui("override_settings", {k: v for k, v in wanted.items()
                                                                 if getattr(current, k) != v})
        for kind in ("txt2img", "img2img"):
            for title, values in scripts.infotext_values(self.state, kind, parsed).items():
                fields.update({script_field(title, name): value for name, value in values.items()})
        if self.state.extensions is not None:
            self.state.extensions.infotext_pasted(text, fields)
        return fields

    def model_size(self, name: str | None = None) -> tuple[int, int]:
        """The native (width, height) of checkpoint ``name``, else of the loaded one, else of the one being loaded
        at start (read from the file's header when it is not loaded), else SD1's 512×512."""
        from modules.app_state import startup_checkpoint
        from modules.models.loader import file_resolution

        state = self.state
        info = state.checkpoints.find(name) if name else state.models.current_info or startup_checkpoint(state)
        if info is not None and info == state.models.current_info and state.models.current is not None:
            return state.models.current.native_size
        found = file_resolution(info.path, state.options.allow_pickle) if info is not None else None
        return found or (512, 512)

    @property
    def model_ready(self) -> bool:
        job = self.startup_job
        return job is None or job.done
