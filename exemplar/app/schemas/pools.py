"""Wire models for pools, items and versions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, StrictFloat

from exemplar.app.schemas.common import Base64Image, StrictModel

__all__ = ["ItemIn", "ItemsAdded", "ItemsIn", "PoolCreate", "PoolList", "PoolOut", "PoolStatsOut", "VersionOut"]


class PoolCreate(StrictModel):
    name: str = Field(description="Letters, digits, '_', '-', '.'; up to 64 characters.", examples=["derm"])
    encoder: str | None = Field(
        None,
        description="Encoder spec, e.g. 'open_clip:ViT-B-32@laion2b_s34b_b79k', 'open_clip:exemplar-tiny', "
        "'open_clip:local-dir:/models/clip', 'precomputed:512'. Defaults to the server's default encoder.",
    )
    embed: str = Field("image", description="What is embedded: 'image', 'text' or 'image+text'.")
    metric: str = Field("ip", description="Similarity: 'ip' (inner product on L2-normalised vectors, i.e. cosine).")
    index: str = Field("auto", description="'auto' or a FAISS index factory string such as 'Flat' or 'IVF1024,Flat'.")


class VersionOut(BaseModel):
    version: int
    state: str = Field(description="'building', 'ready', 'failed' or 'pruned' (files removed under EXEMPLAR_KEEP_VERSIONS).")
    size: int
    index: str
    source: str
    created_at: float
    current: bool
    index_stats: dict[str, Any] | None = Field(None, description="Index chosen, tuned parameters, measured recall@k.")


class PoolOut(BaseModel):
    name: str
    encoder: str
    embed: str
    metric: str
    index: str
    dim: int
    current_version: int | None
    size: int
    created_at: float


class PoolStatsOut(PoolOut):
    labels: dict[str, int] = Field(description="Items per label in the current version.")
    domains: dict[str, int] = Field(description="Items per domain in the current version.")
    versions: list[VersionOut]
    adapter: dict[str, Any] | None = Field(None, description="The CCI adapter of the current version, if any.")


class PoolList(BaseModel):
    pools: list[PoolOut]


class ItemIn(StrictModel):
    id: str = Field(min_length=1, max_length=512)
    label: str | None = None
    text: str | None = None
    domain: str | None = None
    image: Base64Image | None = None
    embedding: list[StrictFloat] | None = Field(None, max_length=16384)  # no "1" or true coerced into a vector
    metadata: dict[str, Any] = Field(default_factory=dict)


class ItemsIn(StrictModel):
    items: list[ItemIn] = Field(min_length=1)


class ItemsAdded(BaseModel):
    pool: str
    version: int
    added: int
    size: int
