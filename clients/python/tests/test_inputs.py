"""Request building without a server: inputs (paths, bytes, PIL-like images, arrays), keyword
fields against models, batch splitting."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from pydantic import ValidationError

from exemplar_client import BatchSelectRequest, ItemIn, QueryIn, SelectRequest
from exemplar_client._operations import compose, merge_batches, split_batch
from exemplar_client.models import BatchSelectResponse, SelectResponse


class FakePILImage:
    """What the client relies on in a PIL image: ``mode`` and ``save(file, format=...)``."""

    mode = "RGB"

    def save(self, out: io.BytesIO, format: str) -> None:  # noqa: A002 - PIL's name
        out.write(f"{format} image".encode())


def test_images_go_as_base64_from_paths_bytes_and_pil_images(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG data")
    for given in (path, str(path), b"\x89PNG data", bytearray(b"\x89PNG data")):
        assert base64.b64decode(ItemIn(id="a", image=given).wire()["image"]) == b"\x89PNG data"
    assert base64.b64decode(QueryIn(image=FakePILImage()).wire()["image"]) == b"PNG image"


def test_bad_images_fail_before_sending(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        QueryIn(image=12)
    with pytest.raises(ValidationError):
        ItemIn(id="a", image=b"")
    with pytest.raises(FileNotFoundError):
        ItemIn(id="a", image=tmp_path / "missing.png")


def test_vectors_from_sequences_and_array_likes() -> None:
    class ArrayLike:
        def tolist(self) -> list[float]:
            return [0.5, 1.0]

    assert QueryIn(embedding=ArrayLike()).wire() == {"embedding": [0.5, 1.0]}
    assert QueryIn(embedding=(1, 2)).wire() == {"embedding": [1.0, 2.0]}
    with pytest.raises(ValidationError):
        QueryIn(embedding="1,2")


def test_unset_fields_are_left_to_the_server() -> None:
    request = compose(SelectRequest, None, {"query": {"item_id": "a"}, "k": 3})
    assert request.wire() == {"query": {"item_id": "a"}, "k": 3}


def test_misspelt_fields_fail_here() -> None:
    with pytest.raises(ValidationError):
        compose(SelectRequest, None, {"query": {"item_id": "a"}, "kk": 3})
    with pytest.raises(TypeError):
        compose(SelectRequest, {"k": 1}, {"k": 2})


def _queries(n: int) -> list[dict[str, str]]:
    return [{"item_id": f"i{i}"} for i in range(n)]


def test_a_batch_splits_in_order_with_the_same_options() -> None:
    request = BatchSelectRequest(queries=_queries(7), strategy="balanced", k=4)
    chunks = split_batch(request, 3)
    assert [len(c.queries) for c in chunks] == [3, 3, 1]
    assert [q.item_id for c in chunks for q in c.queries] == [f"i{i}" for i in range(7)]
    assert all(c.wire()["strategy"] == "balanced" and c.wire()["k"] == 4 for c in chunks)
    assert split_batch(request, 7) == [request]


def test_a_shared_batch_is_not_split() -> None:
    with pytest.raises(ValueError, match="shared"):
        split_batch(BatchSelectRequest(queries=_queries(4), shared=True), 3)
    with pytest.raises(ValueError):
        split_batch(BatchSelectRequest(queries=_queries(4)), 0)


def test_merged_results_keep_the_order() -> None:
    def response(*pools: str) -> BatchSelectResponse:
        return BatchSelectResponse(results=[SelectResponse(pool=p, version=1, encoder="e", strategy="topk",
                                                           demonstrations=[], timing_ms={}) for p in pools])

    merged = merge_batches([response("a", "b"), response("c")])
    assert [r.pool for r in merged.results] == ["a", "b", "c"]
