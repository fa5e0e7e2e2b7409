"""Build encoders from spec strings, one shared instance per spec."""

from __future__ import annotations

import threading

from exemplar.encoders.images import DEFAULT_MAX_PIXELS
from exemplar.encoders.open_clip_encoder import TINY_ARCH, OpenClipEncoder
from exemplar.encoders.precomputed import PrecomputedEncoder
from exemplar.encoders.spec import parse_spec

__all__ = ["EncoderRegistry", "list_encoders", "load_encoder"]

_RANDOM_BY_DEFAULT = frozenset({TINY_ARCH})


def list_encoders() -> list[str]:
    """Example specs: Exemplar's own, plus every open_clip architecture with its pretrained tags."""
    import open_clip

    specs = [f"open_clip:{TINY_ARCH}", "precomputed:<dim>", "open_clip:local-dir:<path>"]
    specs += [f"open_clip:{arch}@{tag}" for arch, tag in open_clip.list_pretrained()]
    return specs


def load_encoder(
    spec: str, *, device: str = "auto", batch_size: int = 64, max_pixels: int = DEFAULT_MAX_PIXELS
) -> OpenClipEncoder | PrecomputedEncoder:
    parsed = parse_spec(spec, default_random_archs=_RANDOM_BY_DEFAULT)
    if parsed.source == "precomputed":
        assert parsed.dim is not None
        return PrecomputedEncoder(parsed.dim)
    return OpenClipEncoder(parsed, device=device, batch_size=batch_size, max_pixels=max_pixels)


class EncoderRegistry:
    """Loads each spec once and shares it; a failed load is retried on the next call."""

    def __init__(self, *, device: str = "auto", batch_size: int = 64, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self._options = {"device": device, "batch_size": batch_size, "max_pixels": max_pixels}
        self._encoders: dict[str, OpenClipEncoder | PrecomputedEncoder] = {}
        self._lock = threading.Lock()

    def __call__(self, spec: str) -> OpenClipEncoder | PrecomputedEncoder:
        with self._lock:
            encoder = self._encoders.get(spec)
            if encoder is None:
                encoder = load_encoder(spec, **self._options)  # type: ignore[arg-type]
                self._encoders[spec] = encoder
            return encoder
