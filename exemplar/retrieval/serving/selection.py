"""The select service: turns queries and options into demonstrations from a pool's current version."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from exemplar.errors import EmptyPool, Incompatible, InvalidRequest, NotFound, choices
from exemplar.retrieval.adapt.adapters import AdapterMissing
from exemplar.retrieval.index.vectors import normalize, searching
from exemplar.retrieval.store.centring import centred
from exemplar.retrieval.store.items import check_vector, unit_rows
from exemplar.retrieval.ports import EncoderProvider
from exemplar.retrieval.serving.cache import SnapshotCache
from exemplar.retrieval.serving.composite import ItemColumn
from exemplar.retrieval.serving.fusion import check_fusion, fused_queries
from exemplar.retrieval.serving.manyicl import (
    MAX_SHUFFLE_SEED,
    SHARED_MODES,
    SharedMode,
    check_fixed,
    check_shuffle,
    fixed_window,
)
from exemplar.retrieval.store.store import PoolStore
from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.pipeline import run_stages
from exemplar.retrieval.serving.stages import StageCache, StageContext, get_stage
from exemplar.retrieval.serving.strategies import Pick, SelectionOptions, Strategy, arrange, get_strategy
from exemplar.retrieval.serving.strategies.base import parse_params

if TYPE_CHECKING:
    from exemplar.retrieval.mllm import MLLMRegistry

__all__ = ["Demonstration", "Prepared", "Query", "SelectionLimits", "SelectionResult", "SelectionService"]


@dataclasses.dataclass(frozen=True)
class Query:
    """Exactly one of ``image`` / ``text`` / ``embedding`` / ``item_id`` (``image`` and ``text``
    together are averaged, as for ``image+text`` pools); none at all only for ``random``."""

    image: bytes | None = None
    text: str | None = None
    embedding: Sequence[float] | None = None
    item_id: str | None = None

    @property
    def empty(self) -> bool:
        return self.image is None and self.text is None and self.embedding is None and self.item_id is None


@dataclasses.dataclass(frozen=True)
class Demonstration:
    id: str
    label: str | None
    text: str | None
    image: str | None
    domain: str | None
    score: float | None
    rank: int
    metadata: dict[str, Any]
    judge_score: float | None = None  # the rerank stage's judge: P("Yes"), beside the similarity


@dataclasses.dataclass(frozen=True)
class SelectionResult:
    pool: str
    version: int
    encoder: str
    strategy: str
    demonstrations: list[Demonstration]
    timing_ms: dict[str, float]
    # label -> slots of the per-class quota that the class could not fill in this window
    shortfall: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Queries embedded against one snapshot, ready for one or more windows."""

    snap: Snapshot
    strategy: Strategy
    vectors: np.ndarray | None
    self_rows: list[int | None]
    allowed: np.ndarray | None
    encode_ms: float
    # The queries as given, for stages that show them to a model (rerank); one per vector, or
    # more than the vectors where one selection stands for the batch.
    queries: tuple[Query, ...] = ()

    def shared(self) -> "Prepared":
        """One query standing for the batch: the normalised mean vector; no query item is picked."""
        vectors = None if self.vectors is None else normalize(self.vectors.mean(axis=0, keepdims=True))
        excluded = [r for r in self.self_rows if r is not None]
        allowed = self.allowed
        if excluded:
            allowed = np.ones(self.snap.size, bool) if allowed is None else allowed.copy()
            allowed[excluded] = False
            if not allowed.any():
                raise EmptyPool("the batch's query items are all the pool holds", param="queries")
        return dataclasses.replace(self, vectors=vectors, self_rows=[None], allowed=allowed)


@dataclasses.dataclass(frozen=True)
class SelectionLimits:
    max_k: int = 256
    max_offset: int = 100_000
    max_queries: int = 256


