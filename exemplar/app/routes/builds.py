from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from exemplar.app.errors import ErrorEnvelope
from exemplar.app.routes.adapters import job_out
from exemplar.app.schemas.adapters import JobOut
from exemplar.app.schemas.builds import BuildRequest
from exemplar.app.services import ADMIN, BuildsDep, SettingsDep
from exemplar.errors import InvalidRequest, NotPermitted
from exemplar.retrieval import BuildSpec

router = APIRouter(prefix="/v1/pools", tags=["builds"], responses={
    400: {"model": ErrorEnvelope},
    403: {"model": ErrorEnvelope, "description": "Builds over HTTP are off (no EXEMPLAR_SOURCE_ROOTS), the path "
          "lies outside the source roots, or the key lacks the admin scope"},
    404: {"model": ErrorEnvelope, "description": "No such pool, or no such source under the roots"},
    409: {"model": ErrorEnvelope},
})


def _under_roots(path: str, roots: list[Path], param: str) -> str:
    # Whether builds are on, and where they may read, is the server's configuration: 403, not 400.
    if not roots:
        raise NotPermitted("builds over HTTP are off: the server has no EXEMPLAR_SOURCE_ROOTS; "
                           "use `exemplar build` on the server, or configure the roots")
    candidate = Path(path)
    if not candidate.is_absolute() or ".." in candidate.parts:
        raise InvalidRequest("give an absolute path without '..'", param=param)
    if "\0" in path:
        raise InvalidRequest("a path cannot contain a NUL character", param=param)
    real = candidate.resolve()
    for root in roots:
        real_root = root.resolve()
        if real == real_root or real_root in real.parents:
            return str(real)
    raise NotPermitted(f"{param} must lie under one of the configured source roots", param=param)


@router.post("/{pool}/builds", status_code=202, summary="Build a new version from a source on the server (a job)",
             dependencies=[ADMIN])
def start_build(pool: str, body: BuildRequest, builds: BuildsDep, settings: SettingsDep) -> JobOut:
    source = _under_roots(body.source, settings.source_roots, "source")
    media_root = _under_roots(body.media_root, settings.source_roots, "media_root") if body.media_root else None
    spec = BuildSpec(pool=pool, source=source, format=body.format, media_root=media_root, mode=body.mode,
                     index=body.index, shard_size=body.shard_size, batch_size=body.batch_size, workers=body.workers)
    return job_out(builds.start(spec))
