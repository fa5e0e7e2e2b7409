"""Seeded labelled embedding distributions for benchmarks: differently clustered, none of them the
one the index was tuned on first, so that a figure measured on one is not mistaken for the rule.

Every generator returns ``(V, labels)``: unit-norm float32 rows and int class codes, with the
queries drawn from the same distribution (take the last rows as held-out queries).

- ``mixture``: the project's own (``hotpath.py``): per class a centre and 50 sub-clusters, equal
  class sizes.
- ``zipf``: unequal class sizes (Zipf, the largest class ~60 x the smallest) and per-class spreads.
- ``overlap``: classes that overlap: 240 shared sub-clusters, each drawn by three classes, so most
  neighbourhoods mix labels and a class's nearest item to a query is often far from the class's
  centre.
- ``cone``: CLIP-like: every vector shares a strong common direction (mean cosine ~0.5 between
  unrelated items), the rest lies in a 48-dimensional subspace with anisotropic spread, classes
  are elongated clusters in it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["DISTRIBUTIONS", "generate"]

_CHUNK = 100_000


def _unit(block: np.ndarray) -> np.ndarray:
    return (block / np.linalg.norm(block, axis=1, keepdims=True)).astype(np.float32)


def mixture(n: int, dim: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    subs = rng.normal(size=(classes, 50, dim)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    V = np.empty((n, dim), np.float32)
    for s in range(0, n, _CHUNK):
        c = labels[s : s + _CHUNK]
        block = (centres[c] + 0.8 * subs[c, rng.integers(0, 50, len(c))]
                 + 0.6 * rng.normal(size=(len(c), dim)).astype(np.float32))
        V[s : s + len(c)] = _unit(block)
    return V, labels


def zipf(n: int, dim: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    weights = 1.0 / np.arange(1, classes + 1) ** 1.4
    labels = rng.permutation(classes)[rng.choice(classes, size=n, p=weights / weights.sum())]
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    n_subs = rng.integers(5, 120, classes)
    subs = [rng.normal(size=(int(m), dim)).astype(np.float32) * rng.uniform(0.5, 1.2) for m in n_subs]
    noise = rng.uniform(0.3, 1.0, classes).astype(np.float32)
    V = np.empty((n, dim), np.float32)
    for s in range(0, n, _CHUNK):
        c = labels[s : s + _CHUNK]
        block = centres[c] + noise[c, None] * rng.normal(size=(len(c), dim)).astype(np.float32)
        for code in np.unique(c):
            at = np.flatnonzero(c == code)
            block[at] += subs[code][rng.integers(0, len(subs[code]), len(at))]
        V[s : s + len(c)] = _unit(block)
    return V, labels


def overlap(n: int, dim: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n_subs = 12 * classes
    subs = rng.normal(size=(n_subs, dim)).astype(np.float32)
    # Sub-cluster s is drawn by classes s % C, (s + 1) % C and (s + 7) % C: every class spans 36
    # sub-clusters and shares each with two others.
    owners = np.stack([np.arange(n_subs) % classes, (np.arange(n_subs) + 1) % classes,
                       (np.arange(n_subs) + 7) % classes], axis=1)
    which = rng.integers(0, n_subs, n)
    labels = owners[which, rng.integers(0, 3, n)]
    shift = 0.08 * rng.normal(size=(classes, dim)).astype(np.float32)  # a weak class signal
    V = np.empty((n, dim), np.float32)
    for s in range(0, n, _CHUNK):
        w, c = which[s : s + _CHUNK], labels[s : s + _CHUNK]
        block = subs[w] + shift[c] + 0.7 * rng.normal(size=(len(w), dim)).astype(np.float32)
        V[s : s + len(w)] = _unit(block)
    return V, labels


def cone(n: int, dim: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    latent = 48
    basis, _ = np.linalg.qr(rng.normal(size=(dim, latent + 1)))
    common, basis = basis[:, 0].astype(np.float32), basis[:, 1:].T.astype(np.float32)  # (latent, dim)
    scales = np.geomspace(3.0, 0.3, latent).astype(np.float32)  # anisotropic: a few directions dominate
    centres = 0.7 * rng.normal(size=(classes, latent)).astype(np.float32) * scales
    stretch = rng.normal(size=(classes, latent)).astype(np.float32) * scales  # each class elongated along one axis
    labels = rng.integers(0, classes, n)
    V = np.empty((n, dim), np.float32)
    for s in range(0, n, _CHUNK):
        c = labels[s : s + _CHUNK]
        z = (centres[c] + rng.normal(size=(len(c), 1)).astype(np.float32) * stretch[c]
             + 0.6 * rng.normal(size=(len(c), latent)).astype(np.float32) * scales)
        block = z @ basis * 0.5 + 6.0 * common + 0.25 * rng.normal(size=(len(c), dim)).astype(np.float32) / np.sqrt(dim) * 8
        V[s : s + len(c)] = _unit(block)
    return V, labels


DISTRIBUTIONS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "mixture": mixture, "zipf": zipf, "overlap": overlap, "cone": cone,
}


def generate(name: str, n: int, dim: int = 512, classes: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {name!r}; choose from {', '.join(DISTRIBUTIONS)}")
    return DISTRIBUTIONS[name](n, dim, classes, np.random.default_rng(seed))
