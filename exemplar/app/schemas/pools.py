"""Wire models for pools, items and versions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, StrictFloat

from exemplar.app.schemas.common import IDENTIFIER, INDEX_FACTORY, NON_ZERO_VECTOR, Base64Image, StrictModel, limit
from exemplar.encoders.spec import MAX_PRECOMPUTED_DIM, TINY_ARCH
from exemplar.retrieval.store.items import EMBED_MODES, MAX_ID_CHARS, MAX_TEXT_CHARS
from exemplar.retrieval.pools import METRICS, POOL_NAME

__all__ = ["ItemIn", "ItemsAdded", "ItemsIn", "PoolCreate", "PoolList", "PoolOut", "PoolStatsOut", "VersionOut"]


def _one_to(n: int) -> str:
    """A regular expression for the decimal numbers 1..n."""
    digits = str(n)
    parts = [f"[1-9][0-9]{{0,{len(digits) - 2}}}"] if len(digits) > 1 else []
    for i, digit in enumerate(digits):  # the numbers of n's length that fall below n first at digit i
        low = 1 if i == 0 else 0
        if int(digit) - 1 >= low:
            parts.append(f"{digits[:i]}[{low}-{int(digit) - 1}][0-9]{{{len(digits) - i - 1}}}")
    return "(?:" + "|".join([*parts, digits]) + ")"


# The spec grammar (exemplar.encoders.spec): which architectures, tags and files exist is the
# server's to say.
_ENCODER = (rf"^(?:precomputed:{_one_to(MAX_PRECOMPUTED_DIM)}"
            rf"|open_clip:(?:local-dir:[\s\S]+|{TINY_ARCH}|[^@]+@[\s\S]+))$")
_LABEL = {"minLength": 1, "maxLength": MAX_ID_CHARS, **IDENTIFIER}


class PoolCreate(StrictModel):
    # Enforced here: PoolService's own check reads '$' as Python does, before a final newline too.
    name: str = Field(description="Letters, digits, '_', '-', '.'; up to 64 characters.", examples=["derm"],
                      pattern=POOL_NAME.pattern)
    encoder: str | None = Field(
        None,
        description="Encoder spec, e.g. 'open_clip:ViT-B-32@laion2b_s34b_b79k', 'open_clip:exemplar-tiny', "
        "'open_clip:local-dir:/models/clip', 'precomputed:512'. Defaults to the server's default encoder.",
        json_schema_extra={"pattern": _ENCODER},
    )
    embed: str = Field("image", description="What is embedded: 'image', 'text' or 'image+text'.",
                       json_schema_extra={"enum": list(EMBED_MODES)})
    metric: str = Field("ip", description="Similarity: 'ip' (inner product on L2-normalised vectors, i.e. cosine).",
                        json_schema_extra={"enum": list(METRICS)})
    index: str = Field("auto", description="'auto' or a FAISS index factory string such as 'Flat', 'HNSW32' or "
                       "'IVF1024,Flat'.", json_schema_extra={"minLength": 1, "pattern": INDEX_FACTORY})
    centre: bool = Field(False, description="Store vectors less a mean vector, then normalised, and centre queries "
                         "alike: a remedy for anisotropic encoders, whose items all look alike. The mean is taken from "
                         "the pool's first write (at least 32 items, e.g. a build) and kept by later writes; a build "
                         "with mode 'replace' takes a new one.")


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
    centre: bool = Field(False, description="Whether the pool's vectors are stored centred (see PoolCreate).")


class PoolStatsOut(PoolOut):
    labels: dict[str, int] = Field(description="Items per label in the current version.")
    domains: dict[str, int] = Field(description="Items per domain in the current version.")
    versions: list[VersionOut]
    adapter: dict[str, Any] | None = Field(None, description="The CCI adapter of the current version, if any.")
    segments: int = Field(0, description="Segments the current version is made of (compaction merges small ones).")
    deleted: int = Field(0, description="Deleted rows of those segments that compaction has not purged yet.")


class PoolList(BaseModel):
    pools: list[PoolOut]


class ItemIn(StrictModel):
    id: str = Field(min_length=1, max_length=512, json_schema_extra=IDENTIFIER)
    label: str | None = Field(None, json_schema_extra=_LABEL)
    text: str | None = Field(None, json_schema_extra={"maxLength": MAX_TEXT_CHARS})
    domain: str | None = Field(None, json_schema_extra=_LABEL)
    image: Base64Image | None = None
    embedding: list[StrictFloat] | None = Field(  # no "1" or true coerced into a vector
        None, max_length=16384, json_schema_extra=NON_ZERO_VECTOR,
    )
    metadata: dict[str, Any] = Field(default_factory=dict)


class ItemsIn(StrictModel):
    items: list[ItemIn] = Field(min_length=1, json_schema_extra=limit("maxItems", "max_items"))


class ItemsAdded(BaseModel):
    pool: str
    version: int
    added: int
    size: int
