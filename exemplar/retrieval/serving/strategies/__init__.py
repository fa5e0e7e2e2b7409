"""Selection strategies, each registered by name. Every module of this package is imported here, so
a new strategy is one module that calls ``register_strategy``."""

import importlib
import pkgutil

from exemplar.retrieval.serving.strategies.base import (
    ORDERS,
    Order,
    Pick,
    SelectionOptions,
    Strategy,
    Window,
    get_strategy,
    list_strategies,
    register_strategy,
)
from exemplar.retrieval.serving.strategies.ordering import arrange

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # each strategy module registers itself

__all__ = [
    "ORDERS",
    "Order",
    "Pick",
    "SelectionOptions",
    "Strategy",
    "Window",
    "arrange",
    "get_strategy",
    "list_strategies",
    "register_strategy",
]
