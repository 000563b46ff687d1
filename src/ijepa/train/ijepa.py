"""The I-JEPA model: context encoder, predictor and target encoder (the context encoder's EMA), and the loss.

One step, as data flows: images and (context ids, target ids) -> target encoder on all patches -> layer norm ->
gather the target blocks -> context encoder on the context patches only -> predictor (context tokens + mask
tokens at the target positions) -> smooth-L1 against the target blocks. That much is the paper's, loss included
(:func:`~ijepa.train.losses.prediction_loss`). Ours, not the paper's, and off unless ``loss.*`` weights turn them
on: extra terms on the batch's mean-pooled context features (VICReg variance and covariance, SIGReg;
:mod:`ijepa.train.losses`), added to that loss.

``forward`` is the loss, so ``DDP(model)`` wraps the whole step's forward (the target encoder's parameters take no
gradient, so DDP leaves them alone) and ``model.encoder``, ``model.predictor``, ``model.target_encoder`` stay the
plain modules a checkpoint saves (``compiled()`` gives a compiled view over the same parameters). Under
``meta.parallel: fsdp`` the three networks are sharded in place instead (:mod:`ijepa.train.fsdp`) and ``forward``
runs unwrapped.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.profiler import record_function

from ..config import Config
from ..config_sections import OptimizationConfig
from ..models import apply_masks, build_encoder, build_predictor
from ..models.targets import normalize_targets
from ..optim import param_groups
from ..spec import InputSpec
from .losses import extra_terms, prediction_loss

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch < 2.5: no public DTensor, and no FSDP2 to make one
    DTensor = ()


def local_tensors(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Each parameter's tensor on this rank: a sharded (FSDP, DTensor) one's local shard, which shares its
    storage, so that in-place updates of it update the parameter."""
    return [p.to_local() if isinstance(p, DTensor) else p for p in params]


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

    ``terms`` are the extra loss terms (:func:`ijepa.train.losses.extra_terms`: ours; none is the paper's loss)."""

    def __init__(self, encoder: nn.Module, predictor: nn.Module, target_encoder: nn.Module | None = None,
                 terms: Iterable[nn.Module] = ()):
        super().__init__()
        self.encoder, self.predictor = encoder, predictor
        self.target_encoder = target_encoder if target_encoder is not None else make_target(encoder)
        self.terms = nn.ModuleList(terms)

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
        model = cls(encoder, predictor, terms=extra_terms(cfg.loss))
        if m.grad_checkpointing:
            encoder.set_grad_checkpointing(True)
        return model

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.encoder.grid_size

    def forward(self, images: torch.Tensor, masks_enc: list[torch.Tensor],
                masks_pred: list[torch.Tensor]) -> torch.Tensor:
        """The loss of one batch: masks are lists of (B, K) patch-index tensors (context, target blocks)."""
        B = images.shape[0]
        with torch.no_grad(), record_function("target_forward"):
            h = apply_masks(normalize_targets(self.target_encoder(images)), masks_pred)  # (npred·B, K, D)
            if len(masks_enc) > 1:  # one copy per context mask, in the predictor's output order
                h = h.view(len(masks_pred), 1, B, *h.shape[1:]).expand(-1, len(masks_enc), -1, -1, -1)
                h = h.reshape(-1, *h.shape[3:])
        with record_function("context_forward"):
            z = self.encoder(images, masks_enc)
        with record_function("predictor_forward"):
            loss = prediction_loss(self.predictor(z, masks_enc, masks_pred), h)
        if self.terms:
            pooled = z.mean(dim=1).float()
            for term in self.terms:  # one at a time, so the total rounds as the written sum loss + t1 + t2 + ... does
                loss = loss + term(pooled)
        return loss

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target <- m·target + (1 - m)·context encoder, one fused call over all parameters. Under FSDP both
        networks are sharded alike (``ijepa.train.fsdp``): the call runs on each rank's local shards, no gather."""
        with record_function("ema"):
            torch._foreach_lerp_(local_tensors(self.target_encoder.parameters()),
                                 local_tensors(self.encoder.parameters()), 1.0 - momentum)

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
        return IJEPA(*nets, terms=self.terms)

    def arch_dict(self) -> dict:
        return {"encoder": self.encoder.arch_dict(), "predictor": self.predictor.arch_dict()}
