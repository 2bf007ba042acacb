"""Caps the server's owner sets on what clients on other machines may ask for (``--remote-max-pixels``,
``--remote-max-steps``); local clients are never capped. Checked before a job is queued (``modules.scripts.submit``)
on every sampling pass the job would run: the request's own, a script's extra pass (hires fix's target size) and
each job a script makes (the cells of an X/Y/Z plot).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .cmd_args import ServerOptions
from .processing.params import ParamError
from .requester import Requester


@dataclass(frozen=True)
class PassSize:
    """One sampling pass of a job; ``size_field`` and ``steps_field`` name the request fields that set it."""

    width: int
    height: int
    steps: int
    size_field: str = "width"
    steps_field: str = "steps"


@dataclass(frozen=True)
class RemoteLimits:
    max_pixels: int | None = None  # width × height
    max_steps: int | None = None

    @classmethod
    def from_options(cls, server: ServerOptions) -> RemoteLimits:
        return cls(server.remote_max_pixels, server.remote_max_steps)

    def applies_to(self, requester: Requester) -> bool:
        """Whether jobs of ``requester`` are checked: a remote client, and a cap is set."""
        return requester.remote and (self.max_pixels is not None or self.max_steps is not None)

    def check(self, passes: Iterable[PassSize]) -> None:
        """Raise :class:`ParamError` naming the field of the first pass over a cap."""
        for p in passes:
            if self.max_pixels is not None and p.width * p.height > self.max_pixels:
                raise ParamError(p.size_field, f"{p.width}×{p.height} is {p.width * p.height} pixels; this server "
                                 f"allows remote clients at most {self.max_pixels} (--remote-max-pixels)")
            if self.max_steps is not None and p.steps > self.max_steps:
                raise ParamError(p.steps_field, f"{p.steps} steps; this server allows remote clients at most "
                                 f"{self.max_steps} (--remote-max-steps)")
