"""The FastAPI app: REST under /api, /ws/{project_id}, /healthz, the canvas at /.

`create_app()` wires one Gateway per app: the hub of sockets, the relay of Prefect events, the
dispatcher of clicks and the reconciler; the lifespan runs the relay and reconciler loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from api import health, metrics, routes_assets, routes_projects, routes_takes, security, ws
from api.auth import canvas_index
from api.dispatcher import Dispatcher
from api.hub import Hub
from api.reconcile import Reconciler
from api.relay import Relay
from api.settings import Settings
from studio.graph import GraphError
from studio.manifest import ManifestError, Project
from studio.nodes import UnknownNodeType
from studio.store import ProjectNotFound, ProjectStore
from studio.takes import TakeError
from studio.workspace import PathEscapeError

log = logging.getLogger(__name__)


class Gateway:
    """Everything one API process holds: settings, store, sockets, relay, dispatcher."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ProjectStore(settings.workspace)
        self.hub = Hub()
        self.relay = Relay(self.store, self.hub)
        self.dispatcher = Dispatcher(self.store, self.hub, self.relay)
        self.reconciler = Reconciler(self.store, self.relay, interval=settings.reconcile_seconds,
                                     lost_after=settings.lost_after_seconds)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def load(self, project_id: str) -> Project:
        return await asyncio.to_thread(self.store.load, project_id)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A background task the gateway keeps a reference to (and cancels at shutdown)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        self.settings.workspace.ensure()
        self.spawn(self.relay.run())
        self.spawn(self.reconciler.run())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self.hub.close_all()


def _json_error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail, **extra})


def _install_error_handlers(app: FastAPI) -> None:
    """Domain errors become 4xx with the domain's own words (never a 500)."""
    statuses: dict[type[Exception], int] = {
        ProjectNotFound: 404,
        PathEscapeError: 400,
        TakeError: 409,
        GraphError: 422,
        ManifestError: 422,
        UnknownNodeType: 422,
    }
    for exc_type, status in statuses.items():
        def handler(request: Request, exc: Exception, status: int = status) -> JSONResponse:
            return _json_error(status, str(exc))

        app.add_exception_handler(exc_type, handler)

    def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        lines = [f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in errors]
        safe = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in errors]
        return _json_error(422, "\n".join(lines) or "invalid request", errors=safe)

    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]


def _install_edge(app: FastAPI, settings: Settings) -> None:
    """Host and Origin checks and the body limit (api/security.py), outermost first."""
    app.add_middleware(security.BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(security.EdgeGuard, allowed_hosts=settings.hosts(),
                       allowed_origins=settings.origins())
    security.install_log_redaction()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        security.install_log_redaction()  # again: the server's logging is configured by now
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(
        title="Generative Studio API",
        description="Projects, node graphs and takes of the Text-to-Image node; the WebSocket "
        "protocol at /ws/{project_id} is described in docs/api.md and /api/ws-protocol.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.state.settings = settings
    _install_error_handlers(app)
    app.include_router(routes_projects.router)
    app.include_router(routes_assets.router)
    app.include_router(ws.router)
    _install_edge(app, settings)
    app.include_router(metrics.router)

    app.include_router(health.router)
    app.include_router(routes_takes.router)

    if settings.web_dist.is_dir():
        index = settings.web_dist / "index.html"

        @app.get("/", include_in_schema=False)
        def canvas(request: Request) -> Response:
            return canvas_index(request, index)  # trades ?token= for the session cookie

        # Mounted last: /api, /ws, /docs and /healthz take precedence.
        app.mount("/", StaticFiles(directory=settings.web_dist, html=True), name="canvas")
    else:
        @app.get("/", include_in_schema=False)
        def root() -> dict[str, str]:
            return {"api": "/api", "docs": "/docs", "health": "/healthz",
                    "canvas": "not built (make web)"}

    return app
