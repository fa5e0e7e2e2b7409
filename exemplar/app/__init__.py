"""The HTTP layer and composition root: app factory, settings, routes, schemas, CLI."""

from exemplar.app.main import create_app
from exemplar.app.settings import Settings

__all__ = ["Settings", "create_app"]
