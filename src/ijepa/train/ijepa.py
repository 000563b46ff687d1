"""The I-JEPA model: context encoder, predictor and target encoder (the context encoder's EMA), and the loss.

One step, as data flows: images and (context ids, target ids) -> target encoder on all patches -> layer norm ->
gather the target blocks -> context encoder on the context patches only -> predictor (context tokens + mask
tokens at the target positions) -> smooth-L1. ``forward`` is that loss, so ``DDP(model)`` wraps the whole step's
forward (the target encoder's parameters take no gradient, so DDP leaves them alone) and ``model.encoder``,
``model.predictor``, ``model.target_encoder`` stay the plain modules a checkpoint saves (``compiled()`` gives a
compiled view over the same parameters).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function

from ..config import Config, LossConfig, OptimizationConfig
from ..models import apply_masks, build_encoder, build_predictor
from ..models.targets import normalize_targets
from ..optim import param_groups
from ..spec import InputSpec


def vicreg_terms(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance hinge and off-diagonal covariance of pooled features z (B, D), as in VICReg."""
    z = z.float()
    std = torch.sqrt(z.var(dim=0) + 1e-4)
    var = F.relu(1.0 - std).mean()
    zc = z - z.mean(dim=0)
    cov = (zc.T @ zc) / max(z.shape[0] - 1, 1)
    off = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
    return var, off / z.shape[1]


def sigreg(z: torch.Tensor, num_slices: int = 256, t_max: float = 3.0, knots: int = 17) -> torch.Tensor:
    """SIGReg (LeJEPA, Balestriero & LeCun 2025): how far features z (B, D) are from an isotropic standard Gaussian.
    z is projected on ``num_slices`` random unit directions; on each, the Epps-Pulley statistic compares the
    empirical characteristic function with exp(-t^2/2) over t in [-t_max, t_max] (Gaussian-weighted, trapezoid
    rule), scaled by B as a test statistic; the result is the mean over directions."""
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


def make_target(encoder: nn.Module) -> nn.Module:
    """A frozen copy of ``encoder`` that never drops paths: the EMA target."""
    target = copy.deepcopy(encoder)
    for p in target.parameters():
        p.requires_grad_(False)
    for blk in target.blocks:
        blk.drop_path.p = 0.0
    return target


class IJEPA(nn.Module):
    """Context encoder, predictor and target encoder; ``forward(images, masks_enc, masks_pred)`` is the loss.

    ``reg`` adds the optional terms of :class:`~ijepa.config.LossConfig` (ours; all zero is the paper's loss)."""

    def __init__(self, encoder: nn.Module, predictor: nn.Module, target_encoder: nn.Module | None = None,
                 reg: LossConfig | None = None):
        super().__init__()
        self.encoder, self.predictor = encoder, predictor
        self.target_encoder = target_encoder if target_encoder is not None else make_target(encoder)
        self.reg = reg or LossConfig()

    @classmethod
    def from_config(cls, cfg: Config, input_spec: InputSpec) -> IJEPA:
        m = cfg.meta  # the size's own shape unless a meta.enc_* key overrides it
        overrides = {"depth": m.enc_depth, "embed_dim": m.enc_embed_dim, "num_heads": m.enc_num_heads,
                     "mlp_ratio": m.enc_mlp_ratio}
        encoder = build_encoder(m.model_name, patch_size=cfg.mask.patch_size, img_size=cfg.data.crop_size,
                                in_chans=cfg.data.in_chans, drop_path_rate=m.drop_path, init_std=m.init_std,
                                **{k: v for k, v in overrides.items() if v is not None})
        encoder.input_spec = input_spec
        predictor = build_predictor(encoder, predictor_embed_dim=m.pred_emb_dim, depth=m.pred_depth,
                                    num_heads=m.pred_num_heads, one_pass=m.pred_one_pass)
        # The training step runs each batch whole: CPU slicing gains it nothing (0.98x, benchmarks/train_step.py);
        # the monitor's forward-only checks slice (train/monitor.py), as extraction does.
        encoder.cpu_chunk_tokens = 0
        model = cls(encoder, predictor, reg=cfg.loss)
        if m.grad_checkpointing:
            encoder.set_grad_checkpointing(True)
        return model

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.encoder.grid_size

    def forward(self, images: torch.Tensor, masks_enc: list[torch.Tensor],
                masks_pred: list[torch.Tensor]) -> torch.Tensor:
        """The loss of one batch: masks are lists of (B, K) patch-index tensors (context, target blocks)."""
        reg, B = self.reg, images.shape[0]
        with torch.no_grad(), record_function("target_forward"):
            h = apply_masks(normalize_targets(self.target_encoder(images)), masks_pred)  # (npred·B, K, D)
            if len(masks_enc) > 1:  # one copy per context mask, in the predictor's output order
                h = h.view(len(masks_pred), 1, B, *h.shape[1:]).expand(-1, len(masks_enc), -1, -1, -1)
                h = h.reshape(-1, *h.shape[3:])
        with record_function("context_forward"):
            z = self.encoder(images, masks_enc)
        with record_function("predictor_forward"):
            loss = F.smooth_l1_loss(self.predictor(z, masks_enc, masks_pred).float(), h.float())
        pooled = z.mean(dim=1).float() if (reg.var_weight or reg.cov_weight or reg.sigreg_weight) else None
        if reg.var_weight or reg.cov_weight:
            var, cov = vicreg_terms(pooled)
            loss = loss + reg.var_weight * var + reg.cov_weight * cov
        if reg.sigreg_weight:
            loss = loss + reg.sigreg_weight * sigreg(pooled, reg.sigreg_slices)
        return loss

    def loss(self, images: torch.Tensor, masks_enc: list[torch.Tensor],
             masks_pred: list[torch.Tensor]) -> torch.Tensor:
        return self(images, masks_enc, masks_pred)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target <- m·target + (1 - m)·context encoder, one fused call over all parameters."""
        with record_function("ema"):
            torch._foreach_lerp_(list(self.target_encoder.parameters()), list(self.encoder.parameters()),
                                 1.0 - momentum)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The encoder's then the predictor's AdamW groups (:func:`ijepa.optim.param_groups`: biases and 1-D
        parameters take no weight decay, as in the reference)."""
        return param_groups(self.encoder, weight_decay) + param_groups(self.predictor, weight_decay)

    def configure_optimizer(self, opt: OptimizationConfig, device_type: str) -> torch.optim.AdamW:
        """AdamW over :meth:`param_groups` (the schedules set lr and weight decay at every step)."""
        fast = {"fused": True} if device_type == "cuda" else {"foreach": True}
        return torch.optim.AdamW(self.param_groups(opt.weight_decay), lr=opt.lr, betas=opt.betas, **fast)

    def compiled(self, **compile_kwargs) -> IJEPA:
        """The same model with each network wrapped by ``torch.compile``: the same parameters, for computing the
        loss; this one (checkpoints, the monitor's checks, the EMA) stays eager."""
        nets = (torch.compile(m, **compile_kwargs) for m in (self.encoder, self.predictor, self.target_encoder))
        return IJEPA(*nets, reg=self.reg)

    def arch_dict(self) -> dict:
        return {"encoder": self.encoder.arch_dict(), "predictor": self.predictor.arch_dict()}
