"""Demonstration label perturbations: seeded, and each mode does what it says."""

from __future__ import annotations

from collections import Counter

import pytest

from exemplar.errors import InvalidRequest
from exemplar.retrieval.perturb import Noise, describe, parse_demo_labels, shown_labels

SPACE = ["A", "B", "C", "D"]
WINDOW = ["A", "B", "C", "D", "A", "B", "C", "D", "A", "A"]


@pytest.mark.parametrize("mode", ["shuffled", "random", Noise(0.5)])
def test_same_seed_same_labels_and_seeds_differ(mode) -> None:
    first = shown_labels(WINDOW, mode, label_space=SPACE, seed=3)
    assert first == shown_labels(WINDOW, mode, label_space=SPACE, seed=3)
    assert any(shown_labels(WINDOW, mode, label_space=SPACE, seed=s) != first for s in range(4, 10))


def test_true_is_the_identity_and_the_input_is_not_changed() -> None:
    window = list(WINDOW)
    assert shown_labels(window, "true", label_space=SPACE, seed=1) == WINDOW
    shown_labels(window, "shuffled", label_space=SPACE, seed=1)
    assert window == WINDOW


def test_shuffled_is_a_permutation_of_the_window() -> None:
    seen = set()
    for seed in range(20):
        shown = shown_labels(WINDOW, "shuffled", label_space=["Z"], seed=seed)
        assert Counter(shown) == Counter(WINDOW), "the space plays no part in a shuffle"
        seen.add(tuple(shown))
    assert len(seen) > 10


def test_random_draws_only_from_the_space() -> None:
    drawn = [label for seed in range(30) for label in shown_labels(WINDOW, "random", label_space=["B", "Q"], seed=seed)]
    assert set(drawn) == {"B", "Q"}
    assert shown_labels(WINDOW, "random", label_space=[], seed=0) == WINDOW, "nothing to draw from"


def test_noise_zero_is_the_identity_and_one_changes_every_label() -> None:
    for seed in range(10):
        assert shown_labels(WINDOW, Noise(0.0), label_space=SPACE, seed=seed) == WINDOW
        changed = shown_labels(WINDOW, Noise(1.0), label_space=SPACE, seed=seed)
        assert all(new != old and new in SPACE for new, old in zip(changed, WINDOW))


def test_noise_changes_about_p_of_the_labels() -> None:
    changed = sum(new != old for seed in range(200)
                  for new, old in zip(shown_labels(WINDOW, Noise(0.3), label_space=SPACE, seed=seed), WINDOW))
    assert 0.25 < changed / (200 * len(WINDOW)) < 0.35


def test_noise_with_a_single_label_space_cannot_change_anything() -> None:
    assert shown_labels(["A", "A"], Noise(1.0), label_space=["A"], seed=0) == ["A", "A"]


def test_unlabelled_demonstrations_stay_unlabelled() -> None:
    window = ["A", None, "B", None]
    for mode in ("shuffled", "random", Noise(1.0)):
        shown = shown_labels(window, mode, label_space=SPACE, seed=2)
        assert shown[1] is None and shown[3] is None and None not in (shown[0], shown[2])


def test_the_space_order_does_not_change_the_draw() -> None:
    assert (shown_labels(WINDOW, "random", label_space=SPACE, seed=5)
            == shown_labels(WINDOW, "random", label_space=list(reversed(SPACE)), seed=5))


def test_parse_and_describe() -> None:
    assert parse_demo_labels("shuffled") == "shuffled"
    assert parse_demo_labels("noise:0.25") == Noise(0.25) and describe(Noise(0.25)) == "noise:0.25"
    for bad in ("noise:x", "noise:2", "upside-down"):
        with pytest.raises(InvalidRequest):
            parse_demo_labels(bad)
