"""Who is asking: the user name and whether the client is on another machine, for the request being handled.

The HTTP layer (``modules.api.security``) and the UI's handlers set it with :func:`acting_as`; the job queue (turns
between users) and the remote limits read it with :func:`current`. It is a context variable, so it follows the
request into the thread a sync route runs in (Starlette's threadpool copies the context) and never leaks into
another request.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Requester:
    user: str = ""  # the login name; "": none (local use, or a server without logins)
    remote: bool = False  # the client is not on this machine (not a loopback address)


LOCAL = Requester()
_current: ContextVar[Requester] = ContextVar("requester", default=LOCAL)


def current() -> Requester:
    """The requester of the request being handled; :data:`LOCAL` outside any request."""
    return _current.get()


@contextlib.contextmanager
def acting_as(requester: Requester) -> Iterator[Requester]:
    """Code in this block (and threads started from its context) sees ``requester`` as :func:`current`."""
    token = _current.set(requester)
    try:
        yield requester
    finally:
        _current.reset(token)


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this machine's: loopback IPs (v4, v6, v4-mapped), "localhost", no address
    (a Unix socket) and "testserver" (Starlette's TestClient). Anything else counts as remote."""
    if not host or host in ("localhost", "testserver"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def basic_user(authorization: str) -> str:
    """The user name in an HTTP Basic ``Authorization`` header ("" when there is none); not a check."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        return base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")[0]
    except (binascii.Error, ValueError):
        return ""


def from_asgi(scope: dict, verified: bool) -> Requester:
    """The requester of an ASGI request; the Basic user is taken only when ``verified`` (its password was checked)."""
    client = scope.get("client") or (None, None)
    user = ""
    if verified:
        header = next((v for k, v in scope.get("headers", []) if k.lower() == b"authorization"), b"")
        user = basic_user(header.decode("latin-1"))
    return Requester(user, not is_loopback(client[0]))


def from_gradio(request) -> Requester:
    """The requester of a Gradio event (``gr.Request``): its login (``--gradio-auth``) and client address."""
    host = getattr(getattr(request, "client", None), "host", None)
    return Requester(getattr(request, "username", None) or "", not is_loopback(host))
