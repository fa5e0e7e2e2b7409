from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from exemplar.app.schemas.strategies import StageOut, StrategiesOut, StrategyOut
from exemplar.app.services import QUERY
from exemplar.retrieval.serving.stages import list_stages
from exemplar.retrieval.serving.strategies import get_strategy, list_strategies
from exemplar.retrieval.serving.strategies.base import Params

router = APIRouter(prefix="/v1", tags=["select"])


def _schema(model: type[Params] | None) -> dict[str, Any]:
    return model.model_json_schema() if model is not None else {"type": "object", "properties": {},
                                                                 "additionalProperties": False}


@router.get("/strategies", summary="The selection strategies and pipeline stages, with their parameters",
            dependencies=[QUERY])
async def strategies() -> StrategiesOut:
    return StrategiesOut(
        strategies=[StrategyOut(name=s.name, description=s.description, needs_query=s.needs_query,
                                takes_k_per_class=s.takes_k_per_class, parameters=_schema(s.Params))
                    for s in map(get_strategy, list_strategies())],
        stages=[StageOut(name=s.name, description=s.description, position=s.position, parameters=_schema(s.Params))
                for s in list_stages()],
    )
