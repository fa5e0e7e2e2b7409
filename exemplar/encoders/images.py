"""Image decoding with a pixel limit: the size is read from the header before any pixel is decoded,
so decompression bombs are refused without allocating them."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from exemplar.errors import InvalidImage

__all__ = ["DEFAULT_MAX_PIXELS", "decode_image"]

DEFAULT_MAX_PIXELS = 40_000_000


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, target: int | None = None) -> Image.Image:
    """Decode ``data`` into an RGB image, or raise ``InvalidImage`` with a client-safe message.

    With ``target``, JPEGs are decoded in draft mode at the smallest DCT scale (1/2, 1/4, 1/8) that
    keeps both sides at least ``target`` pixels: the model sees the same content for a fraction of
    the decoding work."""
    if not data:
        raise InvalidImage("empty image")
    try:
        with warnings.catch_warnings():
            # Our own limit applies; PIL's global bomb check must not turn into a warning or
            # an unrelated error first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width <= 0 or height <= 0:
                raise InvalidImage("image has no pixels")
            if width * height > max_pixels:
                raise InvalidImage(
                    f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels"
                )
            if target is not None:
                image.draft("RGB", (target, target))
            image.load()
            return image.convert("RGB")
    except InvalidImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"not a decodable image ({type(exc).__name__})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL reports truncated or corrupt data through these.
        raise InvalidImage("corrupt or truncated image data") from exc
