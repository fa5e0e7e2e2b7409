"""The services the routes use, built once at start-up and reached through typed dependencies."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import Depends, Request

from exemplar.app.adapters import CCITrainer
from exemplar.app.auth import Authenticator, require_scope
from exemplar.app.memory import release_freed_memory
from exemplar.app.observability import Observability, StateCollector
from exemplar.app.settings import Settings
from exemplar.encoders import EncoderRegistry
from exemplar.retrieval import (
    AdapterService,
    BuildService,
    JobService,
    PoolService,
    PoolStore,
    SelectionLimits,
    SelectionService,
    SnapshotCache,
)
from exemplar.retrieval.index.auto import AutoIndexPolicy
from exemplar.retrieval.chat import ChatService
from exemplar.retrieval.infer import InferService
from exemplar.retrieval.upstream import ChatUpstreams
from exemplar.retrieval.store.maintenance import CompactionService
from exemplar.retrieval.store.compaction import CompactionPolicy
from exemplar.retrieval.mllm import MLLMRegistry

__all__ = [
    "ADMIN",
    "QUERY",
    "AdaptersDep",
    "BuildsDep",
    "ChatDep",
    "CompactionDep",
    "InferDep",
    "JobsDep",
    "ObsDep",
    "PoolsDep",
    "Services",
    "ServicesDep",
    "SettingsDep",
    "SnapshotsDep",
    "build_services",
]


@dataclasses.dataclass
class Services:
    settings: Settings
    encoders: EncoderRegistry
    store: PoolStore
    snapshots: SnapshotCache
    pools: PoolService
    selection: SelectionService
    jobs: JobService
    adapters: AdapterService
    mllms: MLLMRegistry
    infer: InferService
    chat: ChatService
    builds: BuildService
    compaction: CompactionService
    auth: Authenticator
    obs: Observability
    ready: bool = False
    # Threads that run select and select/batch (an anyio CapacityLimiter, made when the app starts;
    # None: anyio's shared default).
    select_limiter: Any = None

    def close(self) -> None:
        self.snapshots.close()  # before the catalog closes under its refresher
        self.jobs.close(wait=True)
        self.mllms.close()
        self.store.close()


def build_services(settings: Settings) -> Services:
    encoders = EncoderRegistry(
        device=settings.device, batch_size=settings.encode_batch_size, max_pixels=settings.max_image_pixels
    )
    store = PoolStore(settings.data_dir, keep_versions=settings.keep_versions,
                      index_policy=AutoIndexPolicy(memory_budget_bytes=settings.index_memory_budget_bytes),
                      catalog_url=settings.catalog_url, lease_s=settings.lease_s,
                      retention_grace_s=settings.retention_grace_s)
    # Listens to the store's changes from here on; the app starts its refresher (other processes' changes).
    snapshots = SnapshotCache(store, refresh_s=settings.refresh_s, on_swap=release_freed_memory)
    pools = PoolService(store, snapshots, encoders)
    # The endpoints serve infer, and judge candidates for the rerank stage of any selection.
    mllms = MLLMRegistry(settings.mllm_endpoints)
    selection = SelectionService(
        store, snapshots, encoders, SelectionLimits(max_k=settings.max_k, max_queries=settings.max_batch_queries),
        mllms=mllms,
    )
    jobs = JobService(store.catalog)
    adapters = AdapterService(store, snapshots, jobs, CCITrainer(settings.device))
    builds = BuildService(store, snapshots, encoders, jobs, stage=shard_stage(settings))
    compaction = CompactionService(store, jobs, CompactionPolicy(merge_factor=settings.compaction_merge_factor),
                                   segments=snapshots.segments, automatic=settings.compaction)
    # Builds left running by a replica that died resume here from their last completed shard, now
    # and whenever the keeper finds another one whose lease ran out.
    jobs.start({BuildService.KIND: builds.work})
    services = Services(settings=settings, encoders=encoders, store=store, snapshots=snapshots, pools=pools,
                        selection=selection, jobs=jobs,
                        adapters=adapters, mllms=mllms, infer=InferService(selection, mllms),
                        chat=ChatService(selection, ChatUpstreams(settings.mllm_endpoints)), builds=builds,
                        compaction=compaction,
                        auth=Authenticator(settings.api_keys), obs=Observability())
    services.obs.add_state_collector(StateCollector(services))
    return services


def shard_stage(settings: Settings):  # noqa: ANN201 - a stage factory or None (local threads)
    if settings.executor == "ray":
        from exemplar.app.ray_executor import RayStage

        return RayStage(address=settings.ray_address, num_gpus_per_actor=settings.ray_gpus_per_actor,
                        actors=settings.ray_actors, device=settings.device, max_pixels=settings.max_image_pixels)
    return None


# The dependencies below are coroutines: they only read attributes, and FastAPI runs a plain
# function dependency in its thread pool, a hop that costs more CPU than the whole lookup.
def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    return _services(request)


async def get_pools(request: Request) -> PoolService:
    return _services(request).pools


async def get_snapshots(request: Request) -> SnapshotCache:
    return _services(request).snapshots


async def get_settings(request: Request) -> Settings:
    return _services(request).settings


async def get_jobs(request: Request) -> JobService:
    return _services(request).jobs


async def get_adapters(request: Request) -> AdapterService:
    return _services(request).adapters


async def get_infer(request: Request) -> InferService:
    return _services(request).infer


async def get_chat(request: Request) -> ChatService:
    return _services(request).chat


async def get_builds(request: Request) -> BuildService:
    return _services(request).builds


async def get_compaction(request: Request) -> CompactionService:
    return _services(request).compaction


async def get_obs(request: Request) -> Observability:
    return _services(request).obs


QUERY = Depends(require_scope("query"))
ADMIN = Depends(require_scope("admin"))

ServicesDep = Annotated[Services, Depends(get_services)]
PoolsDep = Annotated[PoolService, Depends(get_pools)]
SnapshotsDep = Annotated[SnapshotCache, Depends(get_snapshots)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
AdaptersDep = Annotated[AdapterService, Depends(get_adapters)]
InferDep = Annotated[InferService, Depends(get_infer)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
BuildsDep = Annotated[BuildService, Depends(get_builds)]
CompactionDep = Annotated[CompactionService, Depends(get_compaction)]
ObsDep = Annotated[Observability, Depends(get_obs)]
