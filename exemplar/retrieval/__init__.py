"""The core: pool store, snapshot cache, FAISS index wrapper, selection strategies, builds.

No HTTP and no torch here. Encoders are reached through the ``Encoder`` port (``ports.py``).
"""

from exemplar.retrieval.adapt.training import AdapterService
from exemplar.retrieval.adapt.adapters import Adapter, AdapterMissing, AdapterTrainer, TrainedAdapter
from exemplar.retrieval.build.runner import BuildReport, BuildService, BuildSpec, LocalShardEncoder, ShardEncoder, build_pool
from exemplar.retrieval.adapt.evaluation import DEFAULT_EVAL_STRATEGIES, EvalReport, Interval, evaluate_lodo
from exemplar.retrieval.adapt.model_eval import ArmResult, ModelEvalReport, evaluate_with_model
from exemplar.retrieval.build.jobs import JobRecord, JobService
from exemplar.retrieval.index.vectors import Effort, VectorIndex, gpu_available
from exemplar.retrieval.store.items import NewItem
from exemplar.retrieval.pools import PoolService, PoolStats
from exemplar.retrieval.ports import Encoder, EncoderProvider
from exemplar.retrieval.serving.cache import SnapshotCache
from exemplar.retrieval.serving.selection import Demonstration, Query, SelectionLimits, SelectionResult, SelectionService
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.strategies import ORDERS, SelectionOptions, list_strategies
from exemplar.retrieval.store.store import PoolStore

__all__ = [
    "DEFAULT_EVAL_STRATEGIES",
    "ORDERS",
    "Adapter",
    "AdapterMissing",
    "AdapterService",
    "AdapterTrainer",
    "ArmResult",
    "EvalReport",
    "Interval",
    "JobRecord",
    "JobService",
    "TrainedAdapter",
    "evaluate_lodo",
    "evaluate_with_model",
    "ModelEvalReport",
    "BuildReport",
    "BuildService",
    "BuildSpec",
    "LocalShardEncoder",
    "ShardEncoder",
    "Demonstration",
    "Effort",
    "Encoder",
    "EncoderProvider",
    "NewItem",
    "PoolService",
    "PoolStats",
    "PoolStore",
    "Query",
    "SelectionLimits",
    "SelectionOptions",
    "SelectionResult",
    "SelectionService",
    "Snapshot",
    "SnapshotCache",
    "VectorIndex",
    "build_pool",
    "gpu_available",
    "list_strategies",
]
