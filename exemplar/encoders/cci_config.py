"""The parameters of CCI adapter training (``exemplar.encoders.cci``).

Kept apart from the trainer so that parameters can be checked when a request arrives without
importing torch; only the training job itself pays for that.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from exemplar.errors import InvalidRequest

__all__ = ["CCIConfig", "DomainLoss", "Head"]

Head = Literal["linear", "mlp"]
DomainLoss = Literal["none", "class_mean", "adversarial"]


@dataclasses.dataclass(frozen=True)
class CCIConfig:
    head: Head = "linear"
    out_dim: int | None = None  # None: the input width
    hidden_dim: int | None = None  # mlp only; None: the input width
    temperature: float = 0.1
    cross_domain_weight: float = 2.0
    cross_domain_only: bool = False
    domain_loss: DomainLoss = "class_mean"
    domain_weight: float = 1.0
    epochs: int = 100
    max_steps: int = 1000  # optimiser steps in all; bounds the time on large pools
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    patience: int = 10
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        checks = [
            (self.head in ("linear", "mlp"), "head", "head must be 'linear' or 'mlp'"),
            (self.out_dim is None or 1 <= self.out_dim <= 8192, "out_dim", "out_dim must be between 1 and 8192"),
            (self.hidden_dim is None or 1 <= self.hidden_dim <= 16384, "hidden_dim", "hidden_dim must be between 1 and 16384"),
            (0.001 <= self.temperature <= 10, "temperature", "temperature must be between 0.001 and 10"),
            (0 < self.cross_domain_weight <= 100, "cross_domain_weight", "cross_domain_weight must be in (0, 100]"),
            (self.domain_loss in ("none", "class_mean", "adversarial"), "domain_loss",
             "domain_loss must be 'none', 'class_mean' or 'adversarial'"),
            (0 <= self.domain_weight <= 100, "domain_weight", "domain_weight must be between 0 and 100"),
            (1 <= self.epochs <= 1000, "epochs", "epochs must be between 1 and 1000"),
            (1 <= self.max_steps <= 1_000_000, "max_steps", "max_steps must be between 1 and 1000000"),
            (8 <= self.batch_size <= 65536, "batch_size", "batch_size must be between 8 and 65536"),
            (0 < self.lr <= 1, "lr", "lr must be in (0, 1]"),
            (0 <= self.weight_decay <= 1, "weight_decay", "weight_decay must be between 0 and 1"),
            (0 < self.val_fraction < 0.5, "val_fraction", "val_fraction must be in (0, 0.5)"),
            (1 <= self.patience <= 1000, "patience", "patience must be between 1 and 1000"),
        ]
        for ok, param, message in checks:
            if not ok:
                raise InvalidRequest(message, param=param)
