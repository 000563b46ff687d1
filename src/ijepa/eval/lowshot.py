"""Low-shot evaluation: probes trained on N examples (or a fraction) per class, averaged over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..metrics import knn_accuracy
from .linear import linear_probe

__all__ = ["lowshot_eval", "parse_shot", "sample_per_class"]


def parse_shot(shot: int | float | str) -> int | float:
    """``5`` -> 5 examples per class; ``0.01`` or ``"1%"`` -> fraction 0.01 of each class."""
    if isinstance(shot, str):
        s = shot.strip()
        if s.endswith("%"):
            return float(s[:-1]) / 100.0
        return float(s) if any(ch in s for ch in ".eE") else int(s)
    if isinstance(shot, bool):
        raise TypeError("shot must be a count, a fraction or a percentage string")
    return shot


def sample_per_class(labels: torch.Tensor | np.ndarray, n_per_class: int | float | str, seed: int = 0
                     ) -> torch.Tensor:
    """Indices (sorted, int64) of a seeded per-class sample without replacement.

    ``n_per_class``: an int (exactly that many from every class; a class with fewer is an error, since a
    silently smaller sample would not be the N-shot protocol), or a fraction in (0, 1) / a ``"1%"`` string
    (``round(fraction * class size)`` per class, at least one).
    """
    y = torch.as_tensor(labels).long().reshape(-1).cpu()
    n = parse_shot(n_per_class)
    is_fraction = isinstance(n, float)
    if is_fraction and not 0.0 < n <= 1.0:
        raise ValueError(f"fraction per class must be in (0, 1], got {n}")
    if not is_fraction and n < 1:
        raise ValueError(f"examples per class must be >= 1, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    picked = []
    for c in torch.unique(y).tolist():  # sorted classes: the same seed gives the same draw order
        idx = torch.nonzero(y == c).flatten()
        k = max(1, math.floor(n * len(idx) + 0.5)) if is_fraction else int(n)
        if k > len(idx):
            raise ValueError(f"class {c} has {len(idx)} examples, fewer than the {k} requested")
        picked.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.sort(torch.cat(picked)).values


def lowshot_eval(train_X: torch.Tensor, train_y: torch.Tensor, test_X: torch.Tensor, test_y: torch.Tensor,
                 shots: Sequence[int | float | str] = (1, 5, 10, "1%"), seeds: Sequence[int] = (0, 1, 2),
                 method: str = "linear", **kwargs: Any) -> dict[int | float | str, tuple[float, float]]:
    """Accuracy of a probe fitted on a per-class sample of the training set and tested on the whole test set,
    over several seeds.

    Args:
        train_X: training features (N, D).
        train_y: training labels (N,).
        test_X: test features.
        test_y: test labels.
        shots: images per class (``1``, ``5``, ...) or a share of the training set (``"1%"``, ``0.01``).
        seeds: one sample (and fit) per seed.
        method: ``"linear"`` (``ijepa.eval.linear_probe``; its L2 strength is chosen on a stratified held-out
            part of the sample when there are at least two examples per class, else the strongest in the sweep
            is used) or ``"knn"`` (``ijepa.metrics.knn_accuracy``).
        **kwargs: go to that function.

    Returns:
        dict: ``{shot: (mean accuracy, std)}``: the std is the sample standard deviation across seeds (0 for a single
        seed); accuracies are fractions.
    """

    if method not in ("linear", "knn"):
        raise ValueError(f"method must be 'linear' or 'knn', got {method!r}")
    train_X, test_X = torch.as_tensor(train_X), torch.as_tensor(test_X)
    train_y = torch.as_tensor(train_y).long().reshape(-1)
    test_y = torch.as_tensor(test_y).long().reshape(-1)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    results: dict[int | float | str, tuple[float, float]] = {}
    for shot in shots:
        accs = []
        for seed in seeds:
            idx = sample_per_class(train_y, shot, seed)
            if method == "linear":
                kw = {"seed": seed, "num_classes": num_classes, **kwargs}
                acc = linear_probe(train_X[idx], train_y[idx], test_X, test_y, **kw)["accuracy"]
            else:
                acc = knn_accuracy(train_X[idx], train_y[idx], test_X, test_y,
                                   **{"num_classes": num_classes, **kwargs})
            accs.append(acc)
        a = torch.tensor(accs, dtype=torch.float64)
        results[shot] = (a.mean().item(), a.std().item() if len(a) > 1 else 0.0)
    return results