class SelectionService:
    def __init__(self, store: PoolStore, snapshots: SnapshotCache, encoders: EncoderProvider,
                 limits: SelectionLimits = SelectionLimits(), mllms: "MLLMRegistry | None" = None,
                 stage_cache: StageCache | None = None) -> None:
        self.store = store
        self.snapshots = snapshots
        self.encoders = encoders
        self.limits = limits
        # The model endpoints a stage may call (rerank's judge); None: such stages are refused.
        self.mllms = mllms
        self.stage_cache = stage_cache if stage_cache is not None else StageCache()

    def select(self, pool: str, query: Query, strategy: str, options: SelectionOptions) -> SelectionResult:
        return self.select_batch(pool, [query], strategy, options, param_prefix="query")[0]

    def select_batch(
        self, pool: str, queries: Sequence[Query], strategy_name: str, options: SelectionOptions,
        *, shared: bool | SharedMode = False, shuffle_seed: int | None = None, param_prefix: str = "queries",
    ) -> list[SelectionResult]:
        """One result per query; with ``shared``, one demonstration set for the whole batch (ManyICL):
        ``"mean"`` (or ``True``) selects it for the normalised mean of the queries, ``"fixed"`` is a
        seeded class-balanced sample that does not depend on the queries (``manyicl``), its order
        shuffled by ``shuffle_seed`` when given. Either way no query item is in it."""
        mode = "mean" if shared is True else shared or None
        if mode not in (None, *SHARED_MODES):
            raise InvalidRequest("shared is true, false, 'mean' or 'fixed'", param="shared")
        if shuffle_seed is not None and not 0 <= shuffle_seed <= MAX_SHUFFLE_SEED:
            raise InvalidRequest(f"shuffle_seed must be between 0 and {MAX_SHUFFLE_SEED}", param="shuffle_seed")
        check_shuffle(mode, shuffle_seed)
        if mode == "fixed":
            check_fixed(strategy_name, options)
        prepared = self.prepare(pool, queries, strategy_name, options, param_prefix=param_prefix)
        if mode == "fixed":
            return self.run_fixed(prepared, options, shuffle_seed) * len(queries)
        if mode == "mean":
            prepared = prepared.shared()
        results = self.run(prepared, options)
        return results * len(queries) if mode else results

    def run_fixed(self, prepared: "Prepared", options: SelectionOptions,
                  shuffle_seed: int | None = None) -> list[SelectionResult]:
        """The batch's fixed set (``manyicl.fixed_window``), without scores: it was drawn without
        the queries. ``shuffle_seed`` shuffles its order (``order`` otherwise lays it out)."""
        started = time.perf_counter()
        options = self._check_options(options, prepared.strategy)
        snap = prepared.snap
        excluded = [r for r in prepared.self_rows if r is not None]
        window = fixed_window(snap, prepared.allowed, excluded, options)
        if shuffle_seed is None:
            picks = arrange(window.picks, options.order, snap, options.seed)
        else:
            picks = arrange(window.picks, "shuffle", snap, shuffle_seed)
        items = _ItemReader(snap, [p.row for p in picks])
        timing = {"encode": prepared.encode_ms, "search": round((time.perf_counter() - started) * 1000, 3)}
        return [SelectionResult(
            pool=snap.pool, version=snap.version, encoder=snap.encoder, strategy=prepared.strategy.name,
            demonstrations=[items.demonstration(p) for p in picks], timing_ms=timing,
            shortfall={snap.labels[code]: n for code, n in sorted(window.shortfall.items())},
        )]

    def prepare(
        self, pool: str, queries: Sequence[Query], strategy_name: str, options: SelectionOptions,
        *, param_prefix: str = "queries",
    ) -> "Prepared":
        """Validate, take the serving snapshot and embed the queries once; ``run`` can then select
        any number of windows from the same version and ranking."""
        started = time.perf_counter()
        strategy = get_strategy(strategy_name)
        options = self._check_options(options, strategy)
        if not queries:
            raise InvalidRequest("no queries given", param="queries")
        if len(queries) > self.limits.max_queries:
            raise InvalidRequest(f"at most {self.limits.max_queries} queries per batch", param="queries")
        snap = self.snapshots.snapshot(pool)
        if options.k_per_class is not None:
            classes = len(options.labels) if options.labels is not None else len(snap.labels)
            if options.k_per_class * classes > self.limits.max_k:
                raise Incompatible(
                    f"k_per_class x {classes} classes exceeds the limit of {self.limits.max_k} demonstrations; "
                    "lower k_per_class or restrict 'labels'",
                    param="k_per_class",
                )
        allowed = self._allowed(snap, options)
        if options.fusion is not None and not all(q.empty for q in queries):  # random needs no query
            check_fusion(snap)
        vectors, self_rows, weights = self._embed(snap, queries, strategy.needs_query, param_prefix, options.fusion)
        if weights is not None:
            snap = snap.in_fused_space(weights)
        encode_ms = round((time.perf_counter() - started) * 1000, 3)
        return Prepared(snap, strategy, vectors, self_rows, allowed, encode_ms, tuple(queries))

    def run(self, prepared: "Prepared", options: SelectionOptions) -> list[SelectionResult]:
        started = time.perf_counter()
        options = self._check_options(options, prepared.strategy)
        snap = prepared.snap
        strategy = prepared.strategy
        try:
            with searching():
                if options.stages:
                    stages = sorted(((get_stage(name), params) for name, params in options.stages.items()),
                                    key=lambda pair: pair[0].position)
                    windows = run_stages(strategy, snap, prepared.vectors, prepared.self_rows, prepared.allowed,
                                         options, stages, self._contexts(prepared))
                else:
                    windows = strategy.select(snap, prepared.vectors, prepared.self_rows, prepared.allowed, options)
        except AdapterMissing as exc:
            adapted = self.store.adapted_versions(self.store.pool(snap.pool).id)
            if not adapted:
                raise
            raise AdapterMissing(
                f"{exc.message}; adapters exist for version(s) {', '.join(map(str, adapted))}: activate one "
                "of them or train an adapter for the current version",
                param=exc.param,
            ) from None
        timing = {"encode": prepared.encode_ms, "search": round((time.perf_counter() - started) * 1000, 3)}
        arranged = [arrange(window.picks, options.order, snap, options.seed, by_rank=bool(options.stages))
                    for window in windows]
        items = _ItemReader(snap, [p.row for picks in arranged for p in picks])
        return [
            SelectionResult(
                pool=snap.pool,
                version=snap.version,
                encoder=snap.encoder,
                strategy=prepared.strategy.name,
                demonstrations=[items.demonstration(p) for p in picks],
                timing_ms=timing,
                shortfall={snap.labels[code]: n for code, n in sorted(window.shortfall.items())},
            )
            for window, picks in zip(windows, arranged)
        ]

    def _contexts(self, prepared: Prepared) -> list[StageContext]:
        """One per selection: its query where it selects for one (not where it stands for a batch)."""
        n = len(prepared.self_rows)
        own = len(prepared.queries) == n
        return [StageContext(snap=prepared.snap, query=prepared.queries[i] if own else None,
                             vector=prepared.vectors[i] if prepared.vectors is not None else None,
                             mllms=self.mllms, cache=self.stage_cache) for i in range(n)]

    def _check_options(self, options: SelectionOptions, strategy: Strategy) -> SelectionOptions:
        """The options with the strategy's and the stages' parameters validated, or ``InvalidRequest``."""
        params = parse_params("strategy", strategy.name, strategy.Params, options.params, "strategy_params")
        stages = {name: parse_params("stage", name, get_stage(name).Params, raw, name)
                  for name, raw in options.stages.items()}
        if params is not options.params or stages != options.stages:  # the hot path has neither: no copy
            options = dataclasses.replace(options, params=params, stages=stages)
        limits = self.limits
        # k_per_class, when given, sets the window and k is not used; each is checked on its own.
        if options.k_per_class is not None and not 1 <= options.k_per_class <= limits.max_k:
            raise InvalidRequest(f"k_per_class must be between 1 and {limits.max_k}", param="k_per_class")
        if options.k is not None and options.k_per_class is None and not 1 <= options.k <= limits.max_k:
            raise InvalidRequest(f"k must be between 1 and {limits.max_k}", param="k")
        if options.k is None and options.k_per_class is None:
            raise InvalidRequest(f"give k (1 to {limits.max_k}), or k_per_class for per-class quotas", param="k")
        strategy.check(options)
        if options.invariant_base not in ("balanced", "topk"):
            raise InvalidRequest("invariant_base must be 'balanced' or 'topk'", param="invariant_base")
        if not 0 <= options.offset <= limits.max_offset:
            raise InvalidRequest(f"offset must be between 0 and {limits.max_offset}", param="offset")
        return options

    @staticmethod
    def _allowed(snap: Snapshot, options: SelectionOptions) -> np.ndarray | None:
        mask: np.ndarray | None = None
        if options.labels is not None:
            mask = _member_mask(snap.label_codes, snap.labels, options.labels, "labels")
        if options.domains is not None:
            domain_mask = _member_mask(snap.domain_codes, snap.domains, options.domains, "domains")
            mask = domain_mask if mask is None else mask & domain_mask
        found = snap.row_of.rows_of(list(options.exclude_ids)) if options.exclude_ids else []
        excluded = [int(r) for r in found if r >= 0]
        if excluded:
            mask = np.ones(snap.size, bool) if mask is None else mask.copy()
            mask[excluded] = False
        if mask is not None and not mask.any():
            raise EmptyPool("no items of the pool match the labels, domains and exclusions given", param="labels")
        return mask

    def _embed(
        self, snap: Snapshot, queries: Sequence[Query], needs_query: bool, prefix: str,
        fusion: tuple[float, float] | None = None,
    ) -> tuple[np.ndarray | None, list[int | None], tuple[float, float] | None]:
        """The query vectors, each query item's row, and with ``fusion`` the weights the queries'
        modalities leave (the vectors are then in the fused view, ``serving/fusion.py``)."""
        def param(i: int, field: str | None = None) -> str:
            # A list of queries is named by position ("queries[3]"); one query by its own name
            # ("query", or where a request carries it, e.g. "exemplar.query").
            base = f"{prefix}[{i}]" if prefix.endswith("queries") else prefix
            return f"{base}.{field}" if field else base

        if all(q.empty for q in queries) and not needs_query:
            return None, [None] * len(queries), None
        vectors = np.zeros((len(queries), snap.dim), np.float32)
        self_rows: list[int | None] = [None] * len(queries)
        images: list[tuple[int, bytes]] = []
        texts: list[tuple[int, str]] = []
        encoder = None
        units = _unit_vectors(queries, snap.dim)
        for i, q in enumerate(queries):
            given = sum(x is not None for x in (q.image, q.text, q.embedding, q.item_id))
            if given == 0:
                raise InvalidRequest("a query needs one of 'image', 'text', 'embedding' or 'item_id'", param=param(i))
            if given > 1 and not (given == 2 and q.image is not None and q.text is not None):
                raise InvalidRequest("give one of 'image', 'text', 'embedding' or 'item_id' (or 'image' with 'text')", param=param(i, "embedding" if q.embedding is not None else "item_id"))
            if q.item_id is not None:
                row = snap.row_of.get(q.item_id)
                if row is None:
                    raise NotFound(f"item {q.item_id!r} is not in version {snap.version} of pool {snap.pool!r}", param=param(i, "item_id"))
                vectors[i] = snap.vectors[row]
                self_rows[i] = row
            elif q.embedding is not None and fusion is not None:
                raise InvalidRequest("fusion weighs a query's image and text vectors: give an 'image', a 'text', "
                                     "both, or an 'item_id' instead of an 'embedding'", param=param(i, "embedding"))
            elif q.embedding is not None:
                unit = units.get(i)
                vectors[i] = unit if unit is not None else check_vector(q.embedding, snap.dim, param=param(i, "embedding"))
            else:
                if encoder is None:
                    encoder = self.encoders(snap.encoder)
                if q.image is not None:
                    try:
                        images.append((i, encoder.preprocess_image(q.image)))  # type: ignore[arg-type]
                    except InvalidRequest as exc:
                        exc.param = param(i, "image")
                        raise
                if q.text is not None:
                    if not q.text.strip():
                        raise InvalidRequest("query text is empty", param=param(i, "text"))
                    texts.append((i, q.text))
        image_vectors = text_vectors = None
        if images:
            assert encoder is not None
            image_vectors = encoder.encode_preprocessed([img for _, img in images])
        if texts:
            assert encoder is not None
            try:
                text_vectors = encoder.encode_texts([t for _, t in texts])
            except InvalidRequest as exc:
                exc.param = param(texts[0][0], "text")
                raise
        if fusion is not None:
            fused, weights = fused_queries(snap, self_rows, [i for i, _ in images], image_vectors,
                                           [i for i, _ in texts], text_vectors, fusion, param)
            return fused, self_rows, weights
        if image_vectors is not None:
            vectors[[i for i, _ in images]] += image_vectors
        if text_vectors is not None:
            vectors[[i for i, _ in texts]] += text_vectors
        vectors = normalize(vectors)
        if snap.centre is not None:  # a centred pool: queries as its rows were stored (an item's row already is)
            given = [i for i, row in enumerate(self_rows) if row is None]
            vectors[given] = centred(vectors[given], snap.centre)
        return vectors, self_rows, None


