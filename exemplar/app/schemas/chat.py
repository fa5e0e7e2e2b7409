"""Wire models for the OpenAI-compatible chat endpoint: OpenAI's request and response as they are
(unknown fields pass through), plus the ``exemplar`` object that asks for demonstrations."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from exemplar.app.schemas.common import StrictModel, limit, rules
from exemplar.app.schemas.infer import DemoPromptIn
from exemplar.app.schemas.select import OPTION_RULES, QueryIn, SelectOptionsIn
from exemplar.retrieval.chat import ChatSelection, Iterative
from exemplar.retrieval.infer import MAX_ROUNDS
from exemplar.retrieval.prompting import PromptTemplate

__all__ = [
    "ChatCompletionOut",
    "ChatCompletionRequest",
    "ChatDemonstrationOut",
    "ChatExemplarIn",
    "ChatExemplarOut",
    "ChatMessageIn",
    "ChatRoundOut",
    "IterativeIn",
    "ModelList",
    "ModelOut",
    "TrimOut",
]


class IterativeIn(StrictModel):
    """The confidence loop (VideoICL), as in ``infer``: each round shows the next window."""

    window: int = Field(2, description="Demonstrations per round (VideoICL: 2).",
                        json_schema_extra={"minimum": 1, **limit("maximum", "max_k")})
    max_rounds: int = Field(4, description="Rounds at most (VideoICL: 4).",
                            json_schema_extra={"minimum": 1, "maximum": MAX_ROUNDS})
    threshold: float = Field(0.5, description="Stop when the confidence is strictly above this.",
                             json_schema_extra={"minimum": 0, "maximum": 1})
    confidence: Literal["min_token_prob", "mean_token_logprob", "first_token_prob", "label_prob"] = "min_token_prob"


# Iterative rounds are windows of one ranking, so their size is 'window', never a per-class quota.
_ITERATIVE_WINDOWS = {"if": {"properties": {"iterative": {"type": "object"}}, "required": ["iterative"]},
                      "then": {"properties": {"k_per_class": {"type": "null"}}}}


class ChatExemplarIn(SelectOptionsIn):
    """Which demonstrations to put in the prompt. With the official ``openai`` package:
    ``extra_body={"exemplar": {...}}``."""

    model_config = ConfigDict(json_schema_extra=rules(*OPTION_RULES, _ITERATIVE_WINDOWS))

    pool: str = Field(min_length=1, max_length=256, description="The pool to select from.")
    query: QueryIn | None = Field(None, description="What to select for, instead of the last user message (its first "
                                  "image given as a data URI, else its text): e.g. an item_id or an embedding.")
    prompt: DemoPromptIn = Field(default_factory=DemoPromptIn, description="How each demonstration is shown; "
                                 "'system' is put before the caller's messages. The caller's own messages are "
                                 "never rewritten.")
    iterative: IterativeIn | None = Field(None, description="Repeat with the next window until the answer is "
                                          "confident (needs stream false; k and k_per_class are then not used).")

    @model_validator(mode="after")
    def _iterative_windows(self) -> "ChatExemplarIn":
        if self.iterative is not None and self.k_per_class is not None:
            raise ValueError("iterative windows are set by 'iterative.window', not k_per_class")
        return self

    def to_selection(self) -> ChatSelection:
        iterative = None if self.iterative is None else Iterative(**self.iterative.model_dump())
        return ChatSelection(
            pool=self.pool, strategy=self.strategy, options=self.to_options(),
            template=PromptTemplate(**self.prompt.model_dump()),
            query=None if self.query is None else self.query.to_query(), iterative=iterative,
        )


class ChatMessageIn(BaseModel):
    """An OpenAI chat message; fields other than these pass through to the model as sent."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: str = Field(min_length=1, max_length=64, description="system, developer, user, assistant or tool.")
    content: str | list[dict[str, Any]] | None = Field(
        None, description="Text, or parts: {'type': 'text', 'text': ...} and {'type': 'image_url', 'image_url': "
        "{'url': 'data:image/png;base64,...'}}.",
    )


class ChatCompletionRequest(BaseModel):
    """An OpenAI chat-completion request. Fields other than these pass through to the model as sent."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, max_length=256, description="A configured endpoint name "
                       "(EXEMPLAR_MLLM_ENDPOINTS; GET /v1/models lists them), replaced by that endpoint's own model.")
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=10_000)
    stream: bool | None = Field(None, description="Server-sent events from the model, passed through unchanged; "
                                "the demonstrations shown are in the 'x-exemplar' response header.")
    exemplar: ChatExemplarIn | None = Field(None, description="Demonstrations to add before the last user message. "
                                            "Without it the request passes through untouched.")

    def upstream_body(self) -> dict[str, Any]:
        """The request as the caller wrote it, less the ``exemplar`` object."""
        return self.model_dump(exclude_unset=True, exclude={"exemplar"})


class ChatDemonstrationOut(BaseModel):
    id: str
    label: str | None
    score: float | None = Field(description="Cosine similarity to the query.")
    rank: int = Field(description="Position in the strategy's full ranking, 0-based.")
    judge_score: float | None = Field(None, description="The rerank stage's judge, P('Yes'); only with rerank.")


class TrimOut(BaseModel):
    ids: list[str] = Field(description="Selected demonstrations left out, lowest-ranked first.")
    reason: Literal["max_images", "max_prompt_bytes"]
    limit: int = Field(description="The endpoint's limit that was reached.")


class ChatRoundOut(BaseModel):
    round: int
    offset: int
    demonstrations: list[ChatDemonstrationOut]
    trimmed: TrimOut | None
    answer: str
    confidence: float
    timing_ms: dict[str, float]


class ChatExemplarOut(BaseModel):
    pool: str
    version: int
    encoder: str
    strategy: str
    demonstrations: list[ChatDemonstrationOut] = Field(description="As shown to the model, in prompt order (iterative: "
                                                       "the chosen round's).")
    trimmed: TrimOut | None = Field(description="Demonstrations selected but left out to keep within the endpoint's "
                                    "limits; null when none were.")
    timing_ms: dict[str, float] = Field(description="encode, select, prompt, upstream (the model's time), total, "
                                        "overhead = total - upstream.")
    stopped: Literal["confident", "max_rounds", "exhausted"] | None = None
    chosen_round: int | None = None
    rounds: list[ChatRoundOut] | None = None


class ChatCompletionOut(BaseModel):
    """The model's completion as it answered, plus ``exemplar`` when demonstrations were selected."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    object: str | None = None
    choices: list[dict[str, Any]] = Field(default_factory=list)
    exemplar: ChatExemplarOut | None = None


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "exemplar"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]
