"""Restarting the server in place ("Apply and restart UI", "Restart server"): the same command line in the same
process (``exec``), so that extensions, quick settings and the like are loaded afresh. The page waits for the new
server and reloads itself."""
from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("sdwebui")


@dataclass
class Restarter:
    """Given to the UI by the server: ``request`` stops the server, which then execs itself again."""

    stop_server: Callable[[], None] | None = None  # set by webui.server.serve once uvicorn runs
    requested: threading.Event = field(default_factory=threading.Event)
    boot_id: str = field(default_factory=lambda: secrets.token_hex(8))  # tells the page the server is new

    def request(self, queue, startup_job=None) -> None:
        """Stop the server for a restart; ValueError while jobs run or wait (they would be lost). The start-up model
        load (``startup_job``) does not count: the restarted server loads the model again anyway."""
        if self.stop_server is None:
            raise ValueError("this server cannot restart itself; stop it and run launch.py again")
        if queue.waiting or (queue.current is not None and queue.current is not startup_job):
            raise ValueError("jobs are running or waiting; restart when they are done")
        log.info("restart requested from the UI")
        self.requested.set()
        self.stop_server()


def exec_again() -> None:
    """Replace this process with a fresh run of its own command line (same process id, same flags)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


# Runs in the browser after the restart was accepted: wait until the page is served by a new process, reload.
WAIT_AND_RELOAD_JS = """() => {
  const old = window.sdBootId;
  const poll = () => fetch(window.location.href, {cache: "no-store"})
    .then(r => r.text())
    .then(t => { const m = t.match(/sdBootId = \\\\?"(\\w+)/); if (m && m[1] !== old) window.location.reload();
                 else setTimeout(poll, 500); })
    .catch(() => setTimeout(poll, 500));
  setTimeout(poll, 1000);
}"""


def wire(ctx, trigger, message) -> None:
    """``trigger`` (a button, or an event to follow when it succeeds) restarts the server, saying so in the HTML
    component ``message``; the page then reloads once the new server answers."""
    import gradio as gr

    def do_restart():
        try:
            ctx.restarter.request(ctx.state.queue, ctx.startup_job)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        return "<div class='sd-banner sd-loading'>Restarting the server… the page reloads when it is back.</div>"

    listen = trigger.success if hasattr(trigger, "success") else trigger.click
    listen(do_restart, None, message, queue=False, show_progress="hidden").success(None, None, None,
                                                                                  js=WAIT_AND_RELOAD_JS)
