"""Wire model for HTTP builds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from exemplar.app.schemas.common import INDEX_FACTORY, StrictModel

__all__ = ["BuildRequest"]

# An absolute path with no '..' segment (and no NUL); whether it lies under the roots, and exists,
# is the server's to say (403, 404).
_SERVER_PATH = {"pattern": r"^(?![\s\S]*/\.\.(?:/|$))/[^\u0000]*$"}


class BuildRequest(StrictModel):
    source: str = Field(description="A manifest, .tar shard or folder on the server, under EXEMPLAR_SOURCE_ROOTS.",
                        json_schema_extra=_SERVER_PATH)
    format: Literal["jsonl", "csv", "parquet", "imagefolder", "webdataset"] | None = None
    media_root: str | None = Field(None, description="Resolve image paths here (default: the manifest's folder).",
                                   json_schema_extra=_SERVER_PATH)
    mode: Literal["replace", "upsert"] = "replace"
    index: str | None = Field(None, description="FAISS factory string or 'auto' (default: the pool's).",
                              json_schema_extra={"minLength": 1, "pattern": INDEX_FACTORY})
    shard_size: int = Field(4096, ge=1, le=10_000_000)
    batch_size: int = Field(256, ge=1, le=65_536)
    workers: int = Field(2, ge=1, le=256)
