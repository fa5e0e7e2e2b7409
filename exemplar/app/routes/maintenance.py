"""Pool upkeep on demand: compaction (it also runs by itself after writes)."""

from __future__ import annotations

from fastapi import APIRouter

from exemplar.app.errors import ErrorEnvelope
from exemplar.app.routes.adapters import job_out
from exemplar.app.schemas.adapters import JobOut
from exemplar.app.services import ADMIN, CompactionDep

router = APIRouter(prefix="/v1/pools", tags=["maintenance"], responses={
    400: {"model": ErrorEnvelope}, 404: {"model": ErrorEnvelope},
})


@router.post("/{pool}/compact", status_code=202, dependencies=[ADMIN],
             summary="Merge the current version's small segments and purge deleted rows now (a job)")
def compact(pool: str, compaction: CompactionDep) -> JobOut:
    return job_out(compaction.start(pool))
