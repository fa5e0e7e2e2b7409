"""Selection strategies, each registered by name."""

from exemplar.retrieval.serving.strategies import balanced, invariant, random, topk  # noqa: F401 - registration
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
