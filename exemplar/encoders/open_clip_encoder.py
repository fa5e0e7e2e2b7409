"""The open_clip encoder: any architecture and pretrained tag, a local directory, a checkpoint
file, or seeded random weights (``exemplar-tiny`` for tests and offline demos)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch

from exemplar.encoders.devices import resolve_device
from exemplar.encoders.images import DEFAULT_MAX_PIXELS, decode_image
from exemplar.encoders.spec import TINY_ARCH, EncoderSpec
from exemplar.encoders.weights import resolve_tag_checkpoint
from exemplar.errors import EncoderUnavailable, NotFound, choices

__all__ = ["OpenClipEncoder", "RANDOM_SEED", "TINY_ARCH", "register_tiny", "resolve_device"]

log = logging.getLogger(__name__)

RANDOM_SEED = 0
_CONFIG_DIR = Path(__file__).with_name("model_configs")
_register_lock = threading.Lock()
_registered = False


def register_tiny() -> None:
    """Register Exemplar's own architectures (``exemplar-tiny``) with open_clip, once."""
    global _registered
    with _register_lock:
        if not _registered:
            open_clip.add_model_config(_CONFIG_DIR)
            _registered = True


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(previous)


def _checkpoint_in_dir(path: Path) -> Path | None:
    for pattern in ("*.safetensors", "*.bin", "*.pth", "*.pt"):
        found = sorted(path.glob(pattern))
        if found:
            return found[0]
    return None


class OpenClipEncoder:
    """Encodes images and texts into L2-normalised float32 vectors with an open_clip model."""

    def __init__(
        self,
        spec: EncoderSpec,
        *,
        device: str = "auto",
        batch_size: int = 64,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        register_tiny()
        self.spec = spec.text
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.device = resolve_device(device)
        self._lock = threading.Lock()
        model, preprocess, tokenizer_name = self._load(spec)
        self._model = model.to(self.device).eval()
        self._preprocess = preprocess
        self._tokenizer = open_clip.get_tokenizer(tokenizer_name)
        size = getattr(self._model.visual, "image_size", None)
        self._draft = max(size) if isinstance(size, (tuple, list)) else (int(size) if size else None)
        # Architectures differ in where the output width lives; one forward pass is unambiguous.
        self.dim = int(self._encode_text_batch(["probe"]).shape[1])

    def _load(self, spec: EncoderSpec):  # noqa: ANN202 - open_clip's types
        if spec.source == "local_dir":
            path = spec.path
            assert path is not None
            if not (path / "open_clip_config.json").is_file():
                raise NotFound(
                    f"{path} holds no open_clip_config.json: a local-dir encoder needs the config and "
                    "the weights (e.g. open_clip_model.safetensors) side by side"
                )
            if _checkpoint_in_dir(path) is None:
                raise NotFound(
                    f"{path} holds no weights file (.safetensors, .bin, .pth or .pt) next to its config"
                )
            name = f"local-dir:{path}"
            model, _, preprocess = open_clip.create_model_and_transforms(name, device="cpu")
            return model, preprocess, name

        arch = spec.arch
        assert arch is not None
        if open_clip.get_model_config(arch) is None:
            raise NotFound(
                f"unknown open_clip architecture {arch!r}; valid ones include {choices(open_clip.list_models(), 12)}",
                param="encoder",
            )
        if spec.source == "random":
            # Random weights are what was asked for; open_clip's warning about them is noise here.
            with torch.random.fork_rng(devices=[]), _quiet_root_logger():
                torch.manual_seed(RANDOM_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(arch, device="cpu")
            return model, preprocess, arch
        if spec.source == "checkpoint":
            path = spec.path
            assert path is not None
            if not path.is_file():
                raise NotFound(f"checkpoint file {path} does not exist")
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(path), device="cpu")
            except (RuntimeError, KeyError, ValueError) as exc:
                raise EncoderUnavailable(
                    f"checkpoint {path} does not fit architecture {arch!r} ({type(exc).__name__})"
                ) from exc
            return model, preprocess, arch

        tag = spec.pretrained
        assert tag is not None
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        if not cfg:
            tags = list(open_clip.list_pretrained_tags_by_model(arch)) + ["random"]
            raise NotFound(
                f"unknown pretrained tag {tag!r} for {arch}; valid ones: {choices(tags, 100)}", param="encoder"
            )
        checkpoint = resolve_tag_checkpoint(arch, tag, cfg)
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch,
            pretrained=checkpoint,
            device="cpu",
            force_quick_gelu=bool(cfg.get("quick_gelu", False)),
            image_mean=cfg.get("mean"),
            image_std=cfg.get("std"),
            image_interpolation=cfg.get("interpolation"),
            image_resize_mode=cfg.get("resize_mode"),
        )
        return model, preprocess, arch

    def preprocess_image(self, data: bytes) -> torch.Tensor:
        """Decode and transform one image; raises ``InvalidImage`` for bad bytes."""
        return self._preprocess(decode_image(data, max_pixels=self.max_pixels, target=self._draft))

    def encode_preprocessed(self, batch: Sequence[object]) -> np.ndarray:
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        for start in range(0, len(batch), self.batch_size):
            chunk = torch.stack(list(batch[start : start + self.batch_size]))  # type: ignore[arg-type]
            with self._lock, torch.inference_mode():
                vectors = self._model.encode_image(chunk.to(self.device), normalize=True)
            out[start : start + len(chunk)] = vectors.float().cpu().numpy()
        return out

    def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        return self.encode_preprocessed([self.preprocess_image(data) for data in images])

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        tokens = self._tokenizer(texts)
        with self._lock, torch.inference_mode():
            vectors = self._model.encode_text(tokens.to(self.device), normalize=True)
        return vectors.float().cpu().numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        parts = [
            self._encode_text_batch(list(texts[start : start + self.batch_size]))
            for start in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)
