"""CCI adapter training: determinism, what it learns, its parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exemplar.encoders.cci import CCIConfig, build_head, class_mean_loss, supcon_loss, train_cci
from exemplar.errors import InvalidRequest
from exemplar.samples import domain_dominant_embeddings


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    V, labels, domains = domain_dominant_embeddings(per_class_per_domain=40, dim=32, seed=3)
    return V, np.unique(labels, return_inverse=True)[1], np.unique(domains, return_inverse=True)[1]


def apply(layers: list[tuple[np.ndarray, np.ndarray]], X: np.ndarray) -> np.ndarray:
    for i, (W, b) in enumerate(layers):
        X = X @ W + b
        if i < len(layers) - 1:
            X = np.maximum(X, 0)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def precision_at_8(P: np.ndarray, yp: np.ndarray, Q: np.ndarray, yq: np.ndarray) -> float:
    I = np.argsort(-(Q @ P.T), axis=1)[:, :8]
    return float((yp[I] == yq[:, None]).mean())


def test_training_is_deterministic_for_a_seed(data) -> None:
    V, y, g = data
    a = train_cci(V, y, g, CCIConfig(epochs=5, seed=1))
    b = train_cci(V, y, g, CCIConfig(epochs=5, seed=1))
    c = train_cci(V, y, g, CCIConfig(epochs=5, seed=2))
    for (Wa, ba), (Wb, bb) in zip(a.layers, b.layers):
        np.testing.assert_array_equal(Wa, Wb)
        np.testing.assert_array_equal(ba, bb)
    assert a.history == b.history
    assert not np.array_equal(a.layers[0][0], c.layers[0][0])


def test_adapter_brings_same_class_items_of_an_unseen_domain_together(data) -> None:
    V, y, g = data
    train, test = g != 3, g == 3
    result = train_cci(V[train], y[train], g[train], CCIConfig())
    raw = precision_at_8(V[train], y[train], V[test], y[test])
    adapted = precision_at_8(apply(result.layers, V[train]), y[train], apply(result.layers, V[test]), y[test])
    assert adapted > raw + 0.2, (raw, adapted)
    assert 0 <= result.best_epoch < len(result.history) and result.val_items > 0


@pytest.mark.parametrize(("head", "n_layers"), [("linear", 1), ("mlp", 2)])
def test_heads_and_widths(data, head: str, n_layers: int) -> None:
    V, y, g = data
    result = train_cci(V, y, g, CCIConfig(head=head, out_dim=16, hidden_dim=24, epochs=2))  # type: ignore[arg-type]
    assert len(result.layers) == n_layers
    assert result.layers[0][0].shape[0] == 32 and result.layers[-1][0].shape[1] == 16
    if head == "mlp":
        assert result.layers[0][0].shape[1] == 24


@pytest.mark.parametrize("domain_loss", ["none", "class_mean", "adversarial"])
def test_each_domain_term_trains(data, domain_loss: str) -> None:
    V, y, g = data
    result = train_cci(V, y, g, CCIConfig(domain_loss=domain_loss, epochs=3))  # type: ignore[arg-type]
    assert all(np.isfinite(h["val_loss"]) for h in result.history)


def test_max_steps_and_should_stop_bound_the_work(data) -> None:
    V, y, g = data
    assert len(train_cci(V, y, g, CCIConfig(batch_size=64, max_steps=3)).history) == 1
    calls = []
    stopped = train_cci(V, y, g, CCIConfig(epochs=50), should_stop=lambda: len(calls) >= 2,
                        on_epoch=lambda epoch, record: calls.append(epoch))
    assert len(stopped.history) == 2


def test_cross_domain_positives_weigh_more() -> None:
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.9]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    same = torch.tensor([0, 0, 0, 0])
    cross = torch.tensor([0, 1, 0, 1])
    base = CCIConfig(cross_domain_weight=1.0)
    assert float(supcon_loss(z, labels, same, base)) == pytest.approx(float(supcon_loss(z, labels, cross, base)))
    only = CCIConfig(cross_domain_only=True)
    assert float(supcon_loss(z, labels, same, only)) == 0.0, "no cross-domain positive: no anchor counts"


def test_class_mean_loss_is_zero_when_domains_agree() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    domains = torch.tensor([0, 1, 0, 1])
    assert float(class_mean_loss(z, labels, domains)) == 0.0
    shifted = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    assert float(class_mean_loss(shifted, labels, domains)) > 0.1


@pytest.mark.parametrize(
    ("field", "value"),
    [("head", "cnn"), ("temperature", 0.0), ("epochs", 0), ("batch_size", 2), ("val_fraction", 0.7),
     ("domain_loss", "mmd"), ("cross_domain_weight", 0.0), ("max_steps", 0)],
)
def test_invalid_parameters_are_refused(data, field: str, value: object) -> None:
    V, y, g = data
    with pytest.raises(InvalidRequest) as info:
        train_cci(V, y, g, CCIConfig(**{field: value}))  # type: ignore[arg-type]
    assert info.value.param == field


def test_needs_two_labelled_classes() -> None:
    V = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    with pytest.raises(InvalidRequest, match="at least 2 classes"):
        train_cci(V, np.zeros(20, int), None)
    labels = np.full(20, -1)
    labels[:3] = [0, 1, 0]
    with pytest.raises(InvalidRequest):
        train_cci(V, labels, None)


def test_head_shapes() -> None:
    assert [m.out_features for m in build_head(8, CCIConfig(head="mlp")) if isinstance(m, torch.nn.Linear)] == [8, 8]
    assert [m.out_features for m in build_head(8, CCIConfig()) if isinstance(m, torch.nn.Linear)] == [8]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_trains_on_cuda(data) -> None:
    V, y, g = data
    result = train_cci(V, y, g, CCIConfig(epochs=3, device="cuda"))
    assert result.layers[0][0].shape == (32, 32)
