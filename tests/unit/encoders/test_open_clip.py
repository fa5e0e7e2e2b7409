"""The open_clip encoder through its real code paths, with the tiny registered architecture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from exemplar.encoders import EncoderRegistry, OpenClipEncoder, load_encoder, parse_spec
from exemplar.errors import EncoderUnavailable, InvalidImage, NotFound
from tests.helpers import png_bytes

IMAGES = [png_bytes((r, 255 - r, (r * 7) % 255), (40, 30)) for r in range(0, 250, 25)]


@pytest.fixture(scope="module")
def tiny() -> OpenClipEncoder:
    encoder = load_encoder("open_clip:exemplar-tiny", device="cpu", batch_size=4)
    assert isinstance(encoder, OpenClipEncoder)
    return encoder


def test_tiny_is_seeded_and_reproducible(tiny: OpenClipEncoder) -> None:
    again = load_encoder("open_clip:exemplar-tiny", device="cpu", batch_size=64)
    a, b = tiny.encode_images(IMAGES), again.encode_images(IMAGES)  # type: ignore[union-attr]
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a.shape == (len(IMAGES), 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(a[0], a[1]), "different images give different vectors"


def test_seeding_does_not_disturb_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_encoder("open_clip:exemplar-tiny", device="cpu")
    assert torch.equal(torch.rand(3), expected)


def test_batches_are_bounded(tiny: OpenClipEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    original = tiny._model.encode_image

    def spy(x, normalize=False):
        sizes.append(len(x))
        return original(x, normalize=normalize)

    monkeypatch.setattr(tiny._model, "encode_image", spy)
    tiny.encode_images(IMAGES)
    assert sizes == [4, 4, 2]


def test_texts_share_the_space(tiny: OpenClipEncoder) -> None:
    t = tiny.encode_texts(["a red circle", "a blue square", "a red circle"])
    assert t.shape == (3, 64)
    np.testing.assert_allclose(t[0], t[2], atol=1e-6)
    assert tiny.encode_texts([]).shape == (0, 64)


def test_bad_images_raise_invalid_image(tiny: OpenClipEncoder) -> None:
    with pytest.raises(InvalidImage):
        tiny.preprocess_image(b"garbage")
    small = load_encoder("open_clip:exemplar-tiny", device="cpu", max_pixels=100)
    with pytest.raises(InvalidImage, match="exceeds"):
        small.preprocess_image(png_bytes(size=(20, 20)))


def _save_tiny(tiny: OpenClipEncoder, folder: Path) -> Path:
    from safetensors.torch import save_file

    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": open_clip.get_model_config("exemplar-tiny"), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    weights = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny._model.state_dict().items()}, str(weights))
    return weights


def test_local_dir_and_checkpoint_load_the_same_weights(tiny: OpenClipEncoder, tmp_path: Path) -> None:
    weights = _save_tiny(tiny, tmp_path / "model")
    expected = tiny.encode_images(IMAGES)
    from_dir = load_encoder(f"open_clip:local-dir:{tmp_path / 'model'}", device="cpu")
    from_file = load_encoder(f"open_clip:exemplar-tiny@{weights}", device="cpu")
    np.testing.assert_allclose(from_dir.encode_images(IMAGES), expected, atol=1e-5)  # type: ignore[union-attr]
    np.testing.assert_allclose(from_file.encode_images(IMAGES), expected, atol=1e-5)  # type: ignore[union-attr]
    np.testing.assert_allclose(from_dir.encode_texts(["x"]), tiny.encode_texts(["x"]), atol=1e-5)


def test_local_dir_without_weights_or_config_fails_fast(tiny: OpenClipEncoder, tmp_path: Path) -> None:
    weights = _save_tiny(tiny, tmp_path / "model")
    weights.unlink()
    with pytest.raises(NotFound, match="no weights file"):
        load_encoder(f"open_clip:local-dir:{tmp_path / 'model'}")
    with pytest.raises(NotFound, match="open_clip_config.json"):
        load_encoder(f"open_clip:local-dir:{tmp_path / 'empty'}")
    with pytest.raises(NotFound, match="does not exist"):
        load_encoder(f"open_clip:exemplar-tiny@{tmp_path / 'missing.pt'}")


def test_wrong_checkpoint_for_architecture(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"nonsense": torch.zeros(2)}, str(path))
    with pytest.raises(EncoderUnavailable, match="does not fit"):
        load_encoder(f"open_clip:exemplar-tiny@{path}")


def test_missing_pretrained_weights_fail_fast_with_guidance(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(EncoderUnavailable) as info:
        load_encoder("open_clip:ViT-B-32@laion2b_s34b_b79k")
    message = info.value.message
    assert "HF_HUB_OFFLINE" in message and "local-dir" in message and "checkpoint" in message


def test_unknown_tag_and_arch_list_valid_choices() -> None:
    with pytest.raises(NotFound, match="valid ones: .*'laion2b_s34b_b79k'.*'random'"):
        load_encoder("open_clip:ViT-B-32@nope")
    with pytest.raises(NotFound, match="unknown open_clip architecture 'Nope'; valid ones include"):
        load_encoder("open_clip:Nope@random")


def test_registry_shares_one_instance_per_spec() -> None:
    registry = EncoderRegistry(device="cpu")
    assert registry("open_clip:exemplar-tiny") is registry("open_clip:exemplar-tiny")
    assert registry("precomputed:16").dim == 16


def test_cpu_device_requested_explicitly() -> None:
    encoder = OpenClipEncoder(parse_spec("open_clip:exemplar-tiny", default_random_archs=frozenset({"exemplar-tiny"})), device="cpu")
    assert encoder.device.type == "cpu"


def test_cuda_request_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(EncoderUnavailable, match="CUDA is not available"):
        load_encoder("open_clip:exemplar-tiny", device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_encodings_match_cpu(tiny: OpenClipEncoder) -> None:
    gpu = load_encoder("open_clip:exemplar-tiny", device="cuda")
    np.testing.assert_allclose(gpu.encode_images(IMAGES), tiny.encode_images(IMAGES), atol=1e-3)  # type: ignore[union-attr]
