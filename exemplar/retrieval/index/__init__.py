"""FAISS wrappers, automatic index choice and tuning, per-class indexes, batching of searches."""
