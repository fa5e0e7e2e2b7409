"""``diversity``: maximal marginal relevance (MMR) over a strategy's first candidates, and removal of
near-duplicates.

MMR (Carbonell and Goldstein, 1998) re-ranks greedily: the next item is the one with the highest
``lambda * relevance - (1 - lambda) * max similarity to the items already taken``, where relevance
is the candidate's score (cosine to the query; 0 for a candidate without one, such as ``random``'s)
and similarity is the cosine between the items' vectors in the space the strategy ranked in.
``lambda`` 1 orders by score alone (the order of every built-in strategy that ranks by similarity;
``random``'s candidates, all scored 0, keep theirs), lower values trade relevance for variety. A candidate whose
similarity to an item already taken reaches ``dedup`` is dropped as a near-duplicate (it can come
back at the end only if nothing else is left: never, here; it is simply not shown).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from exemplar.retrieval.serving.snapshot import Snapshot
from exemplar.retrieval.serving.stages.base import StageContext, register_stage
from exemplar.retrieval.serving.strategies.base import Params, Pick

__all__ = ["DiversityParams", "DiversityStage", "mmr_order"]

MAX_DEPTH = 1024


class DiversityParams(Params):
    lam: float = Field(0.5, alias="lambda", ge=0.0, le=1.0, description="MMR's weight of relevance (the score, "
                       "cosine to the query) against novelty: 1 orders by score alone, 0 takes the most different items.")
    depth: int = Field(32, ge=1, le=MAX_DEPTH, description="Candidates re-ranked: the strategy's first 'depth' "
                       "(of each class, where quotas apply), or as many as the window reaches if that is more.")
    dedup: float | None = Field(None, gt=-1.0, le=1.0, description="Drop a candidate whose cosine to an item "
                                "already taken is at least this (near-duplicates); null: keep all.")


def mmr_order(vectors: np.ndarray, relevance: np.ndarray, diversity: DiversityParams) -> list[int]:
    """Positions of the candidates in MMR order, near-duplicates left out. ``vectors``: the
    candidates' unit vectors (rows), in the strategy's order; ``relevance``: their scores. Ties go to
    the earlier candidate, so ``lambda`` 1 without ``dedup`` is the order by score, the strategy's
    own where it ranks by score."""
    n = len(relevance)
    if n == 0:
        return []
    sims = vectors @ vectors.T
    closest = np.full(n, -np.inf)  # each candidate's highest similarity to the items taken
    left = np.ones(n, bool)
    taken: list[int] = []
    for _ in range(n):
        redundancy = np.where(np.isfinite(closest), closest, 0.0)
        gain = diversity.lam * relevance - (1.0 - diversity.lam) * redundancy
        if diversity.dedup is not None:
            left &= ~(closest >= diversity.dedup)
        if not left.any():
            break
        best = int(np.flatnonzero(left)[np.argmax(gain[left])])
        taken.append(best)
        left[best] = False
        closest = np.maximum(closest, sims[best])
    return taken


class DiversityStage:
    name = "diversity"
    description = "Maximal marginal relevance over the strategy's first candidates, and near-duplicate removal."
    position = 20
    Params = DiversityParams

    def depth(self, params: DiversityParams) -> int:
        return params.depth

    def apply(self, space: Snapshot, candidates: list[Pick], params: DiversityParams,
              context: StageContext | None = None) -> list[Pick]:
        if not candidates:
            return candidates
        rows = np.asarray([p.row for p in candidates], np.int64)
        order = np.argsort(rows, kind="stable")  # memory-mapped vectors read in row order
        vectors = np.empty((len(rows), space.dim), np.float32)
        vectors[order] = np.asarray(space.vectors[rows[order]], np.float32)
        relevance = np.asarray([p.score if p.score is not None else 0.0 for p in candidates], np.float64)
        return [candidates[i] for i in mmr_order(vectors.astype(np.float64), relevance, params)]


register_stage(DiversityStage)
