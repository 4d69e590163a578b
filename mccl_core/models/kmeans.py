"""Spherical k-means in torch (k-means++ init), used by CPI to initialise class prototypes.

Why torch and spherical rather than ``sklearn.cluster.MiniBatchKMeans``:

* MCC compares tokens and prototypes by *cosine* similarity, so CPI should optimise the same
  geometry: assign by maximum cosine, centroid = re-normalised mean (spherical k-means). sklearn
  only offers Euclidean k-means whose centroids leave the unit sphere.
* The per-class problems are small (<= ``max_patches_per_class`` points, <= ``k_max`` centroids),
  so full-batch Lloyd iterations are a handful of matmuls; they run on whatever device the
  features are on (CUDA in the pipeline's CPI step) without a host round-trip of the features.
* Determinism: all random choices (k-means++ seeding, restarts) are drawn from a CPU
  ``torch.Generator`` seeded by the caller, so a given seed, input order and device give the same
  centroids. (CPU vs CUDA float rounding may still differ in the last bits.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class KMeansResult:
    """Centroids ``[k, D]`` (unit norm), labels ``[N]``, objective = mean cosine to own centroid."""

    centroids: Tensor
    labels: Tensor
    objective: float
    iterations: int


def kmeans_plusplus_init(points: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding on unit vectors (squared chord distance ``2 - 2 cos``).

    Falls back to uniform sampling among unchosen points when every remaining point coincides with
    a chosen centre (duplicates), so ``k <= N`` always yields ``k`` distinct indices.
    """
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means++: need 1 <= k <= number of points, got k={k}, N={n}")
    chosen = [int(torch.randint(n, (1,), generator=generator).item())]
    min_dist = (2.0 - 2.0 * (points @ points[chosen[0]])).clamp_min_(0.0)
    for _ in range(1, k):
        weights = min_dist.detach().to("cpu", torch.float64)
        weights[chosen] = 0.0
        if float(weights.sum()) <= 0.0:
            weights = torch.ones(n, dtype=torch.float64)
            weights[chosen] = 0.0
        idx = int(torch.multinomial(weights, 1, generator=generator).item())
        chosen.append(idx)
        min_dist = torch.minimum(min_dist, (2.0 - 2.0 * (points @ points[idx])).clamp_min_(0.0))
    return points[chosen].clone()


def spherical_kmeans(
    points: Tensor,
    k: int,
    *,
    iters: int = 50,
    restarts: int = 3,
    tol: float = 1e-6,
    seed: int = 0,
) -> KMeansResult:
    """Cluster L2-normalised ``points [N, D]`` into ``k`` unit centroids; best of ``restarts``.

    Empty clusters are re-seeded with the point worst served by its current centroid, so all
    ``k`` centroids are always data-backed.
    """
    if points.ndim != 2:
        raise ValueError(f"spherical_kmeans expects [N, D] points, got shape {tuple(points.shape)}")
    points = F.normalize(points.float(), dim=1)
    generator = torch.Generator().manual_seed(int(seed))
    best: KMeansResult | None = None
    for _ in range(restarts):
        result = _lloyd(points, kmeans_plusplus_init(points, k, generator), iters, tol)
        if best is None or result.objective > best.objective:
            best = result
    assert best is not None
    return best


def _lloyd(points: Tensor, centroids: Tensor, iters: int, tol: float) -> KMeansResult:
    k = centroids.shape[0]
    previous = -float("inf")
    labels = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    objective = previous
    iteration = 0
    for iteration in range(1, iters + 1):  # noqa: B007 - the count is reported after the loop
        sims = points @ centroids.T
        best_sim, labels = sims.max(dim=1)
        # one-hot matmul instead of index_add_/bincount: deterministic on CUDA as well
        membership = F.one_hot(labels, k).to(points.dtype)  # [N, k]
        sums = membership.T @ points
        counts = membership.sum(dim=0)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            # Re-seed each empty cluster with a distinct, currently worst-served point.
            worst = torch.argsort(best_sim)[: len(empty)]
            sums[empty] = points[worst]
            labels[worst] = torch.tensor(empty, device=labels.device)
            best_sim[worst] = 1.0
        centroids = F.normalize(sums, dim=1)
        objective = float(best_sim.mean())
        if not empty and abs(objective - previous) <= tol:
            break
        previous = objective
    sims = points @ centroids.T
    best_sim, labels = sims.max(dim=1)
    return KMeansResult(centroids, labels, float(best_sim.mean()), iteration)
