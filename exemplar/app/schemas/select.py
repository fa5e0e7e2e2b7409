"""Wire models for select and select/batch."""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    ValidationError,
    ValidatorFunctionWrapHandler,
    create_model,
    field_validator,
    model_validator,
)

from exemplar.app.schemas.common import (
    MAX_VECTOR,
    NON_BLANK,
    NON_ZERO_VECTOR,
    Base64Image,
    Base64Vector,
    StrictModel,
    limit,
    rules,
    strategy_names,
)
from exemplar.errors import ExemplarError, InvalidRequest
from exemplar.retrieval import Effort, Query, SelectionOptions
from exemplar.retrieval.serving.manyicl import FIXED_STRATEGY, MAX_SHUFFLE_SEED, check_shuffle
from exemplar.retrieval.serving.stages import list_stages
from exemplar.retrieval.serving.strategies import get_strategy, list_strategies

__all__ = [
    "OPTION_RULES",
    "PARAMS_RULES",
    "BatchSelectRequest",
    "BatchSelectResponse",
    "DemonstrationOut",
    "FIXED_RULES",
    "QueryIn",
    "SelectOptionsIn",
    "SelectRequest",
    "SearchIn",
    "SelectResponse",
    "SelectionFieldsIn",
    "vector_errors",
]

# The document's rules for queries, as SelectionService checks them (it refuses anything else).
_QUERY_FIELDS = {"image": "string", "text": "string", "embedding": "array", "embedding_b64": "string",
                 "item_id": "string"}
_NULL = {"type": "null"}


def _only(*given: str) -> dict[str, Any]:
    """A query whose other fields are absent or null."""
    return {"properties": {name: _NULL for name in _QUERY_FIELDS if name not in given}}


# One kind of query, or image with text (their vectors averaged); or none at all.
_QUERY_SHAPES = [_only("image", "text"), _only("embedding"), _only("embedding_b64"), _only("item_id")]
_EMPTY_QUERY = _only()
_NON_EMPTY_QUERY: dict[str, Any] = {
    "anyOf": [{"required": [name], "properties": {name: {"type": kind}}} for name, kind in _QUERY_FIELDS.items()]
}
# Every strategy but 'random' ranks by similarity to the query, so needs one.
_RANDOM = {"properties": {"strategy": {"const": "random"}}, "required": ["strategy"]}


def _strategy_params_rules() -> list[dict[str, Any]]:
    """Each strategy's own parameters, as the document states them: when 'strategy' names it. An
    absent 'strategy' meets every condition, so then only what every strategy takes passes (nothing:
    the default, 'topk', takes no parameters)."""
    out = []
    for name in list_strategies():
        model = get_strategy(name).Params
        schema = model.model_json_schema() if model is not None else {"type": "object", "maxProperties": 0}
        schema.pop("title", None)
        out.append({"if": {"properties": {"strategy": {"const": name}}},
                    "then": {"properties": {"strategy_params": {"anyOf": [schema, _NULL]}}}})
    return out


# What any request with a strategy states about its parameters (select, select/batch, infer, chat).
PARAMS_RULES = (
    # The flat invariant_base and strategy_params.base, when both are given, agree.
    {"if": {"required": ["invariant_base", "strategy_params"], "properties": {"strategy_params": {
        "type": "object", "required": ["base"], "properties": {"base": {"type": "string"}}}}},
     "then": {"anyOf": [{"properties": {"invariant_base": {"const": base},
                                        "strategy_params": {"properties": {"base": {"const": base}}}}}
                        for base in ("balanced", "topk")]}},
    *_strategy_params_rules(),
)
OPTION_RULES = (
    # k is the window unless k_per_class is given, which sets it instead (k is then not used).
    {"if": {"properties": {"k_per_class": {"type": "integer"}}, "required": ["k_per_class"]},
     "else": {"properties": {"k": {"type": "integer", "minimum": 1, **limit("maximum", "max_k")}}}},
    # Strategies without per-class quotas ('topk', the default, among them) refuse k_per_class ...
    *({"if": {"properties": {"strategy": {"const": name}}}, "then": {"properties": {"k_per_class": _NULL}}}
      for name in list_strategies() if not get_strategy(name).takes_k_per_class),
    # ... and so does invariant over 'topk'.
    {"if": {"properties": {"strategy": {"const": "invariant"}, "invariant_base": {"const": "topk"}},
            "required": ["strategy", "invariant_base"]},
     "then": {"properties": {"k_per_class": _NULL}}},
    # ... named in its own parameters too.
    {"if": {"properties": {"strategy": {"const": "invariant"}, "strategy_params": {
        "type": "object", "required": ["base"], "properties": {"base": {"const": "topk"}}}},
        "required": ["strategy", "strategy_params"]},
     "then": {"properties": {"k_per_class": _NULL}}},
    *PARAMS_RULES,
)


