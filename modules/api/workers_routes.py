"""``GET /sdapi/v1/workers``: the generation workers (``--workers`` / ``--ray-address``), one object each."""
from __future__ import annotations

from fastapi import APIRouter


def workers_listing(state) -> dict:
    """``{"enabled": bool, "workers": [...]}``: each worker's name, state, node, device, pid, loaded checkpoint and
    VAE, current job, jobs done, failures, restarts and last start error (empty without workers)."""
    pool = state.queue.workers
    return {"enabled": pool is not None, "workers": pool.status() if pool is not None else []}


def add_workers_routes(router: APIRouter, state) -> None:
    """Add the workers listing to the ``/sdapi/v1`` router."""

    @router.get("/workers")
    def workers() -> dict:
        return workers_listing(state)
