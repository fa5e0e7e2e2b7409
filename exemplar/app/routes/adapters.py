from __future__ import annotations

import dataclasses

from fastapi import APIRouter

from exemplar.app.adapters import cci_config
from exemplar.app.errors import ErrorEnvelope
from exemplar.app.schemas.adapters import AdapterTrainRequest, JobList, JobOut
from exemplar.app.services import ADMIN, AdaptersDep, JobsDep, SettingsDep
from exemplar.retrieval import JobRecord

router = APIRouter(tags=["adapters and jobs"], responses={
    400: {"model": ErrorEnvelope}, 404: {"model": ErrorEnvelope}, 409: {"model": ErrorEnvelope},
})


def job_out(job: JobRecord) -> JobOut:
    return JobOut(**dataclasses.asdict(job))


@router.post("/v1/pools/{pool}/adapters", status_code=202, summary="Train the CCI adapter of the current version (a job)",
             dependencies=[ADMIN])
def train_adapter(pool: str, body: AdapterTrainRequest, adapters: AdaptersDep, settings: SettingsDep) -> JobOut:
    params = body.model_dump()
    cci_config(params, settings.device)  # refuse bad parameters now, not in the job
    return job_out(adapters.start(pool, params))


@router.get("/v1/jobs", summary="Recent jobs, newest first", dependencies=[ADMIN])
def list_jobs(jobs: JobsDep, pool: str | None = None, limit: int = 100) -> JobList:
    return JobList(jobs=[job_out(j) for j in jobs.list(pool=pool, limit=max(1, min(limit, 1000)))])


@router.get("/v1/jobs/{job_id}", summary="One job: state, progress, result, errors", dependencies=[ADMIN])
def get_job(job_id: str, jobs: JobsDep) -> JobOut:
    return job_out(jobs.get(job_id))


@router.post("/v1/jobs/{job_id}/cancel", summary="Cancel a queued or running job", dependencies=[ADMIN])
def cancel_job(job_id: str, jobs: JobsDep) -> JobOut:
    return job_out(jobs.cancel(job_id))
