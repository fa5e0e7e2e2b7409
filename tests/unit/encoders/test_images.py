from __future__ import annotations

import io

import pytest
from PIL import Image

from exemplar.encoders import decode_image
from exemplar.errors import InvalidImage
from tests.helpers import png_bytes


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_decodes_common_formats_to_rgb(fmt: str) -> None:
    image = decode_image(png_bytes((10, 200, 30), (20, 12), fmt=fmt))
    assert image.mode == "RGB" and image.size == (20, 12)


def test_grayscale_and_alpha_become_rgb() -> None:
    for mode in ("L", "RGBA", "P"):
        buffer = io.BytesIO()
        Image.new(mode, (5, 5)).save(buffer, format="PNG")
        assert decode_image(buffer.getvalue()).mode == "RGB"


def test_decompression_bomb_is_refused_before_decoding() -> None:
    buffer = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, format="PNG")  # 144 Mpx, a few kB on disk
    assert len(buffer.getvalue()) < 100_000
    with pytest.raises(InvalidImage, match="exceeds the limit"):
        decode_image(buffer.getvalue())
    with pytest.raises(InvalidImage, match="exceeds the limit of 100 pixels"):
        decode_image(png_bytes(size=(11, 10)), max_pixels=100)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, not an image", png_bytes()[:40], png_bytes(fmt="JPEG")[:200], b"\x89PNG\r\n\x1a\n" + b"\0" * 64],
    ids=["empty", "text", "truncated-png", "truncated-jpeg", "png-magic-only"],
)
def test_corrupt_or_non_image_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode_image(data)


def test_draft_mode_decodes_large_jpegs_at_a_reduced_scale() -> None:
    big = png_bytes((120, 40, 200), (1600, 1200), fmt="JPEG")
    full = decode_image(big)
    small = decode_image(big, target=224)
    assert full.size == (1600, 1200)
    assert small.size == (400, 300), "1/4 scale keeps both sides at least 224"
    assert min(small.size) >= 224 and small.mode == "RGB"
    assert decode_image(png_bytes(size=(1600, 1200)), target=224).size == (1600, 1200), "PNG has no draft mode"
