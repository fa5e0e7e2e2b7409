"""The ``AdapterTrainer`` port implemented with the CCI trainer of ``exemplar.encoders``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from exemplar.encoders.cci_config import CCIConfig
from exemplar.errors import InvalidRequest
from exemplar.retrieval.adapt.adapters import Adapter, TrainedAdapter

__all__ = ["CCITrainer", "cci_config"]

_FIELDS = {f.name for f in dataclasses.fields(CCIConfig)} - {"device"}


def cci_config(params: dict[str, Any], device: str) -> CCIConfig:
    unknown = sorted(set(params) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown adapter parameter {unknown[0]!r}; valid: {', '.join(sorted(_FIELDS))}", param=unknown[0])
    config = CCIConfig(**params, device=device)
    config.validate()
    return config


class CCITrainer:
    """Trains on the configured device; parameters are ``CCIConfig`` fields."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device

    def __call__(
        self,
        vectors: np.ndarray,
        labels: np.ndarray,
        domains: np.ndarray,
        params: dict[str, Any],
        *,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainedAdapter:
        # The trainer imports torch: a server pays for that at its first training job, not at start-up.
        from exemplar.encoders.cci import train_cci

        config = cci_config(params, self.device)
        result = train_cci(vectors, labels, domains, config, on_epoch=on_epoch, should_stop=should_stop)
        best = result.history[result.best_epoch] if result.best_epoch >= 0 else {}
        info = {
            "method": "cci",
            "config": {k: v for k, v in result.config.items() if k != "device"},
            "in_dim": int(vectors.shape[1]),
            "out_dim": int(result.layers[-1][0].shape[1]),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "val_loss": best.get("val_loss"),
            "train_items": result.train_items,
            "val_items": result.val_items,
            "seconds": result.seconds,
            "history": result.history,
        }
        return TrainedAdapter(Adapter(tuple(result.layers)), info)
