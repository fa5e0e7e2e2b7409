"""The HTTP layer and composition root: app factory, settings, routes, schemas, CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exemplar.app.settings import Settings

if TYPE_CHECKING:
    from exemplar.app.main import create_app

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> object:
    # PEP 562: every CLI command imports this package (through exemplar.app.settings); the app
    # factory, and with it the routes and FastAPI's app machinery, loads only where it is used.
    if name == "create_app":
        from exemplar.app.main import create_app

        globals()[name] = create_app
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
