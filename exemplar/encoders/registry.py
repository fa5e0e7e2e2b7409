"""Build encoders from spec strings, one shared instance per spec.

Each spec scheme has a factory that imports its backend only when first called: torch and
open_clip take seconds and hundreds of MB to import, and a process that serves only precomputed
pools (or only prints ``--help``) never needs them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from exemplar.encoders.images import DEFAULT_MAX_PIXELS
from exemplar.encoders.precomputed import PrecomputedEncoder
from exemplar.encoders.spec import TINY_ARCH, EncoderSpec, parse_spec

if TYPE_CHECKING:
    from exemplar.encoders.open_clip_encoder import OpenClipEncoder

__all__ = ["EncoderRegistry", "list_encoders", "load_encoder"]

AnyEncoder: TypeAlias = "OpenClipEncoder | PrecomputedEncoder"
Factory: TypeAlias = Callable[[EncoderSpec, dict[str, Any]], AnyEncoder]

_RANDOM_BY_DEFAULT = frozenset({TINY_ARCH})


def _open_clip(spec: EncoderSpec, options: dict[str, Any]) -> AnyEncoder:
    from exemplar.encoders.open_clip_encoder import OpenClipEncoder

    return OpenClipEncoder(spec, **options)


def _precomputed(spec: EncoderSpec, options: dict[str, Any]) -> AnyEncoder:
    assert spec.dim is not None
    return PrecomputedEncoder(spec.dim)


_FACTORIES: dict[str, Factory] = {"open_clip": _open_clip, "precomputed": _precomputed}


def list_encoders() -> list[str]:
    """Example specs: Exemplar's own, plus every open_clip architecture with its pretrained tags."""
    import open_clip

    specs = [f"open_clip:{TINY_ARCH}", "precomputed:<dim>", "open_clip:local-dir:<path>"]
    specs += [f"open_clip:{arch}@{tag}" for arch, tag in open_clip.list_pretrained()]
    return specs


def load_encoder(
    spec: str, *, device: str = "auto", batch_size: int = 64, max_pixels: int = DEFAULT_MAX_PIXELS
) -> AnyEncoder:
    parsed = parse_spec(spec, default_random_archs=_RANDOM_BY_DEFAULT)
    options = {"device": device, "batch_size": batch_size, "max_pixels": max_pixels}
    return _FACTORIES[parsed.scheme](parsed, options)


class EncoderRegistry:
    """Loads each spec once and shares it; a failed load is retried on the next call."""

    def __init__(self, *, device: str = "auto", batch_size: int = 64, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self._options = {"device": device, "batch_size": batch_size, "max_pixels": max_pixels}
        self._encoders: dict[str, AnyEncoder] = {}
        self._lock = threading.Lock()

    def __call__(self, spec: str) -> AnyEncoder:
        with self._lock:
            encoder = self._encoders.get(spec)
            if encoder is None:
                encoder = load_encoder(spec, **self._options)  # type: ignore[arg-type]
                self._encoders[spec] = encoder
            return encoder
