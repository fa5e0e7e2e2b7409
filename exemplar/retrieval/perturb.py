"""Label perturbations of the demonstrations shown to a model: the ablation baselines of in-context
learning (do the answers follow the demonstrations' labels, or only their inputs and label space?).

Pure functions of the window's labels, the allowed label space and a seed: the same arguments
always give the same shown labels. Unlabelled demonstrations stay unlabelled in every mode.

- ``"true"``: the labels as they are;
- ``"shuffled"``: a seeded permutation of the window's labels (the same multiset, other owners);
- ``"random"``: each label drawn uniformly from the label space;
- ``Noise(p)``: each label, with probability ``p``, replaced by a different one drawn uniformly
  from the label space (unchanged where the space holds no other label).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np

from exemplar.errors import InvalidRequest

__all__ = ["DemoLabels", "Noise", "describe", "parse_demo_labels", "shown_labels"]


@dataclasses.dataclass(frozen=True)
class Noise:
    p: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise InvalidRequest("label noise must be a probability between 0 and 1", param="demo_labels.noise")


DemoLabels = Literal["true", "shuffled", "random"] | Noise


def describe(mode: DemoLabels) -> str:
    """A mode as text: ``true``, ``shuffled``, ``random`` or ``noise:P``."""
    return f"noise:{mode.p:g}" if isinstance(mode, Noise) else mode


def parse_demo_labels(spec: str, param: str = "demo_labels") -> DemoLabels:
    """``true`` | ``shuffled`` | ``random`` | ``noise:P`` (the command line's spelling)."""
    if spec in ("true", "shuffled", "random"):
        return spec  # type: ignore[return-value]
    kind, _, value = spec.partition(":")
    if kind == "noise":
        try:
            p = float(value)
        except ValueError:
            raise InvalidRequest(f"label noise needs a probability, as in 'noise:0.3', got {spec!r}", param=param) from None
        return Noise(p)
    raise InvalidRequest(f"demonstration labels are 'true', 'shuffled', 'random' or 'noise:P', got {spec!r}", param=param)


def shown_labels(
    labels: Sequence[str | None], mode: DemoLabels, *, label_space: Sequence[str], seed: int
) -> list[str | None]:
    """The labels to show for a window whose true labels are ``labels``."""
    shown = list(labels)
    if mode == "true":
        return shown
    rng = np.random.default_rng(seed)
    labelled = [i for i, label in enumerate(shown) if label is not None]
    space = sorted(set(label_space))  # sorted: the draw must not depend on the caller's order
    if mode == "shuffled":
        permuted = rng.permutation(len(labelled))
        return _put(shown, labelled, [shown[labelled[j]] for j in permuted])
    if mode == "random":
        if not space:
            return shown
        return _put(shown, labelled, [space[j] for j in rng.integers(0, len(space), size=len(labelled))])
    if isinstance(mode, Noise):
        # Both draws are made for every demonstration, so whether one label changes does not
        # depend on what happened to the labels before it.
        flips = rng.random(len(labelled)) < mode.p
        picks = rng.random(len(labelled))
        replaced = []
        for i, flip, u in zip(labelled, flips, picks):
            others = [x for x in space if x != shown[i]]
            replaced.append(others[int(u * len(others))] if flip and others else shown[i])
        return _put(shown, labelled, replaced)
    raise InvalidRequest(f"unknown demonstration label mode {mode!r}", param="demo_labels")


def _put(shown: list[str | None], positions: list[int], values: list[str | None]) -> list[str | None]:
    for i, value in zip(positions, values):
        shown[i] = value
    return shown
