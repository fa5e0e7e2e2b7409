"""Wire models for reading, listing and deleting a pool's items."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from exemplar.app.schemas.common import StrictModel

__all__ = ["ItemOut", "ItemPageOut", "ItemsDeleteIn", "ItemsDeleted"]


class ItemOut(BaseModel):
    id: str
    label: str | None
    text: str | None
    image: str | None = Field(description="The item's image reference (relative to its media root).")
    domain: str | None
    metadata: dict[str, Any]


class ItemPageOut(BaseModel):
    pool: str
    version: int | None = Field(description="The version this page was read from.")
    items: list[ItemOut] = Field(description="Oldest write first; a replaced item moves to the end.")
    matching: int = Field(description="Items of the version that pass the filters (all pages).")
    next_cursor: str | None = Field(description="Pass as 'cursor' for the next page; null on the last page.")


class ItemsDeleteIn(StrictModel):
    ids: list[str] = Field(min_length=1, max_length=10_000, description="Item ids to delete.")


class ItemsDeleted(BaseModel):
    pool: str
    version: int | None = Field(description="The current version after the deletion (unchanged when nothing was deleted).")
    deleted: list[str] = Field(description="Ids removed by this request.")
    missing: list[str] = Field(description="Ids the pool did not hold (not an error).")
