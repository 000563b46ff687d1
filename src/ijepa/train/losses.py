"""The pretraining loss: the paper's prediction loss, and the extra terms
:class:`~ijepa.config_sections.LossConfig` can add.

The paper's loss is :func:`prediction_loss` alone. Each extra term is ours, not the paper's: a small module with a
``name``, a ``weight`` and the ``config_key`` that sets it, applied to the batch's mean-pooled context features
(B, D) and returning its weighted value. :func:`extra_terms` builds the configured ones (none when every weight is
0); :class:`~ijepa.train.ijepa.IJEPA` adds them to the prediction loss one after another, in the order built.
VICReg's variance and covariance are two terms, not one, so that adding them one at a time reproduces the sum
``loss + var_weight * var + cov_weight * cov`` bit for bit (float addition does not associate).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config_sections import LossConfig


def prediction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's loss: mean smooth-L1 between predicted and target features of the target blocks, in fp32.

    ``target`` is the target encoder's output under the per-token layer norm
    (:func:`~ijepa.models.targets.normalize_targets`), gathered at the target blocks. The paper writes an L2
    distance; its reference code trains with smooth-L1 (beta 1), as here."""
    return F.smooth_l1_loss(pred.float(), target.float())


def vicreg_variance(z: torch.Tensor) -> torch.Tensor:
    """VICReg's variance term (Bardes et al. 2022) of features z (B, D): the mean hinge on each dimension's std
    below 1, which keeps the batch from collapsing to a point."""
    z = z.float()
    std = torch.sqrt(z.var(dim=0) + 1e-4)
    return F.relu(1.0 - std).mean()


def vicreg_covariance(z: torch.Tensor) -> torch.Tensor:
    """VICReg's covariance term of features z (B, D): the squared off-diagonal covariances over D, which keeps the
    dimensions from carrying the same information."""
    z = z.float()
    zc = z - z.mean(dim=0)
    cov = (zc.T @ zc) / max(z.shape[0] - 1, 1)
    off = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
    return off / z.shape[1]


def sigreg(z: torch.Tensor, num_slices: int = 256, t_max: float = 3.0, knots: int = 17) -> torch.Tensor:
    """SIGReg (LeJEPA, Balestriero & LeCun 2025): how far features z (B, D) are from an isotropic standard Gaussian.
    z is projected on ``num_slices`` random unit directions; on each, the Epps-Pulley statistic compares the
    empirical characteristic function with exp(-t^2/2) over t in [-t_max, t_max] (Gaussian-weighted, trapezoid
    rule), scaled by B as a test statistic; the result is the mean over directions. The directions come from the
    global RNG, so a seeded run draws the same ones."""
    z = z.float()
    dirs = torch.randn(z.shape[1], num_slices, device=z.device)
    s = z @ (dirs / dirs.norm(dim=0, keepdim=True))                     # (B, M)
    t = torch.linspace(0.0, t_max, knots, device=z.device)              # the integrand is even in t
    ts = s.unsqueeze(-1) * t                                            # (B, M, T)
    gauss = torch.exp(-0.5 * t * t)
    err = (torch.cos(ts).mean(0) - gauss).square() + torch.sin(ts).mean(0).square()  # (M, T)
    w = torch.full_like(t, t_max / (knots - 1))
    w[0] = w[-1] = w[0] / 2
    return z.shape[0] * 2.0 * (err * gauss * w).sum(-1).mean()


class VICRegVarianceTerm(nn.Module):
    """``weight`` x :func:`vicreg_variance` of the pooled context features."""

    name = "VICReg variance"
    config_key = "loss.var_weight"

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.weight * vicreg_variance(pooled)

    def describe(self) -> str:
        return f"{self.name} {self.weight:g}"

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


class VICRegCovarianceTerm(nn.Module):
    """``weight`` x :func:`vicreg_covariance` of the pooled context features."""

    name = "VICReg covariance"
    config_key = "loss.cov_weight"

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.weight * vicreg_covariance(pooled)

    def describe(self) -> str:
        return f"{self.name} {self.weight:g}"

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


class SIGRegTerm(nn.Module):
    """``weight`` x :func:`sigreg` of the pooled context features, on ``slices`` random directions per call."""

    name = "SIGReg"
    config_key = "loss.sigreg_weight"

    def __init__(self, weight: float, slices: int):
        super().__init__()
        self.weight, self.slices = weight, slices

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.weight * sigreg(pooled, self.slices)

    def describe(self) -> str:
        return f"{self.name} {self.weight:g} on {self.slices} random directions"

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, slices={self.slices}"


def extra_terms(cfg: LossConfig) -> nn.ModuleList:
    """The extra terms ``cfg`` turns on, in the order they are added to the loss; empty for the paper's loss."""
    terms = (VICRegVarianceTerm(cfg.var_weight), VICRegCovarianceTerm(cfg.cov_weight),
             SIGRegTerm(cfg.sigreg_weight, cfg.sigreg_slices))
    return nn.ModuleList(t for t in terms if t.weight)


def describe_loss(cfg: LossConfig) -> str:
    """One line naming the loss ``cfg`` trains, and which of it is the paper's."""
    line = "loss: smooth-L1 on layer-normed target blocks (the paper's)"
    terms = extra_terms(cfg)
    if not terms:
        return line
    off = " ".join(f"{t.config_key}=0" for t in terms)
    return f"{line} + {' + '.join(t.describe() for t in terms)} (ours, not the paper's; {off} trains the paper's loss)"
