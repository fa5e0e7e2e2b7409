"""Selection pipeline stages, each registered by name. Every module of this package is imported
here, so a new stage is one module that calls ``register_stage``."""

import importlib
import pkgutil

from exemplar.retrieval.serving.stages.base import Stage, StageCache, StageContext, get_stage, list_stages, register_stage

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # each stage module registers itself

__all__ = ["Stage", "StageCache", "StageContext", "get_stage", "list_stages", "register_stage"]
