"""The admin dashboard: one static page served by the app itself; its data comes from the admin
JSON endpoints with the admin key the user enters (kept in the browser's localStorage)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["dashboard"])

_PAGE = files("exemplar.app").joinpath("static/dashboard.html")


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    return HTMLResponse(_PAGE.read_text(encoding="utf-8"), headers={
        "content-security-policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
                                   "script-src 'self' 'unsafe-inline'; connect-src 'self'",
        "x-content-type-options": "nosniff", "x-frame-options": "DENY", "cache-control": "no-cache",
    })
