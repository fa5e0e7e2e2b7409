"""Finding open_clip weights without long network retries.

open_clip downloads a pretrained tag on first use and, without a network, keeps retrying for tens
of seconds before failing. Exemplar looks in the local caches first, honours ``HF_HUB_OFFLINE``
and fails at once with a message that says how to supply the weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from exemplar.errors import EncoderUnavailable

__all__ = ["hub_offline", "resolve_tag_checkpoint"]

_HF_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _how_to(arch: str, tag: str, where: str) -> str:
    return (
        f"weights for open_clip:{arch}@{tag} are not available ({where}). Supply them by one of: "
        f"run once with network access so they land in the Hugging Face cache "
        f"(HF_HOME / HF_HUB_CACHE); use 'open_clip:{arch}@/path/to/checkpoint.safetensors'; or use "
        f"'open_clip:local-dir:/path/to/dir' with open_clip_config.json and the weights in it"
    )


def _hub_file(repo: str, filename: str | None, cache_dir: str | None) -> str | None:
    from huggingface_hub import hf_hub_download

    names = (filename,) if filename else _HF_FILENAMES
    for name in names:
        try:
            return hf_hub_download(repo, name, cache_dir=cache_dir, local_files_only=True)
        except Exception:  # noqa: BLE001 - any miss means "not in the cache"
            continue
    return None


def resolve_tag_checkpoint(arch: str, tag: str, cfg: dict[str, Any], cache_dir: str | None = None) -> str:
    """Return a local path holding the weights of ``arch@tag``; download only when online."""
    if "file" in cfg:
        return str(cfg["file"])
    hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    if hub:
        # open_clip's convention: 'org/repo/' means the repo's default file, 'org/repo/file' a file.
        repo, filename = (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)
        path = _hub_file(repo, filename or None, cache_dir)
        if path:
            return path
        if hub_offline():
            raise EncoderUnavailable(_how_to(arch, tag, "not in the local cache and HF_HUB_OFFLINE is set"))
        from huggingface_hub import hf_hub_download

        last: Exception | None = None
        for name in (filename,) if filename else _HF_FILENAMES:
            try:
                return hf_hub_download(repo, name, cache_dir=cache_dir, etag_timeout=10)
            except Exception as exc:  # noqa: BLE001 - reported below with guidance
                last = exc
        raise EncoderUnavailable(_how_to(arch, tag, f"download failed: {type(last).__name__}"))
    if url:
        root = Path(cache_dir or os.path.expanduser("~/.cache/clip"))
        target = root / os.path.basename(url)
        if target.is_file():
            return str(target)
        if hub_offline():
            raise EncoderUnavailable(_how_to(arch, tag, "not in the local cache and HF_HUB_OFFLINE is set"))
        from open_clip.pretrained import download_pretrained_from_url

        try:
            return download_pretrained_from_url(url, cache_dir=str(root))
        except Exception as exc:  # noqa: BLE001
            raise EncoderUnavailable(_how_to(arch, tag, f"download failed: {type(exc).__name__}")) from exc
    raise EncoderUnavailable(_how_to(arch, tag, "the tag names no download location"))
