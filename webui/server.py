"""The one FastAPI app serving the Gradio UI at "/" and, with --api, the HTTP API beside it; uvicorn runs it."""
from __future__ import annotations

import logging
import os
import secrets
import socket
import time

from modules.api.security import install_security, parse_credentials

log = logging.getLogger("sdwebui")

SHARE_SERVER = ("api.gradio.app", 443)
GRACEFUL_SHUTDOWN_S = 3  # open pages keep event streams open; stop waiting for them after this


class ExposureError(RuntimeError):
    """The server would be reachable from other machines without any credentials."""


def check_exposure(server) -> str | None:
    """Raise :class:`ExposureError` when --listen/--share (or a non-loopback --server-name) would serve the UI
    without --gradio-auth or the API without --api-auth, unless --insecure; then returns the warning to print."""
    public = server.share or server.host not in ("127.0.0.1", "localhost", "::1")
    missing = []
    if not server.nowebui and not (server.gradio_auth or server.gradio_auth_path):
        missing.append("the web UI (--gradio-auth USER:PASS)")
    if server.api and not (server.api_auth or server.api_auth_path):
        missing.append("the API (--api-auth USER:PASS)")
    if not public or not missing:
        return None
    what = "--share" if server.share else f"binding {server.host}"
    if not server.insecure:
        raise ExposureError(f"refusing to start: {what} would expose {' and '.join(missing)} to other machines "
                            "without a password; add the credentials, or --insecure to accept the risk")
    return f"{what} WITHOUT A PASSWORD for {' and '.join(missing)} (--insecure): anyone who can reach this " \
           "machine can use it"


def create_app(state, startup_job=None, restarter=None):
    """One app: API router (--api), security middleware (auth, Origin/Host, CORS, body limit), the extensions'
    ``app_started`` callbacks (their routes), then the Gradio UI at "/" (unless --nowebui).

    ``startup_job`` is the queued model load started by the application; the page says "loading" until it is done.
    ``restarter`` (webui.restart.Restarter) lets the UI's restart buttons stop the server for a restart.
    """
    from fastapi import FastAPI

    server = state.options.server
    os.environ.setdefault("GRADIO_TEMP_DIR", str(state.options.data_dir / "tmp" / "gradio"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = FastAPI(title="Stable Diffusion web UI", docs_url="/docs" if server.api else None, redoc_url=None,
                  openapi_url="/openapi.json" if server.api else None)
    if server.api:
        from modules.api.routes import build_router

        app.include_router(build_router(state))
    install_security(app, state)  # API auth, Host/Origin checks (cross-origin POSTs refused), CORS, body limit
    if state.extensions is not None:
        state.extensions.app_started(app)  # before the UI's mount at "/", which would answer every later path
    if not server.nowebui:
        import gradio as gr
        from PIL import Image

        # Gradio decodes uploads before a handler sees them; Pillow refuses over twice this many pixels
        Image.MAX_IMAGE_PIXELS = state.settings.current.limit_upload_pixels

        from webui.ui import build_ui

        demo, assets = build_ui(state, startup_job, restarter)
        auth = list(parse_credentials(server.gradio_auth, server.gradio_auth_path, "--gradio-auth").items()) or None
        gr.mount_gradio_app(app, demo, path=server.subpath or "/", auth=auth, root_path=server.subpath or None,
                            css=assets.css, head=assets.head, theme=assets.theme, footer_links=["settings"],
                            allowed_paths=[str(state.options.outputs_dir)], show_error=True, ssr_mode=False)
    return app


def share_unavailable() -> str | None:
    """Why a Gradio share link cannot be made (no internet), or None."""
    try:
        socket.create_connection(SHARE_SERVER, timeout=3).close()
    except OSError as e:
        return f"--share needs internet access to {SHARE_SERVER[0]}, which is not reachable ({e}); use --listen " \
               "with --gradio-auth on the LAN instead"
    return None


def check_startup(server) -> str | None:
    """Why the server must not start (exposed without credentials, credentials with an empty user or password,
    --share offline), or None; logs the loud --insecure warning. Cheap: call it before building the state."""
    try:
        parse_credentials(server.gradio_auth, server.gradio_auth_path, "--gradio-auth")
        parse_credentials(server.api_auth, server.api_auth_path, "--api-auth")
    except (OSError, ValueError) as e:
        return f"refusing to start: {e}"
    try:
        warning = check_exposure(server)
    except ExposureError as e:
        return str(e)
    if warning:
        banner = "!" * 100
        log.warning("\n%s\n!!! %s\n%s", banner, warning, banner)
    return share_unavailable() if server.share else None


def serve(state, startup_job=None, on_started=None, restarter=None) -> int:
    """Build the app and run uvicorn until stopped (after :func:`check_startup` said yes); the exit status.

    ``on_started()`` is called once the server accepts connections. With ``restarter``, the UI may stop the server
    for a restart (``restarter.requested`` is then set when this returns)."""
    import threading
    import webbrowser

    import uvicorn

    server = state.options.server
    app = create_app(state, startup_job, restarter)
    scheme = "https" if server.tls_certfile else "http"
    local = f"{scheme}://{'127.0.0.1' if server.host == '0.0.0.0' else server.host}:{server.port}{server.subpath}/"
    config = uvicorn.Config(app, host=server.host, port=server.port, log_level="warning",
                            ssl_keyfile=str(server.tls_keyfile) if server.tls_keyfile else None,
                            ssl_certfile=str(server.tls_certfile) if server.tls_certfile else None,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, timeout_keep_alive=server.timeout_keep_alive)
    httpd = uvicorn.Server(config)
    if restarter is not None:
        def stop_for_restart():
            # open pages' event streams are cut when the grace time ends; that is expected, not an error to log
            logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
            httpd.should_exit = True

        restarter.stop_server = stop_for_restart

    def announce():
        while not httpd.started:
            if httpd.should_exit:
                return
            time.sleep(0.05)
        log.info("web UI at %s", local)
        if on_started is not None:
            on_started()
        if server.share:
            from gradio.networking import setup_tunnel

            try:
                url = setup_tunnel("127.0.0.1", server.port, secrets.token_urlsafe(32), None, None)
                log.info("public share link: %s", url)
            except Exception as e:  # noqa: BLE001 - the local server keeps running
                log.error("could not create the share link: %s", e)
        if server.autolaunch:
            webbrowser.open(local)

    threading.Thread(target=announce, name="announce", daemon=True).start()
    httpd.run()
    return 0
