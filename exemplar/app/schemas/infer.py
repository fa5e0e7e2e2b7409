"""Wire models for the iterative inference loop."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from exemplar.app.schemas.common import StrictModel, limit, rules, strategy_names
from exemplar.app.schemas.select import (
    OPTION_RULES,
    PARAMS_RULES,
    DemonstrationOut,
    QueryIn,
    SelectionFieldsIn,
)
from exemplar.errors import InvalidRequest
from exemplar.retrieval.infer import MAX_ROUNDS
from exemplar.retrieval.many_query import MAX_QUERIES_PER_CALL
from exemplar.retrieval.serving.manyicl import FIXED_STRATEGY, MAX_SHUFFLE_SEED, check_shuffle
from exemplar.retrieval.serving.stages import list_stages
from exemplar.retrieval.prompting import FIELDS

__all__ = ["BatchInferRequest", "BatchInferResponse", "DemoLabelsIn", "DemoPromptIn", "InferDemonstrationOut",
           "InferRequest", "InferResponse", "InferRoundOut", "LabelNoiseIn", "ModelCallOut", "PromptIn",
           "QueryAnswerOut", "QueryFailureOut"]

# A placeholder other than the demonstration's fields, which PromptTemplate.check refuses.
_TEMPLATE = {"not": {"pattern": r"\{(?!(?:" + "|".join(FIELDS) + r")\})\w[^{}]*\}"}}
# The model is shown the query itself: an image, a text or a pool item, never a bare vector.
_INFER_QUERY = {
    "anyOf": [{"required": [name], "properties": {name: {"type": "string"}}} for name in ("image", "text", "item_id")],
    "properties": {"embedding": {"type": "null"}, "embedding_b64": {"type": "null"}},
}


class DemoPromptIn(StrictModel):
    """How demonstrations are shown to the model."""

    system: str | None = Field(None, max_length=20_000, description="System message.")
    instruction: str | None = Field(None, max_length=20_000, description="Added to every user turn, e.g. the question.")
    demo_text: str = Field("{text}", max_length=20_000, description="A demonstration's text; {text} {label} {domain} {id}.",
                           json_schema_extra=_TEMPLATE)
    answer: str = Field("{label}", max_length=20_000, description="A demonstration's assistant turn.",
                        json_schema_extra=_TEMPLATE)
    include_images: bool = True


class PromptIn(DemoPromptIn):
    query_text: str = Field("{text}", max_length=20_000, description="The query's text.", json_schema_extra=_TEMPLATE)


class LabelNoiseIn(StrictModel):
    noise: float = Field(description="Each shown label is replaced, with this probability, by a different label "
                         "drawn uniformly from the label space.", json_schema_extra={"minimum": 0, "maximum": 1})


def _one_error_for_demo_labels(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:  # noqa: ANN401
    # A union reports one error per member, under the member's name; one message, at the field, says more.
    try:
        return handler(value)
    except ValidationError:
        raise ValueError("demo_labels is 'true', 'shuffled', 'random' or {\"noise\": p} with p between 0 "
                         "and 1") from None


# infer's and infer/batch's label perturbations: one wire type, one error.
DemoLabelsIn = Annotated[Literal["true", "shuffled", "random"] | LabelNoiseIn,
                         WrapValidator(_one_error_for_demo_labels)]


class InferRequest(SelectionFieldsIn):
    model_config = ConfigDict(json_schema_extra=rules({"properties": {"query": _INFER_QUERY}}, *PARAMS_RULES))

    query: QueryIn = Field(description="image (base64), text, or item_id; shown to the model last.")
    mllm: str = Field(description="A configured endpoint name (EXEMPLAR_MLLM_ENDPOINTS).")
    strategy: str = Field("topk", json_schema_extra=strategy_names)
    window: int = Field(2, description="Demonstrations per round (VideoICL: 2). 0 is the zero-shot baseline: one "
                        "round without demonstrations.",
                        json_schema_extra={"minimum": 0, **limit("maximum", "max_k")})
    windows: Literal["advance", "repeat_first"] = Field(
        "advance", description="advance: round r shows the r-th window of the ranking (VideoICL as described); "
        "repeat_first: every round shows the first window again, as the released VideoICL code does (for comparisons)."
    )
    demo_labels: DemoLabelsIn = Field(
        "true", description="Labels shown with the demonstrations (ablations): true; shuffled (a permutation of the "
        "window's labels); random (each drawn uniformly from the pool's labels, or from 'labels' when given); "
        "{\"noise\": p} (each replaced with probability p by another label). Seeded by 'seed' + the round; each "
        "round reports the labels shown (shown_label). 'labels' stays a filter of the demonstrations."
    )
    max_rounds: int = Field(4, description="Rounds at most (VideoICL: 4).",
                            json_schema_extra={"minimum": 1, "maximum": MAX_ROUNDS})
    threshold: float = Field(0.5, description="Stop when the confidence is strictly above this (VideoICL: 0.5).",
                             json_schema_extra={"minimum": 0, "maximum": 1})
    confidence: Literal["min_token_prob", "mean_token_logprob", "first_token_prob", "label_prob"] = "min_token_prob"
    prompt: PromptIn = Field(default_factory=PromptIn)
    max_tokens: int = Field(16, json_schema_extra={"minimum": 1, "maximum": 4096})
    temperature: float = Field(0.0, json_schema_extra={"minimum": 0, "maximum": 2})


class InferDemonstrationOut(DemonstrationOut):
    shown_label: str | None = Field(description="The label the model was shown ('label' is the true one).")


class InferRoundOut(BaseModel):
    round: int
    offset: int
    demonstrations: list[InferDemonstrationOut]
    answer: str
    confidence: float
    timing_ms: dict[str, float]


class InferResponse(BaseModel):
    pool: str
    version: int
    encoder: str
    strategy: str
    mllm: str
    answer: str
    confidence: float
    stopped: Literal["confident", "max_rounds", "exhausted", "zero_shot"] = Field(
        description="confident: a round passed the threshold; max_rounds: none did, the most confident answer "
        "won; exhausted: the ranking ran out of demonstrations; zero_shot: window 0, one round without "
        "demonstrations."
    )
    zero_shot: bool = Field(description="True when the model was shown no demonstrations (window 0).")
    chosen_round: int
    rounds: list[InferRoundOut]
    timing_ms: dict[str, float] = Field(description="total, model (sum over rounds), overhead = total - model, encode.")


# The set is the batch's fixed one unless 'mean' is asked for; 'fixed' is the random strategy's sample.
_BATCH_FIXED = {"if": {"not": {"properties": {"shared": {"const": "mean"}}, "required": ["shared"]}},
                "then": {"properties": {"strategy": {"const": FIXED_STRATEGY},
                                        **{stage.name: {"type": "null"} for stage in list_stages()}}}}


# shuffle_seed and reshuffle order the fixed set (the default): not with 'mean', and one of them.
_MEAN = {"properties": {"shared": {"const": "mean"}}, "required": ["shared"]}
_RESHUFFLE = {"properties": {"reshuffle": {"const": True}}, "required": ["reshuffle"]}
_BATCH_SHUFFLE_RULES = (
    {"if": {"properties": {"shuffle_seed": {"type": "integer"}}, "required": ["shuffle_seed"]},
     "then": {"allOf": [{"not": _MEAN}, {"not": _RESHUFFLE}]}},
    {"if": _RESHUFFLE, "then": {"not": _MEAN}},
)


class BatchInferRequest(SelectionFieldsIn):
    model_config = ConfigDict(json_schema_extra=rules(
        {"properties": {"queries": {"items": _INFER_QUERY}}}, *OPTION_RULES, _BATCH_FIXED, *_BATCH_SHUFFLE_RULES,
    ))

    queries: list[QueryIn] = Field(min_length=1, description="Each an image (base64), a text or an item_id; "
                                   "numbered in the prompt, answered one line each.",
                                   json_schema_extra=limit("maxItems", "max_queries"))
    mllm: str = Field(description="A configured endpoint name (EXEMPLAR_MLLM_ENDPOINTS).")
    shared: Literal["fixed", "mean"] = Field(
        "fixed", description="The demonstration set shown with every call: 'fixed', a seeded class-balanced sample "
        "that does not depend on the queries (strategy 'random'); 'mean', selected by the strategy for the mean of "
        "the queries. No query item is in it (select/batch 'shared').")
    strategy: str = Field("random", json_schema_extra=strategy_names)
    k: int | None = Field(8, description="Demonstrations in the set (not used when k_per_class is set); spread over "
                          "the classes for 'fixed'.")
    k_per_class: int | None = Field(None, description="Exactly this many per class ('random', 'balanced', "
                                    "'invariant' over 'balanced').",
                                    json_schema_extra={"minimum": 1, **limit("maximum", "max_k")})
    shuffle_seed: int | None = Field(None, ge=0, le=MAX_SHUFFLE_SEED, description="shared 'fixed': shuffle the "
                                     "set's order with this seed in every call (select/batch 'shuffle_seed'); "
                                     "repeats the order of a call that reported it.")
    reshuffle: bool = Field(False, description="shared 'fixed': every model call shows the set in a fresh seeded "
                            "order (ManyICL reshuffles per batch), reported as the call's 'shuffle_seed'. Not with "
                            "shuffle_seed.")
    demo_labels: DemoLabelsIn = Field(
        "true", description="Labels shown with the demonstrations (ablations), as for infer: true; shuffled; random "
        "(drawn from the pool's labels, or from 'labels' when given); {\"noise\": p}. Seeded by 'seed' + the call's "
        "index, so every call is reproducible; each call reports the labels it showed (shown_label)."
    )
    queries_per_call: int = Field(8, description="Queries answered in one model call; more queries are split into "
                                  "several calls, each showing the same set.",
                                  json_schema_extra={"minimum": 1, "maximum": MAX_QUERIES_PER_CALL})
    prompt: PromptIn = Field(default_factory=PromptIn, description="As for infer; 'instruction' comes once, before "
                             "the answer format, and query_text renders each query after its 'Query <n>:'.")
    max_tokens: int = Field(256, description="For one call's whole answer (every query's line).",
                            json_schema_extra={"minimum": 1, "maximum": 4096})
    temperature: float = Field(0.0, json_schema_extra={"minimum": 0, "maximum": 2})

    @model_validator(mode="after")
    def _fixed_set(self) -> "BatchInferRequest":
        if self.shared == "fixed" and self.strategy != FIXED_STRATEGY:
            raise InvalidRequest("shared 'fixed' is a seeded class-balanced sample: give strategy 'random', or "
                                 "shared 'mean'", param="strategy")
        check_shuffle(self.shared, self.shuffle_seed, self.reshuffle)
        return self


class QueryFailureOut(BaseModel):
    type: str = Field(description="missing (no line answers it), unparseable (its line is not '<n>: <answer>'), "
                      "empty, ambiguous (answered twice, differently), or the endpoint error's type (mllm_error, "
                      "mllm_timeout, mllm_refused) when its call failed.")
    message: str


class QueryAnswerOut(BaseModel):
    index: int = Field(description="The query's position in the request.")
    call: int = Field(description="The model call that answered it.")
    answer: str | None = Field(description="null when the query failed ('error' says why).")
    error: QueryFailureOut | None


class ModelCallOut(BaseModel):
    call: int
    queries: list[int] = Field(description="The request positions of the queries it asked, numbered 1.. in its prompt.")
    text: str | None = Field(description="The model's whole answer; null when the endpoint failed the call.")
    error: QueryFailureOut | None
    timing_ms: dict[str, float] = Field(description="prompt (assembly) and model (the call, retries included).")
    # Always sent, but not required by the document: clients built on it also read servers from before them.
    shuffle_seed: int | None = Field(None, description="The seed this call's order was shuffled with (the request's "
                                     "shuffle_seed, or this call's own under reshuffle; send it as shuffle_seed to "
                                     "show that order again); null when the set was not shuffled by one.")
    demonstrations: list[InferDemonstrationOut] = Field(
        default_factory=list, description="The set as this call showed it: in its order, with the label the model "
        "saw (shown_label).")


class BatchInferResponse(BaseModel):
    pool: str
    version: int
    encoder: str
    strategy: str
    mllm: str
    shared: Literal["fixed", "mean"]
    shuffle_seed: int | None = Field(description="The request's shuffle_seed; null under reshuffle (each call "
                                     "reports its own).")
    demonstrations: list[DemonstrationOut] = Field(description="The set shown, once, with every call (laid out by "
                                                   "'order', or by shuffle_seed; each call lists its own order).")
    shortfall: dict[str, int]
    results: list[QueryAnswerOut] = Field(description="One per query, in order.")
    calls: list[ModelCallOut]
    answered: int
    failed: int
    timing_ms: dict[str, float] = Field(description="total, model (sum over calls), overhead = total - model, encode, "
                                        "select.")
