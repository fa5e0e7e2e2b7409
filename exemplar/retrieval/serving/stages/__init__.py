"""Selection pipeline stages, each registered by name."""

from exemplar.retrieval.serving.stages import diversity  # noqa: F401 - registration
from exemplar.retrieval.serving.stages.base import Stage, get_stage, list_stages, register_stage

__all__ = ["Stage", "get_stage", "list_stages", "register_stage"]
