from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from exemplar.app.services import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/info", summary="Version, and whether API keys are required (no secrets)")
def info(services: ServicesDep) -> dict[str, object]:
    import exemplar

    return {"name": "exemplar", "version": exemplar.__version__, "auth_required": services.auth.enabled}


@router.get("/readyz", summary="Pools are loaded and requests can be served")
def readyz(services: ServicesDep) -> JSONResponse:
    if not services.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    return JSONResponse({"status": "ready", "pools": len(services.pools.list())})
