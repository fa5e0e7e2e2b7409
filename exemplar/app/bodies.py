"""Request bodies parsed and validated in one pass by pydantic-core, for the hot routes.

FastAPI reads a JSON body with ``json.loads`` (a Python object per number: a 512-d vector is 512
floats) and then validates the parsed value against the declared model. ``model_validate_json``
does both from the bytes, several times faster. ``ValidatedBodyRoute`` makes the request's
``json()`` return the validated model instance; FastAPI's own validation of that instance is then
an isinstance check. The body stays declared as usual (OpenAPI, dependencies), and a body the fast
path refuses takes FastAPI's ordinary path (``json.loads``, then validation), so every refusal and
its error are what any other route gives.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

__all__ = ["ValidatedBodyRoute"]


class _ModelBodyRequest(Request):
    model: type[BaseModel]

    async def json(self) -> Any:  # noqa: ANN401 - the model instance, or the parsed JSON of a refused body
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = self.model.model_validate_json(body)
            except Exception:  # noqa: BLE001 - refused: FastAPI's path reports it, as for any route
                return await super().json()
        return self._json


class ValidatedBodyRoute(APIRoute):
    """An ``APIRoute`` whose single JSON body model is validated straight from the request bytes."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        body_params = self.dependant.body_params
        model = body_params[0].field_info.annotation if len(body_params) == 1 else None
        if getattr(self, "_embed_body_fields", False) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            return handler
        request_class = type(f"{model.__name__}Request", (_ModelBodyRequest,), {"model": model})

        async def validated_body_handler(request: Request) -> Response:
            return await handler(request_class(request.scope, request.receive))

        return validated_body_handler
