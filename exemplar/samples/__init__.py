"""Generated sample data for demos, tests and evaluations (no torch, no FAISS, no HTTP)."""

from exemplar.samples.shapes import CLASSES, DOMAINS, Domain, generate_shapes

__all__ = ["CLASSES", "DOMAINS", "Domain", "generate_shapes"]