class QueryIn(StrictModel):
    model_config = ConfigDict(json_schema_extra=lambda schema: schema.update(anyOf=copy.deepcopy(_QUERY_SHAPES)))

    image: Base64Image | None = None
    text: str | None = Field(None, max_length=20_000, json_schema_extra={"pattern": NON_BLANK})
    embedding: list[StrictFloat] | None = Field(  # no "1" or true coerced into a vector
        None, max_length=MAX_VECTOR, json_schema_extra=NON_ZERO_VECTOR,
        description="The query vector as a JSON list of numbers (its width is the pool encoder's).",
    )
    embedding_b64: Base64Vector | None = Field(
        None, description="The query vector as base64 of its little-endian float32 bytes (4 bytes per value), "
        "instead of 'embedding': about a quarter of the size, and cheaper to decode. The same vector selects the same "
        "demonstrations either way. In numpy: base64.b64encode(v.astype('<f4').tobytes()).",
    )
    item_id: str | None = Field(None, max_length=512)

    @model_validator(mode="after")
    def _one_vector(self) -> "QueryIn":
        if self.embedding is not None and self.embedding_b64 is not None:
            raise ValueError("give the vector once: 'embedding' or 'embedding_b64', not both")
        return self

    def to_query(self) -> Query:
        embedding = self.embedding if self.embedding_b64 is None else self.embedding_b64
        return Query(image=self.image, text=self.text, embedding=embedding, item_id=self.item_id)

    @property
    def vector_field(self) -> str:
        """The field the query's vector came in: what an error about it names."""
        return "embedding_b64" if self.embedding_b64 is not None else "embedding"


_VECTOR_PARAM = re.compile(r"^(?P<prefix>\w+)(?:\[(?P<i>\d+)\])?\.embedding$")


@contextlib.contextmanager
def vector_errors(queries: Sequence[QueryIn]) -> Iterator[None]:
    """The core names a query's vector 'embedding' in its errors (``query.embedding``,
    ``queries[3].embedding``); for a vector sent as ``embedding_b64`` the error names that field."""
    try:
        yield
    except ExemplarError as exc:
        found = _VECTOR_PARAM.match(exc.param or "")
        if found:
            i = int(found["i"] or 0)
            if i < len(queries) and queries[i].embedding_b64 is not None:
                exc.param = f"{exc.param}_b64"
        raise


class SearchIn(StrictModel):
    """How hard the index searches for one request; the default is what the version was tuned to."""

    model_config = ConfigDict(json_schema_extra=rules(
        {"if": {"properties": {"recall": {"const": "exact"}}, "required": ["recall"]},
         "then": {"properties": {"nprobe": _NULL}}}))

    recall: Literal["fast", "default", "exact"] = Field(
        "default", description="'default': the settings tuned when the version was built (window recall >= 0.95 "
        "against exact search, measured then). 'fast': half their probes (IVF lists, HNSW efSearch; per class "
        "for balanced), lower recall. 'exact': an exact scan of the stored vectors (every row; about 160 ms a "
        "query at 1M x 512 on one core here), for checking or for small filtered pools.",
    )
    nprobe: int | None = Field(
        None, ge=1, le=65_536, description="Inverted lists to probe per search (per class for balanced) on IVF "
        "indexes, instead of the tuned number; more: higher recall, slower. Not with recall 'exact'; graph (HNSW) "
        "and exact indexes ignore it.",
    )

    @model_validator(mode="after")
    def _exact_has_no_depth(self) -> "SearchIn":
        if self.recall == "exact" and self.nprobe is not None:
            raise ValueError("recall 'exact' scans every row: leave out nprobe, or ask for another recall")
        return self

    def effort(self) -> Effort:
        return Effort(exact=self.recall == "exact", scale=0.5 if self.recall == "fast" else 1.0, nprobe=self.nprobe)


