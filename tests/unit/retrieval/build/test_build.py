"""Builds from each source format; bad rows are skipped and reported, paths stay under the media root."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from exemplar.errors import InvalidRequest, NotFound
from exemplar.retrieval import PoolService, build_pool
from exemplar.retrieval.build.sources import count_rows, read_source, resolve_media
from tests.helpers import png_bytes

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def write_images(root: Path) -> list[dict]:
    rows = []
    for label, colour in COLOURS.items():
        for n in range(3):
            rel = Path("media") / label / f"{n}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(png_bytes(tuple(max(0, c - 20 * n) for c in colour)))
            rows.append({"id": f"{label}-{n}", "image": rel.as_posix(), "text": f"a {label} square",
                         "label": label, "domain": f"site-{n % 2}", "metadata": {"n": n}})
    return rows


def test_jsonl_build(pools: PoolService, tmp_path: Path) -> None:
    rows = write_images(tmp_path)
    manifest = tmp_path / "items.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pools.create(name="p", encoder="open_clip:exemplar-tiny")
    report = build_pool(pools.store, pools.snapshots, pools.encoders, "p", manifest)
    assert (report.version, report.added, report.skipped) == (1, 9, 0)
    snap = pools.snapshots.snapshot("p")
    row = snap.row_of["green-1"]
    assert snap.label_of(row) == "green" and snap.domain_of(row) == "site-1"
    assert snap.images[row] == "media/green/1.png" and snap.metadata_of(row) == {"n": 1}
    assert snap.media_roots[row] == str(tmp_path.resolve())


def test_csv_build_equals_jsonl_build(pools: PoolService, tmp_path: Path) -> None:
    rows = write_images(tmp_path)
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(tmp_path / "items.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image", "text", "label", "domain", "metadata"])
        writer.writeheader()
        for r in rows:
            writer.writerow(dict(r, metadata=json.dumps(r["metadata"])))
    pools.create(name="a", encoder="open_clip:exemplar-tiny")
    pools.create(name="b", encoder="open_clip:exemplar-tiny")
    build_pool(pools.store, pools.snapshots, pools.encoders, "a", tmp_path / "items.jsonl")
    build_pool(pools.store, pools.snapshots, pools.encoders, "b", tmp_path / "items.csv")
    a, b = pools.snapshots.snapshot("a"), pools.snapshots.snapshot("b")
    assert a.ids == b.ids and a.metadata == b.metadata
    np.testing.assert_allclose(np.asarray(a.vectors), np.asarray(b.vectors), atol=1e-6)


def test_imagefolder_build(pools: PoolService, tmp_path: Path) -> None:
    write_images(tmp_path)
    (tmp_path / "media" / "red" / "notes.txt").write_text("not an image")
    pools.create(name="p", encoder="open_clip:exemplar-tiny")
    report = build_pool(pools.store, pools.snapshots, pools.encoders, "p", tmp_path / "media")
    assert report.added == 9
    snap = pools.snapshots.snapshot("p")
    assert snap.label_of(snap.row_of["blue/2"]) == "blue" and snap.images[snap.row_of["blue/2"]] == "blue/2.png"
    assert pools.stats("p").labels == {"blue": 3, "green": 3, "red": 3}


def test_bad_rows_are_skipped_and_reported(pools: PoolService, tmp_path: Path) -> None:
    rows = write_images(tmp_path)
    (tmp_path / "corrupt.png").write_bytes(png_bytes()[:30])
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(png_bytes())
    (tmp_path / "media" / "link.png").symlink_to(outside)
    lines = [json.dumps(r) for r in rows[:3]] + [
        "{not json",
        json.dumps({"id": "traversal", "image": "../x.png", "label": "red"}),
        json.dumps({"id": "absolute", "image": "/etc/passwd", "label": "red"}),
        json.dumps({"id": "symlink", "image": "media/link.png", "label": "red"}),
        json.dumps({"id": "missing", "image": "media/none.png", "label": "red"}),
        json.dumps({"id": "corrupt", "image": "corrupt.png", "label": "red"}),
        json.dumps({"image": "media/red/0.png"}),
        json.dumps({"id": "red-0", "image": "media/red/1.png", "label": "red"}),
        json.dumps({"id": "badmeta", "image": "media/red/1.png", "metadata": [1, 2]}),
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    pools.create(name="p", encoder="open_clip:exemplar-tiny")
    report = build_pool(pools.store, pools.snapshots, pools.encoders, "p", manifest, batch_size=2)
    assert report.added == 3 and report.skipped == 9
    reasons = {e.item_id: e.message for e in report.errors}
    assert "'..'" in reasons["traversal"] and "absolute" in reasons["absolute"]
    assert "leaves the media root" in reasons["symlink"]
    assert reasons["missing"] == "image file not found" and "not a decodable image" in reasons["corrupt"]
    assert "duplicate" in reasons["red-0"] and "JSON object" in reasons["badmeta"]
    assert sorted(pools.snapshots.snapshot("p").ids) == ["red-0", "red-1", "red-2"]
    os.unlink(outside)


def test_precomputed_build_from_jsonl_and_upsert(pools: PoolService, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    manifest = tmp_path / "vectors.jsonl"
    manifest.write_text("".join(
        json.dumps({"id": f"v{i}", "label": "a", "embedding": rng.normal(size=4).tolist()}) + "\n" for i in range(5)
    ) + json.dumps({"id": "bad", "embedding": [1, 2]}) + "\n")
    pools.create(name="p", encoder="precomputed:4")
    report = build_pool(pools.store, pools.snapshots, pools.encoders, "p", manifest)
    assert report.added == 5 and report.skipped == 1 and "dimensions" in report.errors[0].message
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "v9", "embedding": [1, 0, 0, 0]}) + "\n")
    assert build_pool(pools.store, pools.snapshots, pools.encoders, "p", more, mode="upsert").version == 2
    assert len(pools.snapshots.snapshot("p").ids) == 6
    assert build_pool(pools.store, pools.snapshots, pools.encoders, "p", more, mode="replace").version == 3
    assert pools.snapshots.snapshot("p").ids == ("v9",)


def test_missing_or_unknown_sources_are_refused(pools: PoolService, tmp_path: Path) -> None:
    pools.create(name="p", encoder="precomputed:4")
    with pytest.raises(NotFound):
        build_pool(pools.store, pools.snapshots, pools.encoders, "p", tmp_path / "nope.jsonl")
    (tmp_path / "x.xyz").write_text("")
    with pytest.raises(InvalidRequest, match="cannot tell the format"):
        build_pool(pools.store, pools.snapshots, pools.encoders, "p", tmp_path / "x.xyz")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(InvalidRequest, match="not a readable Parquet file"):
        build_pool(pools.store, pools.snapshots, pools.encoders, "p", tmp_path / "x.parquet")
    (tmp_path / "noheader.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InvalidRequest, match="header"):
        list(read_source(tmp_path / "noheader.csv"))
    assert pools.get("p").current_version is None


IRREGULAR_MANIFESTS = {
    "no-final-newline.jsonl": '{"id": "a"}\n{"id": "b"}\n{"id": "c"}',
    "blank-lines.jsonl": '\n{"id": "a"}\n\n  \n{"id": "b"}\r\n{"id": "c"}\n\n',
    "no-final-newline.csv": "id,label\na,x\nb,y\nc,z",
    "blank-lines.csv": "id,label\r\na,x\r\n\r\nb,y\n\nc,z\n\n",
}


@pytest.mark.parametrize("name", IRREGULAR_MANIFESTS)
def test_count_rows_counts_the_rows_read(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(IRREGULAR_MANIFESTS[name].encode())
    assert count_rows(path) == len(list(read_source(path))) == 3


def test_count_rows_of_empty_manifests(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "header-only.csv").write_text("id,label")
    assert count_rows(tmp_path / "empty.jsonl") == count_rows(tmp_path / "header-only.csv") == 0


@pytest.mark.parametrize("ref", ["../a.png", "/abs.png", "a/../../b.png", ""])
def test_resolve_media_refuses_escapes(tmp_path: Path, ref: str) -> None:
    with pytest.raises(InvalidRequest):
        resolve_media(tmp_path, ref)


def test_resolve_media_keeps_relative_paths(tmp_path: Path) -> None:
    assert resolve_media(tmp_path, "a/b/c.png") == "a/b/c.png"


def test_parquet_with_paths_and_embedded_bytes(pools: PoolService, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = write_images(tmp_path)
    table = pa.table({
        "id": [r["id"] for r in rows],
        "image": [r["image"] for r in rows[:4]] + [None] * 5,
        "label": [r["label"] for r in rows],
        "text": [r["text"] for r in rows],
        "domain": [r["domain"] for r in rows],
        "metadata": [json.dumps(r["metadata"]) for r in rows],
    })
    pq.write_table(table, tmp_path / "paths.parquet")
    bytes_table = pa.table({
        "id": [f"b{i}" for i in range(3)],
        "image": [{"bytes": (tmp_path / rows[i]["image"]).read_bytes(), "path": None} for i in range(3)],
        "label": ["x", "y", "x"],
    })
    pq.write_table(bytes_table, tmp_path / "bytes.parquet")
    pools.create(name="p", encoder="open_clip:exemplar-tiny")
    report = build_pool(pools.store, pools.snapshots, pools.encoders, "p", tmp_path / "paths.parquet")
    assert report.added == 4 and report.skipped == 5, "rows without an image cannot be embedded"
    pools.create(name="b", encoder="open_clip:exemplar-tiny")
    assert build_pool(pools.store, pools.snapshots, pools.encoders, "b", tmp_path / "bytes.parquet").added == 3
    snap = pools.snapshots.snapshot("b")
    stored = pools.store.files.media_dir(pools.get("b").id) / snap.images[0]
    assert stored.read_bytes() == (tmp_path / rows[0]["image"]).read_bytes() and snap.media_roots[0] is None


def test_webdataset_shards(pools: PoolService, tmp_path: Path) -> None:
    import io
    import tarfile

    rows = write_images(tmp_path)
    shards = tmp_path / "wds"
    shards.mkdir()
    for s in range(2):
        with tarfile.open(shards / f"shard-{s:04d}.tar", "w") as tar:
            for r in rows[s * 5 : s * 5 + 5]:
                members = {f"{r['id']}.png": (tmp_path / r["image"]).read_bytes(),
                           f"{r['id']}.cls": r["label"].encode(),
                           f"{r['id']}.json": json.dumps({"domain": r["domain"], "n": r["metadata"]["n"]}).encode()}
                if r["id"].endswith("0"):
                    members[f"{r['id']}.txt"] = r["text"].encode()
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (shards / "broken.tar").write_bytes(b"this is no tar")
    pools.create(name="w", encoder="open_clip:exemplar-tiny")
    report = build_pool(pools.store, pools.snapshots, pools.encoders, "w", shards)
    assert report.added == 9 and report.skipped == 1, report.errors
    snap = pools.snapshots.snapshot("w")
    row = snap.row_of["red-0"]
    assert snap.label_of(row) == "red" and snap.domain_of(row) == "site-0"
    assert snap.texts[row] == "a red square" and snap.metadata_of(row) == {"n": 0}
    assert (pools.store.files.media_dir(pools.get("w").id) / snap.images[row]).is_file()


def test_shards_of_both_shapes_stack_to_the_fused_rows() -> None:
    from exemplar.retrieval.build.runner import _stacked
    from exemplar.retrieval.store.modalities import empty_vectors

    rng = np.random.default_rng(0)
    old = rng.normal(size=(3, 4)).astype(np.float32)  # a shard written before both modalities were kept
    new = rng.normal(size=(2, 3, 4)).astype(np.float32)  # fused, image, text
    np.testing.assert_array_equal(_stacked([old, new], empty_vectors(4, "image+text")), np.vstack([old, new[:, 0]]))
    np.testing.assert_array_equal(_stacked([new, new], empty_vectors(4, "image+text")), np.concatenate([new, new]))
    assert _stacked([], empty_vectors(4, "image+text")).shape == (0, 3, 4)
