"""Collapse monitoring: cheap label-free signals that a run is losing its representations.

RankMe (Garrido et al., ICML 2023) is the exponential of the entropy of the normalised singular values of a
feature matrix: the effective number of dimensions the features use. A collapsing run shows it falling toward 1;
the std of features across the batch falling toward 0 says the same more crudely.
"""

from __future__ import annotations

import torch


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
    was_training = target_encoder.training
    target_encoder.eval()
    feats = target_encoder(images).mean(dim=1)
    target_encoder.train(was_training)
    return {"target_std": feature_std(feats), "rankme": rankme(feats)}


@torch.no_grad()
def online_knn(target_encoder: torch.nn.Module, bank: torch.Tensor, bank_y: torch.Tensor, query: torch.Tensor,
               query_y: torch.Tensor, batch_size: int = 500) -> float:
    """k-NN accuracy (k=20, T=0.07, cosine, as ``ijepa eval``'s knn) of bank-centred pooled target features."""
    from ..eval.knn import knn_accuracy

    was_training = target_encoder.training
    target_encoder.eval()
    feats = [torch.cat([target_encoder(x[i:i + batch_size]).mean(1).float().cpu()
                        for i in range(0, len(x), batch_size)]) for x in (bank, query)]
    target_encoder.train(was_training)
    # Early in training pooled features share one dominant direction (RankMe near 1): cosine similarity of raw
    # features then barely tells images apart, so both sets are centred on the bank's mean first.
    mean = feats[0].mean(0, keepdim=True)
    return knn_accuracy(feats[0] - mean, bank_y, feats[1] - mean, query_y, k=20, T=0.07)
