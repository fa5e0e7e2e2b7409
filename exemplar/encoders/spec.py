"""Encoder spec strings: ``open_clip:<arch>@<pretrained>``, ``open_clip:local-dir:<path>``,
``open_clip:<arch>@/path/to/checkpoint.pt``, ``open_clip:<arch>@random``, ``precomputed:<dim>``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from exemplar.errors import InvalidRequest, choices

__all__ = ["EncoderSpec", "SCHEMES", "TINY_ARCH", "parse_spec"]

SCHEMES = ("open_clip", "precomputed")
# Exemplar's own open_clip architecture (random weights unless a checkpoint is given); named here,
# not in open_clip_encoder, so that parsing and listing specs need no torch.
TINY_ARCH = "exemplar-tiny"
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
MAX_PRECOMPUTED_DIM = 16384

Source = Literal["tag", "checkpoint", "local_dir", "random", "precomputed"]


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """A parsed encoder spec. ``text`` is the canonical string stored with pools."""

    text: str
    scheme: str
    source: Source
    arch: str | None = None
    pretrained: str | None = None
    path: Path | None = None
    dim: int | None = None


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith(_CHECKPOINT_SUFFIXES)


def parse_spec(text: str, *, default_random_archs: frozenset[str] = frozenset()) -> EncoderSpec:
    """Parse a spec string; raises ``InvalidRequest`` naming the valid forms."""
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in SCHEMES:
        raise InvalidRequest(
            f"unknown encoder spec {text!r}: expected one of the schemes {choices(SCHEMES)}, "
            "e.g. 'open_clip:ViT-B-32@laion2b_s34b_b79k', 'open_clip:exemplar-tiny' or 'precomputed:512'",
            param="encoder",
        )
    if scheme == "precomputed":
        try:
            dim = int(rest)
        except ValueError:
            dim = 0
        if not 1 <= dim <= MAX_PRECOMPUTED_DIM:
            raise InvalidRequest(
                f"precomputed spec needs a dimension between 1 and {MAX_PRECOMPUTED_DIM}, got {rest!r}",
                param="encoder",
            )
        return EncoderSpec(text=f"precomputed:{dim}", scheme=scheme, source="precomputed", dim=dim)

    if rest.startswith("local-dir:"):
        path = rest[len("local-dir:") :]
        if not path:
            raise InvalidRequest("empty path after 'open_clip:local-dir:'", param="encoder")
        return EncoderSpec(text=text, scheme=scheme, source="local_dir", path=Path(path))

    arch, sep, pretrained = rest.partition("@")
    if not arch:
        raise InvalidRequest("missing architecture in open_clip spec", param="encoder")
    if not sep:
        if arch in default_random_archs:
            return EncoderSpec(text=text, scheme=scheme, source="random", arch=arch)
        raise InvalidRequest(
            f"open_clip spec {text!r} names no weights: use 'open_clip:{arch}@<pretrained tag>', "
            f"'open_clip:{arch}@/path/to/checkpoint.pt' or 'open_clip:{arch}@random'",
            param="encoder",
        )
    if not pretrained:
        raise InvalidRequest(f"empty pretrained tag in {text!r}", param="encoder")
    if pretrained == "random":
        return EncoderSpec(text=text, scheme=scheme, source="random", arch=arch)
    if _looks_like_path(pretrained):
        return EncoderSpec(text=text, scheme=scheme, source="checkpoint", arch=arch, path=Path(pretrained))
    return EncoderSpec(text=text, scheme=scheme, source="tag", arch=arch, pretrained=pretrained)
