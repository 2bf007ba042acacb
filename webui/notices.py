"""Messages to the user from event handlers: expected mistakes are shown, and logged as one line."""
from __future__ import annotations

import logging

import gradio as gr

log = logging.getLogger("sdwebui")


def user_error(message: str) -> gr.Error:
    """An error for a mistake the user can fix ("paste parameters first"): shown in the page as an error toast,
    one line in the server log instead of a traceback. Raise it from queued events only (``queue=False`` events
    answer an exception with HTTP 500)."""
    log.info("user error: %s", message)
    return gr.Error(message, print_exception=False)


def user_warning(message: str) -> None:
    """A warning toast for something that went wrong without stopping the action ("disk full: 2 images not saved
    (…)"), shown for 30 s (a toast that stays until closed would pile up under Generate forever); call it from an
    event handler. Logged where it happened, not here."""
    gr.Warning(message, duration=30)
