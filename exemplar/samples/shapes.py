"""Labelled sample images in several visual domains: shapes under stain-like colour casts, noise
and blur (how pathology sites differ), with a JSONL manifest. Seeded, so the same call always
writes the same files."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["CLASSES", "DOMAINS", "Domain", "generate_shapes"]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")


@dataclasses.dataclass(frozen=True)
class Domain:
    """How one site renders: background and foreground tints, noise and blur."""

    name: str
    background: tuple[int, int, int]
    foreground: tuple[int, int, int]
    noise: float
    blur: float


DOMAINS: tuple[Domain, ...] = (
    Domain("site-a", background=(236, 232, 228), foreground=(60, 50, 70), noise=4.0, blur=0.0),
    Domain("site-b", background=(238, 196, 214), foreground=(120, 40, 130), noise=10.0, blur=0.6),
    Domain("site-c", background=(200, 210, 236), foreground=(50, 60, 150), noise=16.0, blur=1.2),
)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4)) for k in range(4)]
    elif shape == "triangle":
        corners = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    else:  # cross: a plus sign of width r/2
        w = 0.35
        base = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        c, s = math.cos(angle), math.sin(angle)
        corners = [(x * c - y * s, x * s + y * c) for x, y in base]
    return [(cx + r * x, cy + r * y) for x, y in corners]


def _render(shape: str, domain: Domain, rng: np.random.Generator, size: int) -> Image.Image:
    jitter = rng.integers(-12, 13, size=3)
    background = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(domain.background, jitter))
    foreground = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(domain.foreground, rng.integers(-20, 21, size=3)))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    # Pose varies a little (size, position, tilt), as objects do within one class; shapes stay upright.
    r = size * rng.uniform(0.25, 0.35)
    cx, cy = (size / 2 + rng.uniform(-0.05, 0.05) * size for _ in range(2))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=foreground)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, -math.pi / 2 + rng.uniform(-0.3, 0.3)), fill=foreground)
    if domain.blur:
        image = image.filter(ImageFilter.GaussianBlur(domain.blur))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, domain.noise, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def generate_shapes(
    out_dir: Path,
    *,
    per_class_per_domain: int = 10,
    classes: tuple[str, ...] = CLASSES,
    domains: tuple[Domain, ...] = DOMAINS,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write PNG images and ``manifest.jsonl`` under ``out_dir``; returns the manifest path."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for domain in domains:
        for shape in classes:
            folder = out_dir / "images" / domain.name / shape
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(per_class_per_domain):
                item_id = f"{domain.name}-{shape}-{n:04d}"
                path = folder / f"{n:04d}.png"
                _render(shape, domain, rng, size).save(path, format="PNG")
                lines.append({
                    "id": item_id,
                    "image": path.relative_to(out_dir).as_posix(),
                    "text": f"a {shape} imaged at {domain.name}",
                    "label": shape,
                    "domain": domain.name,
                    "metadata": {"index": n},
                })
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest
