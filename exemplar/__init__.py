"""Exemplar: in-context demonstration retrieval for multimodal LLMs.

Packages: ``exemplar.app`` (HTTP, CLI, composition), ``exemplar.retrieval`` (the core),
``exemplar.encoders`` (open_clip and friends), ``exemplar.samples`` (generated sample data).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
