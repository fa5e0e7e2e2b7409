"""Wire models for the listing of strategies and pipeline stages."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["StageOut", "StrategiesOut", "StrategyOut"]


class StrategyOut(BaseModel):
    name: str
    description: str
    needs_query: bool = Field(description="Whether it ranks by similarity to a query ('random' does not).")
    takes_k_per_class: bool = Field(description="Whether per-class quotas (k_per_class) mean something to it.")
    parameters: dict[str, Any] = Field(description="JSON Schema of its own parameters (the request's strategy_params).")


class StageOut(BaseModel):
    name: str
    description: str
    position: int = Field(description="Pipeline order: lower runs first, after the strategy and before the window.")
    parameters: dict[str, Any] = Field(description="JSON Schema of the request field named after the stage.")


class StrategiesOut(BaseModel):
    strategies: list[StrategyOut]
    stages: list[StageOut]