_NO_DEFAULT = {"json_schema_extra": lambda schema: schema.pop("default", None)}


class FusionIn(StrictModel):
    """Weights of the image and the text similarity, for pools created with embed 'image+text'."""

    model_config = ConfigDict(json_schema_extra={
        "minProperties": 1,
        "not": {"properties": {"image": {"const": 0}, "text": {"const": 0}}, "required": ["image", "text"]},
    })

    # Typed float with no default in the document: null is refused, a missing weight is 1 - the other.
    image: float = Field(None, ge=0, le=1, description="Weight of cos(query image, item image); default 1 - text.",
                         **_NO_DEFAULT)  # type: ignore[arg-type, assignment]
    text: float = Field(None, ge=0, le=1, description="Weight of cos(query text, item text); default 1 - image.",
                        **_NO_DEFAULT)  # type: ignore[arg-type, assignment]

    @model_validator(mode="after")
    def _some_weight(self) -> "FusionIn":
        # Here, not where the weights are used, so the error names the field wherever it sits (exemplar.fusion).
        if self.image is None and self.text is None:
            raise ValueError("fusion needs an 'image' weight, a 'text' weight or both")
        if self.image == 0 and self.text == 0:
            raise ValueError("fusion's weights are both 0: give one above 0")
        return self

    def weights(self) -> tuple[float, float]:
        """``(image, text)`` scaled to sum to 1 (a missing weight is 1 minus the other)."""
        image = 1.0 - self.text if self.image is None else self.image
        text = 1.0 - self.image if self.text is None else self.text
        return image / (image + text), text / (image + text)


def _strategy_params_doc() -> str:
    described = []
    for name in list_strategies():
        model = get_strategy(name).Params
        fields = ", ".join(f"'{f}'" for f in model.model_fields) if model is not None else "none"
        described.append(f"{name}: {fields}")
    return ("The strategy's own parameters (GET /v1/strategies lists them): " + "; ".join(described)
            + ". Flat fields such as invariant_base keep working; one value may not come both ways.")


# One field per registered pipeline stage, typed by the stage's own parameters: a new stage is a
# module and its registration, and appears here and in the document by itself.
_StagesIn = create_model(  # type: ignore[call-overload]
    "StagesIn", __base__=StrictModel,
    **{stage.name: (stage.Params | None, Field(None, description=f"Pipeline stage: {stage.description}"))
       for stage in list_stages()},
)


