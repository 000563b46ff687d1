"""Collapse monitoring: cheap label-free signals that a run is losing its representations.

RankMe (Garrido et al., ICML 2023) is the exponential of the entropy of the normalised singular values of a
feature matrix: the effective number of dimensions the features use. A collapsing run shows it falling toward 1;
the std of features across the batch falling toward 0 says the same more crudely.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..metrics import knn_accuracy
from ..models.vit import inference_forward
from ..precision import Precision


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode for the duration of a check, the model's own mode restored afterwards (training resumes)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def rankme(features: torch.Tensor, eps: float = 1e-7) -> float:
    s = torch.linalg.svdvals(features.float())
    p = s / (s.sum() + eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def feature_std(features: torch.Tensor) -> float:
    """Mean over dimensions of the std across samples of L2-normalised features (1/sqrt(D) when healthy and
    isotropic, 0 when collapsed)."""
    f = torch.nn.functional.normalize(features.float(), dim=-1)
    return float(f.std(dim=0).mean())


@torch.no_grad()
def collapse_stats(target_encoder: torch.nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Pooled target-encoder features of a fixed batch -> {'target_std', 'rankme'}."""
    with eval_mode(target_encoder):
        feats = inference_forward(target_encoder, images).mean(dim=1)
    return {"target_std": feature_std(feats), "rankme": rankme(feats)}


@torch.no_grad()
def online_knn(target_encoder: torch.nn.Module, bank: torch.Tensor, bank_y: torch.Tensor, query: torch.Tensor,
               query_y: torch.Tensor, batch_size: int = 500) -> float:
    """k-NN accuracy (k=20, T=0.07, cosine, as ``ijepa eval``'s knn) of bank-centred pooled target features."""
    with eval_mode(target_encoder):
        feats = [torch.cat([inference_forward(target_encoder, x[i:i + batch_size]).mean(1).float().cpu()
                            for i in range(0, len(x), batch_size)]) for x in (bank, query)]
    # Early in training pooled features share one dominant direction (RankMe near 1): cosine similarity of raw
    # features then barely tells images apart, so both sets are centred on the bank's mean first.
    mean = feats[0].mean(0, keepdim=True)
    return knn_accuracy(feats[0] - mean, bank_y, feats[1] - mean, query_y, k=20, T=0.07)


class Monitor:
    """The run's collapse checks on ``images`` (a fixed batch) and, given ``knn_sets`` (bank, bank labels,
    queries, query labels), the online k-NN, in the run's ``precision``. Each step is checked once; asking again
    returns the same stats."""

    def __init__(self, target_encoder: torch.nn.Module, images: torch.Tensor, knn_sets: tuple | None,
                 precision: Precision):
        self.target, self.images, self.knn_sets = target_encoder, images, knn_sets
        self.precision = precision
        self.done: dict[int, dict[str, float]] = {}

    def __call__(self, step: int, knn: bool = True) -> dict[str, float]:
        """Stats at ``step``; the k-NN (3,000 forward passes, ~10x the rest) only when ``knn``: the loop asks for
        it at epoch ends and the end of the run, not at the every-N-steps checks."""
        if step not in self.done:
            with self.precision.autocast():
                stats = collapse_stats(self.target, self.images)
                if knn and self.knn_sets is not None:
                    stats["knn"] = online_knn(self.target, *self.knn_sets)
            self.done[step] = stats
        return self.done[step]
