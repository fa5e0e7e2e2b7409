from __future__ import annotations

from pathlib import Path

import pytest

from exemplar.encoders import list_encoders, parse_spec
from exemplar.errors import InvalidRequest


@pytest.mark.parametrize(
    ("text", "source", "arch", "pretrained", "path", "dim"),
    [
        ("open_clip:ViT-B-32@laion2b_s34b_b79k", "tag", "ViT-B-32", "laion2b_s34b_b79k", None, None),
        ("open_clip:ViT-B-32@random", "random", "ViT-B-32", None, None, None),
        ("open_clip:ViT-B-32@/models/clip.safetensors", "checkpoint", "ViT-B-32", None, Path("/models/clip.safetensors"), None),
        ("open_clip:ViT-B-32@ckpt.pt", "checkpoint", "ViT-B-32", None, Path("ckpt.pt"), None),
        ("open_clip:local-dir:/models/clip", "local_dir", None, None, Path("/models/clip"), None),
        ("precomputed:512", "precomputed", None, None, None, 512),
    ],
)
def test_valid_specs(text, source, arch, pretrained, path, dim) -> None:
    spec = parse_spec(text)
    assert (spec.source, spec.arch, spec.pretrained, spec.path, spec.dim) == (source, arch, pretrained, path, dim)


def test_tiny_needs_no_tag() -> None:
    assert parse_spec("open_clip:exemplar-tiny", default_random_archs=frozenset({"exemplar-tiny"})).source == "random"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clip:ViT-B-32", "expected one of the schemes 'open_clip', 'precomputed'"),
        ("ViT-B-32", "expected one of the schemes"),
        ("precomputed:abc", "dimension"),
        ("precomputed:0", "dimension"),
        ("open_clip:ViT-B-32", "names no weights"),
        ("open_clip:ViT-B-32@", "empty pretrained"),
        ("open_clip:local-dir:", "empty path"),
        ("open_clip:@x", "missing architecture"),
    ],
)
def test_invalid_specs_say_what_is_valid(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        parse_spec(text)
    assert info.value.param == "encoder"


def test_list_encoders_includes_tiny_and_pretrained_tags() -> None:
    specs = list_encoders()
    assert "open_clip:exemplar-tiny" in specs and "open_clip:ViT-B-32@laion2b_s34b_b79k" in specs
