"""The FastAPI app factory: the composition root that wires settings, services and routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

import exemplar
from exemplar.app.errors import install_error_handlers
from exemplar.app.middleware import BodyLimitMiddleware, RequestIdMiddleware
from exemplar.app.observability import AccessMiddleware
from exemplar.app.openapi import install_openapi
from exemplar.app.routes import (
    adapters,
    admin,
    builds,
    chat,
    dashboard,
    health,
    infer,
    items,
    maintenance,
    pools,
    select,
    strategies,
)
from exemplar.app.services import Services, build_services
from exemplar.app.settings import Settings

__all__ = ["create_app", "create_app_from_environment"]

log = logging.getLogger(__name__)


def create_app_from_environment() -> FastAPI:
    """The app of one worker of ``exemplar serve --workers N``: each worker process builds its own
    services from the ``EXEMPLAR_*`` variables (the command puts its options there) and shares the
    data directory, catalog and memory-mapped segments with the others."""
    from exemplar.app.cli import configure_logging
    from exemplar.app.memory import tune_allocator
    from exemplar.retrieval.index.vectors import set_search_threads

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    tune_allocator()  # a fresh process: before its services open any pool
    set_search_threads(settings.search_threads, processes=settings.workers)
    return create_app(settings)


def create_app(
    settings: Settings | None = None,
    services: Services | None = None,
    *,
    on_ready: Callable[[], None] | None = None,
) -> FastAPI:
    settings = settings or Settings()
    services = services or build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.select_limiter = anyio.CapacityLimiter(settings.select_threads)
        await run_in_threadpool(services.snapshots.load_all)
        # Versions other processes commit reach this one through the refresher, off the request path.
        services.snapshots.start()
        services.ready = True
        log.info("exemplar ready: %d pools in %s", len(services.pools.list()), settings.data_dir)
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            services.ready = False
            await services.chat.aclose()  # its connections belong to this event loop
            services.close()

    app = FastAPI(
        title="Exemplar",
        version=exemplar.__version__,
        summary="In-context demonstration retrieval for multimodal LLMs.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["authorization", "content-type", "x-api-key", "x-request-id"])
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessMiddleware, observability=services.obs)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(health.router)
    # The hot path first: routes are matched in order, and no other route's path overlaps its paths.
    app.include_router(select.router)
    app.include_router(pools.router)
    app.include_router(items.router)
    app.include_router(maintenance.router)
    app.include_router(adapters.router)
    app.include_router(builds.router)
    app.include_router(infer.router)
    app.include_router(chat.router)
    app.include_router(strategies.router)
    app.include_router(admin.router)
    app.include_router(dashboard.router)
    install_openapi(app)
    return app
