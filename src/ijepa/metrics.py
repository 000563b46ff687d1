"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol): a metric both training's
online monitor and ``ijepa eval`` use, so it sits below both.

Cosine similarity between L2-normalised features; each of the k nearest training examples votes for its
class with weight ``exp(sim / T)``. No training and no hyper-parameter fit, so it is a cheap monitor of
representation quality.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["knn_accuracy", "knn_classify"]


def knn_classify(train_X: torch.Tensor, train_y: torch.Tensor, test_X: torch.Tensor, k: int = 20,
                 T: float = 0.07, num_classes: int | None = None, batch_size: int = 1024) -> torch.Tensor:
    """Predicted class ids (len(test_X),) by temperature-weighted k-NN votes.

    Test examples are processed ``batch_size`` at a time, so memory is bounded by a
    ``batch_size x len(train_X)`` similarity block. Runs on ``train_X``'s device; returns CPU int64.
    ``k`` larger than the training set uses every training example. Ties between classes go to the
    lower class id.
    """
    train_X = torch.as_tensor(train_X)
    dev = train_X.device
    train_y = torch.as_tensor(train_y).long().reshape(-1).to(dev)
    if len(train_X) != len(train_y):
        raise ValueError(f"{len(train_X)} training rows but {len(train_y)} labels")
    if len(train_X) == 0:
        raise ValueError("empty training set")
    C = int(num_classes) if num_classes is not None else int(train_y.max()) + 1
    k = max(1, min(int(k), len(train_X)))
    bank = F.normalize(train_X.reshape(len(train_X), -1).float(), dim=1)
    test_X = torch.as_tensor(test_X)
    preds = []
    for i in range(0, len(test_X), batch_size):
        q = F.normalize(test_X[i:i + batch_size].reshape(-1, bank.shape[1]).to(dev).float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        # subtracting the row max before exp keeps exp((sim - max) / T) in range for small T; the common
        # factor does not change which class wins
        w = ((sim - sim[:, :1]) / T).exp()
        votes = torch.zeros(len(q), C, device=dev, dtype=w.dtype).scatter_add_(1, train_y[idx], w)
        preds.append(votes.argmax(dim=1).cpu())
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def knn_accuracy(train_X: torch.Tensor, train_y: torch.Tensor, test_X: torch.Tensor, test_y: torch.Tensor,
                 **kwargs: Any) -> float:
    """Top-1 accuracy of ``knn_classify``, the temperature-weighted k-NN vote.

    Args:
        train_X: the bank's features (N, D).
        train_y: the bank's labels (N,).
        test_X: the queries' features.
        test_y: the queries' labels.
        **kwargs: go to ``knn_classify`` (``k``, default 20; ``T``, default 0.07; ``num_classes``,
            ``batch_size``).

    Returns:
        The accuracy, as a fraction.
    """
    pred = knn_classify(train_X, train_y, test_X, **kwargs)
    return (pred == torch.as_tensor(test_y).long().reshape(-1).cpu()).float().mean().item()
