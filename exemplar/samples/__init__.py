"""Generated sample data for demos, tests and evaluations (no torch, no FAISS, no HTTP)."""

from exemplar.samples.embeddings import domain_dominant_embeddings, write_embedding_manifest
from exemplar.samples.shapes import CLASSES, DOMAINS, Domain, generate_shapes

__all__ = ["CLASSES", "DOMAINS", "Domain", "domain_dominant_embeddings", "generate_shapes", "write_embedding_manifest"]
