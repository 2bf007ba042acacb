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