def _unit_vectors(queries: Sequence[Query], dim: int) -> dict[int, np.ndarray]:
    """The unit vectors of a batch's ``embedding`` queries that pass ``check_vector``, by query, in
    one ``unit_rows`` call (the same bits as one at a time); the others are left to ``check_vector``,
    in the query loop, so a batch's first error is the one reported as before."""
    given = [(i, q.embedding) for i, q in enumerate(queries) if q.embedding is not None]
    if len(given) < 2:
        return {}
    fitting = [(i, v) for i, v in ((i, np.asarray(e, dtype=np.float64)) for i, e in given)
               if v.ndim == 1 and v.shape[0] == dim]
    if not fitting:
        return {}
    units, problems = unit_rows(np.stack([v for _, v in fitting]))
    passed = [i for (i, _), problem in zip(fitting, problems) if problem is None]
    return dict(zip(passed, units))


def _member_mask(codes: np.ndarray, names: tuple[str, ...], wanted: Sequence[str], param: str) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(names)}
    unknown = [w for w in wanted if w not in lookup]
    if unknown:
        raise Incompatible(f"unknown {param[:-1]} {unknown[0]!r}; this pool has: {choices(names)}", param=param)
    return np.isin(codes, [lookup[w] for w in wanted])


def _demonstration(snap: Snapshot, pick: Pick) -> Demonstration:
    row = pick.row
    return Demonstration(
        id=snap.ids[row],
        label=snap.label_of(row),
        text=snap.texts[row],
        image=snap.images[row],
        domain=snap.domain_of(row),
        score=pick.score,
        rank=pick.rank,
        metadata=snap.metadata_of(row),
        judge_score=pick.judge_score,
    )


