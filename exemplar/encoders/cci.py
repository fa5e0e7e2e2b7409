"""CCI adapter training: Class-conditioned Contrastive Invariance.

A projection head (linear, or a two-layer MLP) trained on a pool version's frozen embeddings so
that items of one class sit together whatever their domain, and classes stay apart:

- a supervised contrastive loss (SupCon, Khosla et al. 2020) over L2-normalised head outputs,
  whose positives are the other items of the anchor's class in the batch; positives from another
  domain than the anchor's weigh ``cross_domain_weight`` times as much (or are the only positives,
  with ``cross_domain_only``), negatives are the other classes;
- plus a term that removes domain information: ``class_mean`` pulls, within each class, the mean
  output of every domain onto the class mean (needs no domain at query time), or ``adversarial``
  trains a domain classifier through a gradient-reversal layer (Ganin & Lempitsky 2015).

Training is seeded and deterministic on a given device; early stopping watches a held-out split.
The result is plain numpy weights, applied without torch by ``exemplar.retrieval.adapt.adapters``.
See docs/methods.md for the exact definition.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

# CCIConfig lives in a torch-free module so that requests are validated without importing torch.
from exemplar.encoders.cci_config import CCIConfig
from exemplar.encoders.devices import resolve_device
from exemplar.errors import InvalidRequest

__all__ = ["CCIConfig", "CCIResult", "build_head", "train_cci"]

@dataclasses.dataclass(frozen=True)
class CCIResult:
    """Trained weights as numpy ``(W, b)`` pairs (ReLU between layers), ``y = x @ W + b``."""

    layers: list[tuple[np.ndarray, np.ndarray]]
    config: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float
    train_items: int
    val_items: int


def build_head(in_dim: int, config: CCIConfig) -> nn.Sequential:
    out_dim = config.out_dim or in_dim
    if config.head == "linear":
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    hidden = config.hidden_dim or in_dim
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN401
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN401
        return -grad


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor, config: CCIConfig) -> torch.Tensor:
    """Weighted supervised contrastive loss over unit vectors ``z``; anchors without positives are skipped."""
    n = z.shape[0]
    sim = z @ z.T / config.temperature
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    same_class = (labels[:, None] == labels[None, :]) & ~eye
    cross = domains[:, None] != domains[None, :]
    if config.cross_domain_only:
        weights = (same_class & cross).float()
    else:
        weights = same_class.float() * torch.where(cross, config.cross_domain_weight, 1.0)
    total = weights.sum(dim=1)
    anchors = total > 0
    if not anchors.any():
        return z.sum() * 0.0
    per_anchor = -(weights * log_prob.masked_fill(eye, 0.0)).sum(dim=1)[anchors] / total[anchors]
    return per_anchor.mean()


def class_mean_loss(z: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
    """Mean squared distance, within each class, of every domain's mean output from the class mean."""
    terms = []
    for c in torch.unique(labels):
        in_class = labels == c
        present = torch.unique(domains[in_class])
        if len(present) < 2:
            continue
        means = torch.stack([z[in_class & (domains == d)].mean(dim=0) for d in present])
        terms.append(((means - means.mean(dim=0, keepdim=True)) ** 2).sum(dim=1).mean())
    return torch.stack(terms).mean() if terms else z.sum() * 0.0


def _split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified by label: about ``fraction`` of each class (at least one item of classes of 2+) held out."""
    train, val = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(len(rows) - 1, max(1, int(round(len(rows) * fraction)))) if len(rows) > 1 else 0
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def train_cci(
    vectors: np.ndarray,
    labels: np.ndarray,
    domains: np.ndarray | None,
    config: CCIConfig = CCIConfig(),
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CCIResult:
    """Train a CCI head on ``vectors`` (n, d) with integer ``labels`` (-1: unlabelled, ignored) and
    integer ``domains`` (None: one domain)."""
    config.validate()
    started = time.monotonic()
    labels = np.asarray(labels)
    domains = np.zeros(len(labels), np.int64) if domains is None else np.asarray(domains)
    keep = labels >= 0
    X, y, g = np.asarray(vectors, np.float32)[keep], labels[keep].astype(np.int64), domains[keep].astype(np.int64)
    if len(np.unique(y)) < 2 or len(y) < 8:
        raise InvalidRequest("a CCI adapter needs at least 8 labelled items of at least 2 classes", param="pool")
    rng = np.random.default_rng(config.seed)
    train_rows, val_rows = _split(y, config.val_fraction, rng)
    device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        head = build_head(X.shape[1], config).to(device)
        n_domains = int(g.max()) + 1
        critic = nn.Linear(head[-1].out_features, n_domains).to(device) if config.domain_loss == "adversarial" else None
    params = list(head.parameters()) + (list(critic.parameters()) if critic is not None else [])
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    Xt = torch.from_numpy(X).to(device)
    yt = torch.from_numpy(y).to(device)
    gt = torch.from_numpy(g).to(device)

    def loss_of(rows: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        z = nn.functional.normalize(head(Xt[rows]), dim=1)
        contrastive = supcon_loss(z, yt[rows], gt[rows], config)
        if config.domain_loss == "class_mean":
            domain = class_mean_loss(z, yt[rows], gt[rows])
        elif critic is not None:
            domain = nn.functional.cross_entropy(critic(_GradReverse.apply(z)), gt[rows])
        else:
            domain = z.sum() * 0.0
        return contrastive + config.domain_weight * domain, float(contrastive.detach()), float(domain.detach())

    val_cap = torch.from_numpy(rng.permutation(val_rows)[: max(config.batch_size, 2048)]).to(device)
    best = (math.inf, -1, [p.detach().clone() for p in head.parameters()])
    history: list[dict[str, float]] = []
    batch_size = min(config.batch_size, len(train_rows))
    steps = 0
    for epoch in range(config.epochs):
        if steps >= config.max_steps or (should_stop is not None and should_stop()):
            break
        head.train()
        order = rng.permutation(train_rows)
        totals = []
        # Drop the ragged tail: a tiny last batch has few positives and only adds noise.
        for start in range(0, max(1, len(order) - batch_size + 1), batch_size):
            if steps >= config.max_steps:
                break
            steps += 1
            rows = torch.from_numpy(order[start : start + batch_size]).to(device)
            loss, _, _ = loss_of(rows)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            totals.append(float(loss.detach()))
        head.eval()
        with torch.no_grad():
            val_loss, val_con, val_dom = loss_of(val_cap) if len(val_rows) else (torch.tensor(float("nan")), 0.0, 0.0)
        record = {"epoch": epoch, "train_loss": float(np.mean(totals)), "val_loss": float(val_loss),
                  "val_contrastive": val_con, "val_domain": val_dom}
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record)
        score = float(val_loss) if len(val_rows) else record["train_loss"]
        if score < best[0] - 1e-6:
            best = (score, epoch, [p.detach().clone() for p in head.parameters()])
        elif epoch - best[1] >= config.patience:
            break
    with torch.no_grad():
        for param, saved in zip(head.parameters(), best[2]):
            param.copy_(saved)
    linears = [m for m in head if isinstance(m, nn.Linear)]
    layers = [(m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy()) for m in linears]
    return CCIResult(
        layers=layers,
        config=dataclasses.asdict(config),
        history=history,
        best_epoch=best[1],
        seconds=round(time.monotonic() - started, 3),
        train_items=len(train_rows),
        val_items=len(val_rows),
    )
