"""Wire models for the iterative inference loop."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from exemplar.app.schemas.common import StrictModel
from exemplar.app.schemas.select import DemonstrationOut, QueryIn, SelectionFieldsIn

__all__ = ["InferRequest", "InferResponse", "InferRoundOut", "PromptIn"]


class PromptIn(StrictModel):
    system: str | None = Field(None, max_length=20_000, description="System message.")
    instruction: str | None = Field(None, max_length=20_000, description="Added to every user turn, e.g. the question.")
    demo_text: str = Field("{text}", max_length=20_000, description="A demonstration's text; {text} {label} {domain} {id}.")
    answer: str = Field("{label}", max_length=20_000, description="A demonstration's assistant turn.")
    query_text: str = Field("{text}", max_length=20_000, description="The query's text.")
    include_images: bool = True


class InferRequest(SelectionFieldsIn):
    query: QueryIn = Field(description="image (base64), text, or item_id; shown to the model last.")
    mllm: str = Field(description="A configured endpoint name (EXEMPLAR_MLLM_ENDPOINTS).")
    strategy: str = "topk"
    window: int = Field(2, description="Demonstrations per round (VideoICL: 2).")
    max_rounds: int = Field(4, description="Rounds at most (VideoICL: 4).")
    threshold: float = Field(0.5, description="Stop when the confidence is strictly above this (VideoICL: 0.5).")
    confidence: Literal["min_token_prob", "mean_token_logprob", "first_token_prob", "label_prob"] = "min_token_prob"
    prompt: PromptIn = Field(default_factory=PromptIn)
    max_tokens: int = 16
    temperature: float = 0.0


class InferRoundOut(BaseModel):
    round: int
    offset: int
    demonstrations: list[DemonstrationOut]
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
    stopped: Literal["confident", "max_rounds", "exhausted"] = Field(
        description="confident: a round passed the threshold; max_rounds: none did, the most confident answer "
        "won; exhausted: the ranking ran out of demonstrations."
    )
    chosen_round: int
    rounds: list[InferRoundOut]
    timing_ms: dict[str, float] = Field(description="total, model (sum over rounds), overhead = total - model, encode.")
