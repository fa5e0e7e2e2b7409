"""Wire models for select and select/batch."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, StrictFloat

from exemplar.app.schemas.common import Base64Image, StrictModel

__all__ = ["BatchSelectRequest", "BatchSelectResponse", "DemonstrationOut", "QueryIn", "SelectRequest", "SelectResponse"]


class QueryIn(StrictModel):
    image: Base64Image | None = None
    text: str | None = Field(None, max_length=20_000)
    embedding: list[StrictFloat] | None = Field(None, max_length=16384)  # no "1" or true coerced into a vector
    item_id: str | None = Field(None, max_length=512)


class SelectOptionsIn(StrictModel):
    strategy: str = Field("topk", description="A registered strategy: 'topk', 'balanced', 'random', 'invariant'.")
    k: int | None = Field(8, description="Demonstrations per query (ignored when k_per_class is set).")
    k_per_class: int | None = Field(None, description="balanced: exactly this many per class.")
    labels: list[str] | None = Field(None, description="Only items with these labels.")
    domains: list[str] | None = Field(None, description="Only items from these domains.")
    exclude_ids: list[str] = Field(default_factory=list, max_length=10_000)
    order: Literal["most_similar_first", "most_similar_last", "shuffle", "class_grouped"] = "most_similar_first"
    seed: int = 0
    offset: int = Field(0, description="Skip this many results of the ranking: the next window.")
    invariant_base: Literal["balanced", "topk"] = Field(
        "balanced", description="invariant: per-class quotas ('balanced') or global nearest ('topk') in the adapter space."
    )


class SelectRequest(SelectOptionsIn):
    query: QueryIn = Field(default_factory=QueryIn, description="One of image, text, embedding or item_id.")


class BatchSelectRequest(SelectOptionsIn):
    queries: list[QueryIn] = Field(min_length=1)
    shared: bool = Field(
        False, description="One demonstration set for the whole batch (ManyICL): selected for the normalised mean "
        "of the queries, excluding every query item, and repeated in each result."
    )


class DemonstrationOut(BaseModel):
    id: str
    label: str | None
    text: str | None
    image: str | None = Field(description="The item's image reference (relative to its media root).")
    domain: str | None
    score: float | None = Field(description="Cosine similarity to the query.")
    rank: int = Field(description="Position in the strategy's full ranking, 0-based.")
    metadata: dict[str, Any]


class SelectResponse(BaseModel):
    pool: str
    version: int
    encoder: str
    strategy: str
    demonstrations: list[DemonstrationOut]
    timing_ms: dict[str, float]


class BatchSelectResponse(BaseModel):
    shared: bool = False
    results: list[SelectResponse] = Field(description="One per query, in order.")
