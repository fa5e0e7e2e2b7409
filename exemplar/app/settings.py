"""Every setting in one place: ``EXEMPLAR_*`` environment variables, an optional ``.env`` file
(``EXEMPLAR_ENV_FILE``), and command-line overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from exemplar.app.auth import ApiKeyConfig
from exemplar.retrieval.mllm import EndpointConfig
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EXEMPLAR_",
        env_file=os.environ.get("EXEMPLAR_ENV_FILE"),
        extra="ignore",
    )

    data_dir: Path = Field(Path("exemplar-data"), description="Catalog, versions and media live here.")
    catalog_url: str | None = Field(
        None, description="The catalog's database: unset for SQLite in the data directory (one host), or "
        "postgresql://user:password@host:5432/db shared by replicas on several hosts, whose data directory is then "
        "one shared file system (see docs/deployment.md).")
    lease_s: float = Field(10.0, ge=0.5, le=3600.0, description="How long a replica's claim on its jobs and builds "
                           "outlives its last heartbeat (heartbeats every lease_s / 4); another replica takes over "
                           "after that.")
    retention_grace_s: float | None = Field(
        None, ge=0.0, description="How long a file no kept version lists waits before it is removed; unset: 0 with "
        "SQLite, 60 s with PostgreSQL (and never while a live replica serves it).")
    host: str = Field("127.0.0.1", description="Address `exemplar serve` binds to.")
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = Field("json", description="Structured JSON lines, or plain text.")
    api_keys: list[ApiKeyConfig] = Field(default_factory=list, description="API keys with scopes (see README).")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty: CORS off.")
    device: str = Field("auto", description="Encoder device: auto, cpu, cuda or cuda:N.")
    encode_batch_size: int = Field(64, ge=1, le=4096, description="Images or texts per encoder forward pass.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Larger images are refused (decompression bombs).")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Larger request bodies get 413.")
    max_k: int = Field(256, ge=1, description="Largest k (or k_per_class x classes) a select may ask for.")
    max_batch_queries: int = Field(256, ge=1, description="Most queries in one select/batch call.")
    max_items_per_request: int = Field(1024, ge=1, description="Most items in one POST .../items call.")
    default_encoder: str = Field("open_clip:exemplar-tiny", description="Encoder for pools created without one.")
    refresh_s: float = Field(1.0, ge=0.0, description="How often a background thread checks the catalog for versions "
                             "made current by other processes (at least every 50 ms); requests never wait on it.")
    keep_versions: int = Field(20, ge=0, description="Ready versions kept per pool besides the current one, for "
                               "rollback (older ones are pruned after each write); 0 keeps all.")
    compaction: bool = Field(True, description="Merge a pool's small segments in the background after writes.")
    compaction_merge_factor: int = Field(8, ge=2, le=1000, description="Segments of one size tier merged at once "
                                         "(a pool keeps about this many per power of ten of its size).")
    source_roots: list[Path] = Field(
        default_factory=list,
        description="Folders that builds requested over HTTP may read sources and media from (JSON list). "
        "Empty: HTTP builds are refused; `exemplar build` on the command line reads any local path.",
    )
    executor: Literal["local", "ray"] = Field("local", description="Where builds encode: this process, or Ray Data.")
    ray_address: str | None = Field(None, description="Ray cluster address ('auto', 'ray://host:10001'); None: a local Ray.")
    ray_actors: int = Field(2, ge=1, description="Encoder actors (Ray executor).")
    ray_gpus_per_actor: float = Field(0.0, ge=0.0, description="GPUs per encoder actor (Ray executor).")
    search_threads: int = Field(
        0, ge=0, description="OpenMP threads per faiss search in the server. 0: adapt, the process's share of the "
        "cores (see workers) for a search over 8 or more rows (a balanced request's classes, a batch) that runs "
        "alone, one thread for a single query (waking a team costs more than it saves) and while requests overlap "
        "(they already keep the cores busy). N: always N.",
    )
    workers: int = Field(
        1, ge=1, le=64, description="Server processes sharing this machine (`exemplar serve --workers` sets it): "
        "a lone search's threads (search_threads 0) are the cores divided among them.",
    )
    select_threads: int = Field(
        2, ge=1, description="Threads that run select and select/batch requests (more wait their turn; searches "
        "arriving together are still batched). Python runs one thread at a time: threads beyond the cores "
        "mostly hand the interpreter lock around, at a CPU cost per request. Serve more cores with --workers.",
    )
    index_memory_budget_bytes: int = Field(8 * 1024**3, ge=1, description="Memory budget for index: auto.")
    mllm_endpoints: dict[str, EndpointConfig] = Field(
        default_factory=dict,
        description="Downstream OpenAI-compatible endpoints by name, as JSON: "
        '{"qwen": {"base_url": "http://127.0.0.1:8001/v1", "model": "Qwen2-VL-7B", "api_key_env": "QWEN_KEY"}}',
    )
