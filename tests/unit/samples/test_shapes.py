from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from exemplar.samples import CLASSES, DOMAINS, generate_shapes


def test_generates_labelled_images_in_every_domain(tmp_path: Path) -> None:
    manifest = generate_shapes(tmp_path, per_class_per_domain=2, seed=5)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 2 * len(CLASSES) * len(DOMAINS)
    assert {r["label"] for r in rows} == set(CLASSES) and {r["domain"] for r in rows} == {d.name for d in DOMAINS}
    assert len({r["id"] for r in rows}) == len(rows)
    with Image.open(tmp_path / rows[0]["image"]) as image:
        assert image.size == (64, 64) and image.mode == "RGB"


def test_generation_is_seeded(tmp_path: Path) -> None:
    a = generate_shapes(tmp_path / "a", per_class_per_domain=1, seed=1)
    b = generate_shapes(tmp_path / "b", per_class_per_domain=1, seed=1)
    c = generate_shapes(tmp_path / "c", per_class_per_domain=1, seed=2)
    first = json.loads(a.read_text().splitlines()[0])["image"]
    assert (a.parent / first).read_bytes() == (b.parent / first).read_bytes() != (c.parent / first).read_bytes()
