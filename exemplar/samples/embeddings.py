"""Precomputed embeddings in which a domain component dominates the class component, the way a
pre-trained encoder's space is organised by site, scanner or style more than by class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["domain_dominant_embeddings", "write_embedding_manifest"]


def domain_dominant_embeddings(
    *,
    n_classes: int = 6,
    n_domains: int = 4,
    per_class_per_domain: int = 60,
    dim: int = 64,
    class_scale: float = 1.0,
    domain_scale: float = 2.0,
    style_dims: int = 8,
    style_scale: float = 1.5,
    noise: float = 0.3,
    seed: int = 0,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Return unit ``(vectors, labels, domains)`` built as

        x = class_scale * c_y + domain_scale * m_d + style_scale * U s + noise,   s ~ N(mu_d, I)

    ``c_y``: a class centre; ``m_d``: a domain offset; ``U``: ``style_dims`` directions shared by all
    domains (stain intensity, scanner gain...) along which every item varies, around a mean
    ``mu_d`` that differs by domain. Domain and style together outweigh the class, so raw nearest
    neighbours follow them; what separates the classes is the same in every domain.
    """
    rng = np.random.default_rng(seed)
    class_centres = rng.normal(size=(n_classes, dim)) / np.sqrt(dim)
    domain_offsets = rng.normal(size=(n_domains, dim)) / np.sqrt(dim)
    style_basis = np.linalg.qr(rng.normal(size=(dim, style_dims)))[0]  # (dim, style_dims), orthonormal
    style_means = rng.normal(scale=1.5, size=(n_domains, style_dims))
    vectors, labels, domains = [], [], []
    for d in range(n_domains):
        for c in range(n_classes):
            styles = style_means[d] + rng.normal(size=(per_class_per_domain, style_dims))
            block = (
                class_scale * class_centres[c]
                + domain_scale * domain_offsets[d]
                + style_scale * styles @ style_basis.T / np.sqrt(style_dims)
                + noise * rng.normal(size=(per_class_per_domain, dim)) / np.sqrt(dim)
            )
            vectors.append(block)
            labels += [f"class-{c}"] * per_class_per_domain
            domains += [f"domain-{d}"] * per_class_per_domain
    V = np.concatenate(vectors).astype(np.float32)
    return V / np.linalg.norm(V, axis=1, keepdims=True), labels, domains


def write_embedding_manifest(out_dir: Path, *, seed: int = 0, **kwargs: float) -> Path:
    """Write ``manifest.jsonl`` (id, label, domain, embedding) for a ``precomputed:<dim>`` pool."""
    V, labels, domains = domain_dominant_embeddings(seed=seed, **kwargs)  # type: ignore[arg-type]
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.jsonl"
    with open(manifest, "w") as fh:
        for i, (vector, label, domain) in enumerate(zip(V, labels, domains)):
            fh.write(json.dumps({"id": f"e{i:06d}", "label": label, "domain": domain,
                                 "embedding": [round(float(x), 6) for x in vector]}) + "\n")
    return manifest