class SelectionFieldsIn(_StagesIn):  # type: ignore[misc, valid-type]
    """Filters and layout shared by every request that selects (select, select/batch, infer)."""

    labels: list[str] | None = Field(None, description="Only items with these labels.")
    domains: list[str] | None = Field(None, description="Only items from these domains.")
    exclude_ids: list[str] = Field(default_factory=list, max_length=10_000)
    order: Literal["most_similar_first", "most_similar_last", "shuffle", "class_grouped"] = "most_similar_first"
    seed: int = Field(0, ge=0)
    offset: int = Field(0, description="Skip this many results of the ranking: the next window.",
                        json_schema_extra={"minimum": 0, **limit("maximum", "max_offset")})
    invariant_base: Literal["balanced", "topk"] = Field(
        "balanced", description="invariant: per-class quotas ('balanced') or global nearest ('topk') in the adapter space."
    )
    fill: bool = Field(
        False, description="Per-class quotas (balanced, invariant, random with k_per_class): when a class has fewer "
        "items than its quota, let the other classes take its slots. Either way the response's 'shortfall' says "
        "which classes came up short."
    )
    search: SearchIn = Field(default_factory=lambda: SearchIn(), description="How hard the index searches: "
                             "speed against recall, per request.")
    strategy_params: dict[str, Any] | None = Field(None, description=_strategy_params_doc())
    fusion: FusionIn | None = Field(
        None, description="Image+text pools: rank by image_weight * cos(image) + text_weight * cos(text) "
        "(VideoICL's alpha-weighted similarity) instead of the fused vector; weights scaled to sum to 1. A query "
        "with an image and a text (or an item_id) uses both; an image-only or text-only query its own modality. "
        "An exact scan of the pool's stored image and text vectors; not with 'invariant' or an 'embedding' query.",
    )

    def selection_options(self, *, k: int | None, k_per_class: int | None = None) -> SelectionOptions:
        """The one mapping from the wire to the core's options."""
        given = (self.strategy_params or {}).get("base")
        if "invariant_base" in self.model_fields_set and given is not None and given != self.invariant_base:
            raise InvalidRequest("invariant_base and strategy_params.base disagree: give the base once",
                                 param="strategy_params.base")
        stages = {stage.name: getattr(self, stage.name) for stage in list_stages()}
        return SelectionOptions(
            k=k, k_per_class=k_per_class,
            labels=tuple(self.labels) if self.labels is not None else None,
            domains=tuple(self.domains) if self.domains is not None else None,
            exclude_ids=tuple(self.exclude_ids), order=self.order, seed=self.seed, offset=self.offset,
            invariant_base=self.invariant_base, fill=self.fill, effort=self.search.effort(),
            params=self.strategy_params,
            stages={name: params for name, params in stages.items() if params is not None},
            fusion=self.fusion.weights() if self.fusion is not None else None,
        )


class SelectOptionsIn(SelectionFieldsIn):
    strategy: str = Field("topk", description="A registered strategy: 'topk', 'balanced', 'random', 'invariant'.",
                          json_schema_extra=strategy_names)
    k: int | None = Field(8, description="Demonstrations per query (not used when k_per_class is set).")
    k_per_class: int | None = Field(
        None, description="Exactly this many per class: 'balanced', 'invariant' with invariant_base 'balanced', and "
        "'random' (a seeded class-balanced sample). Refused by 'topk' and invariant_base 'topk'.",
        json_schema_extra={"minimum": 1, **limit("maximum", "max_k")},
    )

    def to_options(self) -> SelectionOptions:
        return self.selection_options(k=self.k, k_per_class=self.k_per_class)


class SelectRequest(SelectOptionsIn):
    model_config = ConfigDict(json_schema_extra=rules(
        *OPTION_RULES, {"if": _RANDOM, "else": {"required": ["query"], "properties": {"query": _NON_EMPTY_QUERY}}},
    ))

    query: QueryIn = Field(default_factory=QueryIn,
                           description="One of image, text, embedding, embedding_b64 or item_id.")


# shared 'fixed' is the random strategy's class-balanced sample, and runs no pipeline stages.
_FIXED = {"properties": {"shared": {"const": "fixed"}}, "required": ["shared"]}
FIXED_RULES = (
    {"if": _FIXED, "then": {"required": ["strategy"], "properties": {
        "strategy": {"const": FIXED_STRATEGY}, **{stage.name: _NULL for stage in list_stages()}}}},
)
# shuffle_seed and reshuffle order the fixed set: only with shared 'fixed', and one of them.
_SHUFFLE_RULES = (
    {"if": {"properties": {"shuffle_seed": {"type": "integer"}}, "required": ["shuffle_seed"]},
     "then": {"allOf": [_FIXED, {"not": {"properties": {"reshuffle": {"const": True}}, "required": ["reshuffle"]}}]}},
    {"if": {"properties": {"reshuffle": {"const": True}}, "required": ["reshuffle"]}, "then": _FIXED},
)
_SHARED_DOC = (
    "One demonstration set for the whole batch (ManyICL), repeated in each result; no query item is in it. "
    "true or 'mean': selected by the strategy for the normalised mean of the queries. 'fixed': a seeded "
    "class-balanced sample that does not depend on the queries (strategy 'random'; k_per_class of every class, "
    "or k spread over the classes): the same 'seed' and filters give every batch the same set, less its own "
    "query items (each replaced by the next item of its class). false: a set per query."
)


