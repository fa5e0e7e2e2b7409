"""Wire models for the iterative inference loop."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidatorFunctionWrapHandler, field_validator

from exemplar.app.schemas.common import StrictModel, limit, rules, strategy_names
from exemplar.app.schemas.select import PARAMS_RULES, DemonstrationOut, QueryIn, SelectionFieldsIn
from exemplar.retrieval.infer import MAX_ROUNDS
from exemplar.retrieval.prompting import FIELDS

__all__ = ["DemoPromptIn", "InferDemonstrationOut", "InferRequest", "InferResponse", "InferRoundOut", "LabelNoiseIn",
           "PromptIn"]

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
    demo_labels: Literal["true", "shuffled", "random"] | LabelNoiseIn = Field(
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

    @field_validator("demo_labels", mode="wrap")
    @classmethod
    def _one_error_for_demo_labels(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:  # noqa: ANN401
        # A union reports one error per member, under the member's name; one message, at the field, says more.
        try:
            return handler(value)
        except ValidationError:
            raise ValueError("demo_labels is 'true', 'shuffled', 'random' or {\"noise\": p} with p between 0 and 1") from None


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
