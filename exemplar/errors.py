"""Domain errors shared by every layer.

Each error carries its own fields (``type``, ``message``, ``param``); the HTTP layer decides the
status code in one place (``exemplar.app.errors``). This module imports nothing from the project so
that ``retrieval`` and ``encoders`` can both raise the same errors without knowing each other.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "Conflict",
    "EmptyPool",
    "EncoderUnavailable",
    "ExemplarError",
    "Incompatible",
    "InvalidImage",
    "InvalidRequest",
    "NotFound",
    "NotPermitted",
    "PayloadTooLarge",
    "UnsupportedQuery",
    "UpstreamError",
    "UpstreamRefused",
    "UpstreamTimeout",
    "choices",
]


def choices(values: Iterable[str], limit: int = 20) -> str:
    """Format valid choices for an error message, truncated after ``limit`` entries."""
    values = sorted(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    if len(values) > limit:
        shown += f", ... ({len(values) - limit} more)"
    return shown or "(none)"


class ExemplarError(Exception):
    """Base class: an error whose message is safe to show to a client."""

    type: str = "exemplar_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(ExemplarError):
    type = "invalid_request"


class InvalidImage(InvalidRequest):
    """Image bytes that cannot be decoded, or that exceed the pixel limit."""

    type = "invalid_image"

    def __init__(self, message: str, *, param: str | None = None, index: int | None = None) -> None:
        super().__init__(message, param=param)
        self.index = index


class Incompatible(InvalidRequest):
    """A well-formed request that the target, as it is now, cannot serve: a query kind the pool's
    encoder cannot embed, a vector of another width, an item without what the pool embeds, a label
    the pool does not hold, a prompt over the model endpoint's limits. The same request can succeed
    against another target, or this one once it changes, so it conflicts with server state rather
    than being malformed. Still an ``InvalidRequest``, so code that re-labels the offending field
    catches it too."""

    type = "incompatible"


class UnsupportedQuery(Incompatible):
    """A query kind the pool's encoder cannot embed (e.g. text on a precomputed pool)."""

    type = "unsupported_query"


class NotFound(ExemplarError):
    type = "not_found"


class Conflict(ExemplarError):
    type = "conflict"


class NotPermitted(ExemplarError):
    """The server's configuration does not permit this, whatever the request says: builds over HTTP
    when no source roots are configured, or a source outside them."""

    type = "not_permitted"


class PayloadTooLarge(ExemplarError):
    type = "payload_too_large"


class EncoderUnavailable(ExemplarError):
    """The encoder's weights cannot be had; the message says how to supply them."""

    type = "encoder_unavailable"


class EmptyPool(Conflict):
    """Selection from a pool (or a filtered part of it) that holds no items."""

    type = "empty_pool"


class UpstreamError(ExemplarError):
    """The downstream model endpoint failed, refused, or answered something unusable."""

    type = "mllm_error"


class UpstreamTimeout(UpstreamError):
    type = "mllm_timeout"


class UpstreamRefused(UpstreamError):
    """The model endpoint answered a client error (4xx) about the request it was sent: the caller's
    request is what to fix, so the HTTP layer answers with the endpoint's own status, and the
    endpoint's ``type``, ``param`` and ``code`` where it gave them (OpenAI's error shape)."""

    type = "mllm_refused"

    def __init__(self, message: str, *, status: int, param: str | None = None, type_: str | None = None,
                 code: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, param=param)
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s
        if type_:
            self.type = type_