class _ItemReader:
    """The item fields of every picked row of a request, read together: over segments, one Arrow
    ``take`` per segment and field instead of a segment lookup per row and field (a select/batch of
    64 queries picks hundreds of rows). Snapshots whose columns are plain sequences are read by row."""

    _FIELDS = ("ids", "texts", "images", "metadata")

    def __init__(self, snap: Snapshot, rows: Sequence[int]) -> None:
        self.snap = snap
        self.values: dict[int, tuple[Any, ...]] = {}
        columns = [getattr(snap, name) for name in self._FIELDS]
        space = snap.space
        if len(rows) < 2 or space is None or not all(isinstance(c, ItemColumn) and c.space is space for c in columns):
            return
        unique = np.unique(np.asarray(rows, np.int64))
        for p, positions, local in space.split(unique):
            items = space.parts[p].segment.items
            taken = [items.column(c.field).take(local).to_pylist() for c in columns]
            self.values.update(zip(unique[positions].tolist(), zip(*taken)))

    def demonstration(self, pick: Pick) -> Demonstration:
        found = self.values.get(pick.row)
        if found is None:
            return _demonstration(self.snap, pick)
        snap, row = self.snap, pick.row
        item_id, text, image, metadata = found
        return Demonstration(
            id=item_id, label=snap.label_of(row), text=text, image=image, domain=snap.domain_of(row),
            score=pick.score, rank=pick.rank, metadata=json.loads(metadata) if metadata else {},
            judge_score=pick.judge_score,
        )
