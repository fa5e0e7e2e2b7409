"""Wire models for adapter training and jobs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from exemplar.app.schemas.common import StrictModel
from exemplar.retrieval.build.jobs import JobState

__all__ = ["AdapterTrainRequest", "JobList", "JobOut"]


class AdapterTrainRequest(StrictModel):
    """CCI adapter parameters; defaults are documented in docs/methods.md."""

    head: Literal["linear", "mlp"] = "linear"
    out_dim: int | None = Field(None, ge=1, le=8192, description="Output width; default: the encoder's.")
    hidden_dim: int | None = Field(None, ge=1, le=16384, description="MLP hidden width; default: the input width.")
    temperature: float = Field(0.1, ge=0.001, le=10)
    cross_domain_weight: float = Field(2.0, gt=0, le=100, description="Weight of positives from another domain.")
    cross_domain_only: bool = Field(False, description="Only positives from another domain count.")
    domain_loss: Literal["none", "class_mean", "adversarial"] = "class_mean"
    domain_weight: float = Field(1.0, ge=0, le=100)
    epochs: int = Field(100, ge=1, le=1000)
    max_steps: int = Field(1000, ge=1, le=1_000_000, description="Optimiser steps in all (bounds time on large pools).")
    batch_size: int = Field(512, ge=8, le=65536)
    lr: float = Field(1e-3, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    patience: int = Field(10, ge=1, le=1000)
    seed: int = Field(0, ge=0, le=2**32 - 1)


class JobOut(BaseModel):
    id: str
    kind: str
    pool: str
    state: JobState
    params: dict[str, Any]
    progress: dict[str, Any] = Field(description="done, total, rate_per_s and job-specific fields.")
    result: dict[str, Any] | None
    errors: list[dict[str, Any]]
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempt: int = Field(1, description="Claims of the job: above 1 once a replica took it over from one that stopped.")
    owner: str | None = Field(None, description="The replica (host:pid:nonce) that holds or last held it.")


class JobList(BaseModel):
    jobs: list[JobOut]