class BatchSelectRequest(SelectOptionsIn):
    # With 'random', the queries are all empty (a plain sample) or all given (scores reported).
    model_config = ConfigDict(json_schema_extra=rules(
        *OPTION_RULES,
        {"if": _RANDOM,
         "then": {"properties": {"queries": {"anyOf": [{"items": _EMPTY_QUERY}, {"items": _NON_EMPTY_QUERY}]}}},
         "else": {"properties": {"queries": {"items": _NON_EMPTY_QUERY}}}},
        *FIXED_RULES, *_SHUFFLE_RULES,
    ))

    queries: list[QueryIn] = Field(min_length=1, json_schema_extra=limit("maxItems", "max_queries"))
    shared: bool | Literal["mean", "fixed"] = Field(False, description=_SHARED_DOC)
    shuffle_seed: int | None = Field(
        None, description="shared 'fixed': shuffle the set's order with this seed (the set itself is 'seed''s); "
        "repeats the order of a call that reported it. Without it, 'order' lays the set out.",
        ge=0, le=MAX_SHUFFLE_SEED,
    )
    reshuffle: bool = Field(
        False, description="shared 'fixed': shuffle the set's order with a fresh seed on every call (ManyICL "
        "reshuffles per batch); the response reports it as 'shuffle_seed'. Not with shuffle_seed."
    )

    @field_validator("shared", mode="wrap")
    @classmethod
    def _one_error_for_shared(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:  # noqa: ANN401
        # A union reports one error per member, under the member's name; one message, at the field, says more.
        try:
            return handler(value)
        except ValidationError:
            raise ValueError("shared is true, false, 'mean' or 'fixed'") from None

    @model_validator(mode="after")
    def _shared_options(self) -> "BatchSelectRequest":
        if self.shared == "fixed":
            if self.strategy != FIXED_STRATEGY:
                raise InvalidRequest("shared 'fixed' is a seeded class-balanced sample: give strategy 'random'",
                                     param="strategy")
            for stage in list_stages():
                if getattr(self, stage.name) is not None:
                    raise InvalidRequest("shared 'fixed' runs no pipeline stages: the set does not depend on the "
                                         "queries", param=stage.name)
        check_shuffle(self.shared, self.shuffle_seed, self.reshuffle)
        return self

    @property
    def shared_mode(self) -> Literal["mean", "fixed"] | None:
        return "mean" if self.shared is True else self.shared or None


class DemonstrationOut(BaseModel):
    id: str
    label: str | None
    text: str | None
    image: str | None = Field(description="The item's image reference (relative to its media root).")
    domain: str | None
    score: float | None = Field(description="Cosine similarity to the query.")
    rank: int = Field(description="Position in the strategy's full ranking, 0-based (in the pipeline's, where "
                      "stages such as rerank or diversity re-order it).")
    metadata: dict[str, Any]
    # Last, as in the core's Demonstration: the route writes its fields in this order.
    judge_score: float | None = Field(None, description="The rerank stage's judge: its probability of 'Yes' to "
                                      "the relevance question (0 to 1), beside the similarity in 'score'; null "
                                      "without rerank.")


class SelectResponse(BaseModel):
    pool: str
    version: int
    encoder: str
    strategy: str
    demonstrations: list[DemonstrationOut]
    timing_ms: dict[str, float]
    shortfall: dict[str, int] = Field(
        default_factory=dict, description="Per-class quotas: label -> slots its class could not fill in this window "
        "(it has fewer matching items). Empty when every quota was met."
    )


class BatchSelectResponse(BaseModel):
    shared: bool = Field(False, description="True when every result holds the batch's one set.")
    shared_mode: Literal["mean", "fixed"] | None = Field(
        None, description="Which set: 'mean' (for the mean of the queries), 'fixed' (query-independent), null.")
    shuffle_seed: int | None = Field(None, description="shared 'fixed': the seed the set's order was shuffled with "
                                     "(drawn per call under reshuffle); null when not shuffled by one.")
    results: list[SelectResponse] = Field(description="One per query, in order.")
