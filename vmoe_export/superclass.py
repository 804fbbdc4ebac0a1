"""Super-classes for router supervision, from the confusion graph of a dense baseline.

The paper groups classes the dense model confuses with each other, so that each expert
specialises on a set of look-alike classes. We build a symmetric affinity from the
row-normalised confusion matrix (off-diagonal only) and cut it into E groups with
normalised spectral clustering (Ng, Jordan & Weiss, 2001) and a seeded k-means.
"""

from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    idx = labels.long() * num_classes + predictions.long()
    counts = torch.bincount(idx, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes).numpy()


def confusion_affinity(confusion: np.ndarray) -> np.ndarray:
    """Symmetric class-to-class affinity: how often a and b are mistaken for each other."""
    conf = confusion.astype(np.float64)
    rates = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1.0)
    affinity = (rates + rates.T) / 2.0
    np.fill_diagonal(affinity, 0.0)
    # A floor keeps the graph connected so classes never confused still get a cluster.
    return affinity + 1e-6 * (1.0 - np.eye(len(affinity)))


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iters: int = 100) -> tuple[np.ndarray, float]:
    # k-means++ seeding, then Lloyd iterations.
    centers = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = np.min([((points - c) ** 2).sum(1) for c in centers], axis=0)
        probs = d2 / d2.sum() if d2.sum() > 0 else np.full(len(points), 1 / len(points))
        centers.append(points[rng.choice(len(points), p=probs)])
    centers = np.stack(centers)
    for _ in range(iters):
        assign = ((points[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([points[assign == j].mean(0) if (assign == j).any() else centers[j] for j in range(k)])
        if np.allclose(new, centers):
            break
        centers = new
    inertia = float(((points - centers[assign]) ** 2).sum())
    return assign, inertia


def spectral_clusters(affinity: np.ndarray, k: int, seed: int = 0, restarts: int = 20) -> np.ndarray:
    """Cluster the nodes of a weighted graph into k non-empty groups; returns a label per node."""
    n = len(affinity)
    if not 1 <= k <= n:
        raise ValueError(f"cannot cluster {n} classes into {k} super-classes (need 1 <= E <= number of classes)")
    if k == n:
        return np.arange(n)
    degree = affinity.sum(1)
    d_inv_sqrt = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    normalized = d_inv_sqrt[:, None] * affinity * d_inv_sqrt[None, :]
    _, vecs = np.linalg.eigh(normalized)  # ascending; the top-k eigenvectors span the clusters
    embedding = vecs[:, -k:]
    embedding = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(restarts):
        assign, inertia = _kmeans(embedding, k, rng)
        if len(np.unique(assign)) == k and inertia < best_inertia:
            best, best_inertia = assign, inertia
    if best is None:
        raise RuntimeError(f"spectral clustering found no split into {k} non-empty super-classes")
    return _canonical(best)


def _canonical(assign: np.ndarray) -> np.ndarray:
    """Renumber clusters in order of their first class, so results do not depend on k-means ids."""
    order = {}
    for a in assign:
        order.setdefault(int(a), len(order))
    return np.array([order[int(a)] for a in assign])


def superclasses_from_confusion(confusion: np.ndarray, num_superclasses: int, seed: int = 0) -> list[int]:
    return [int(c) for c in spectral_clusters(confusion_affinity(confusion), num_superclasses, seed)]


def describe(superclass_of: list[int], class_names: tuple[str, ...] | list[str]) -> list[list[str]]:
    groups: list[list[str]] = [[] for _ in range(max(superclass_of) + 1)]
    for cls, sc in enumerate(superclass_of):
        groups[sc].append(class_names[cls])
    return groups
