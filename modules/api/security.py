"""Protection of the server's HTTP routes: one ASGI middleware, so routes added later (by extensions) are covered.

- HTTP Basic from ``--api-auth user:pass[,user2:pass2]`` and ``--api-auth-path`` (a file of such entries, comma or
  newline separated) on every route except the Gradio UI's own (it has its login, ``--gradio-auth``);
- Host check while bound to loopback (a DNS-rebinding page cannot talk to a local server through another name);
- cross-origin POST/PUT/PATCH/DELETE refused (403) unless the origin is allowed with ``--cors-allow-origins``;
- CORS headers only with ``--cors-allow-origins``;
- request bodies over a size limit refused with 413;
- requests repeating a header these checks read (Origin, Host, Authorization, …) refused with 400;
- with ``--gradio-auth``, the UI's login page stripped of Gradio's endpoint description (names of models, settings).
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# "testserver": the name Starlette's TestClient sends
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "testserver"}
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# headers the checks read: given twice, which one counts would depend on the reader, so such requests are refused
SINGLE_HEADERS = ("origin", "host", "authorization", "content-length", "sec-fetch-site")
# Gradio's page embeds a description of every UI endpoint (with checkpoint and setting names) even on the login page
_API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.DOTALL)
_LOGIN_CONFIG = re.compile(rb'"auth_required":\s*true')
_NO_API_INFO = b'window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}};</script>'


def parse_credentials(text: str | None, path: Path | None = None, flag: str = "--api-auth") -> dict[str, str]:
    """``{user: password}`` from a flag's value and/or its file; entries ``user:pass`` separated by commas or
    newlines. ValueError (naming ``flag``) for an entry without a user name or without a password."""
    entries = []
    if text:
        entries += text.split(",")
    if path:
        entries += Path(path).read_text(encoding="utf-8").replace("\n", ",").split(",")
    credentials = {}
    for entry in (e.strip() for e in entries):
        if entry:
            user, sep, password = entry.partition(":")
            if not sep or not user.strip() or not password:
                raise ValueError(f"{flag} entries must be user:password with both parts non-empty, got "
                                 f"{user.strip()!r}:{'…' if password else ''}")
            credentials[user] = password
    return credentials


def _is_ui_mount(route) -> bool:
    """Gradio's mounted app (gr.mount_gradio_app): its pages and calls are behind Gradio's own login."""
    app = getattr(route, "app", None)
    return app is not None and type(app).__module__.split(".")[0] == "gradio"


def _host_name(value: str) -> str:
    return (urlsplit(f"//{value}").hostname or "").lower()


class SecurityMiddleware:
    """ASGI middleware doing the checks listed in the module docstring; ``app`` is the FastAPI app it wraps."""

    def __init__(self, asgi, app, credentials: dict[str, str], loopback_only: bool, allowed_hosts: set[str],
                 allowed_origins: set[str], max_body_bytes: int, ui_login: bool = False):
        self.asgi, self.app = asgi, app
        self.ui_login = ui_login
        self.credentials = credentials
        self.loopback_only = loopback_only
        self.allowed_hosts = allowed_hosts
        self.allowed_origins = allowed_origins
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "websocket" and self.loopback_only and not self._host_ok(scope):
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.asgi(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await _send_json(send, *refusal)
            return
        if self.ui_login and scope["method"] in ("GET", "HEAD") and self._is_ui(scope):
            send = _login_page_filter(send)
        from modules import requester  # who is asking, for the job queue's turns and the remote limits

        verified = bool(self.credentials) and self._authorized(self._headers(scope).get("authorization", ""))
        with requester.acting_as(requester.from_asgi(scope, verified)):
            await self._call_limited(scope, receive, send)

    async def _call_limited(self, scope, receive, send):
        """Pass the request on; a body growing past the limit (no Content-Length) is answered with 413."""
        seen, started, refused = 0, False, False

        async def limited_receive():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    refused = True
                    if not started:
                        detail = f"body: larger than {self.max_body_bytes} bytes"
                        await _send_json(send, 413, "Payload Too Large", detail)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.asgi(scope, limited_receive, guarded_send)

    def _headers(self, scope) -> dict[str, str]:
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

    def _host_ok(self, scope) -> bool:
        host = self._headers(scope).get("host")
        return host is None or _host_name(host) in self.allowed_hosts

    def _refusal(self, scope) -> tuple | None:
        names = [k.decode("latin-1").lower() for k, _ in scope.get("headers", [])]
        repeated = sorted({n for n in SINGLE_HEADERS if names.count(n) > 1})
        if repeated:
            return 400, "Bad Request", f"{repeated[0]}: the header is given more than once"
        headers = self._headers(scope)
        if self.loopback_only and not self._host_ok(scope):
            return 403, "Forbidden", "host: this server only answers to localhost names"
        if scope["method"] in UNSAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None:
                same = urlsplit(origin).netloc.lower() == headers.get("host", "").lower()
                if not same and origin.rstrip("/") not in self.allowed_origins and "*" not in self.allowed_origins:
                    return 403, "Forbidden", "origin: cross-origin requests are not allowed (see --cors-allow-origins)"
            elif headers.get("sec-fetch-site") == "cross-site":
                return 403, "Forbidden", "origin: cross-origin requests are not allowed (see --cors-allow-origins)"
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return 400, "Bad Request", "content-length: not a number"
            if int(length) > self.max_body_bytes:
                return 413, "Payload Too Large", f"body: larger than {self.max_body_bytes} bytes"
        preflight = scope["method"] == "OPTIONS" and bool(self.allowed_origins)  # answered by CORS, no credentials
        if self.credentials and not preflight and not self._is_ui(scope):
            if not self._authorized(headers.get("authorization", "")):
                return 401, "Unauthorized", "authorization: HTTP Basic credentials required (--api-auth)"
        return None

    def _is_ui(self, scope) -> bool:
        from starlette.routing import Match

        for route in self.app.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return _is_ui_mount(route)
        return False

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            return False
        expected = self.credentials.get(user)
        # compare even for unknown users, so timing does not tell which user names exist
        ok = secrets.compare_digest(password.encode(), (expected if expected is not None else "\0").encode())
        return bool(sep) and expected is not None and ok


def _login_page_filter(send):
    """Wrap ``send`` so an HTML page that asks for the UI login keeps nothing that names endpoints or models."""
    start: dict | None = None
    chunks: list[bytes] = []

    async def filtered(message):
        nonlocal start
        if message["type"] == "http.response.start":
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            if not content_type.startswith(b"text/html"):
                await send(message)
                return
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        if _LOGIN_CONFIG.search(body):
            body = _API_INFO.sub(lambda _: _NO_API_INFO, body, count=1)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return filtered


async def _send_json(send, status: int, error: str, detail: str) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Basic realm="sdapi"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install_security(app, state, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Add auth, Host/Origin checks, the body limit and (with --cors-allow-origins) CORS to ``app``.

    Call before the app starts serving; covers every route of ``app``, including ones added afterwards.
    """
    server = state.options.server
    credentials = parse_credentials(server.api_auth, server.api_auth_path)
    ui_login = not server.nowebui and bool(server.gradio_auth or server.gradio_auth_path)
    origins = {o.strip().rstrip("/") for o in (server.cors_allow_origins or "").split(",") if o.strip()}
    loopback_only = server.host in LOOPBACK_HOSTS and not server.share
    allowed_hosts = set(LOOPBACK_HOSTS) | ({server.server_name.lower()} if server.server_name else set())

    app.add_middleware(SecurityMiddleware, app=app, credentials=credentials, loopback_only=loopback_only,
                       allowed_hosts=allowed_hosts, allowed_origins=origins, max_body_bytes=max_body_bytes, ui_login=ui_login)
    if origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=sorted(origins), allow_methods=["*"], allow_headers=["*"],
                           allow_credentials=True)
