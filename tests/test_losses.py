import functools

import pytest
import torch
import torch.nn.functional as F

from ijepa.config import load_config
from ijepa.config_sections import LossConfig
from ijepa.masks import MaskConfig, MultiBlockMaskSampler
from ijepa.models import apply_masks
from ijepa.models.targets import normalize_targets
from ijepa.train.ijepa import IJEPA
from ijepa.train.losses import SIGRegTerm, VICRegCovarianceTerm, VICRegVarianceTerm, describe_loss, extra_terms

SPEC = {"image_size": (28, 28), "in_chans": 1, "mean": (0.5,), "std": (0.5,)}
TINY = ["data.batch_size=16", "meta.model_name=vit_tiny", "meta.enc_depth=2", "meta.pred_depth=1",
        "meta.pred_emb_dim=48", "meta.use_bfloat16=false", "meta.drop_path=0.1"]


def reference_loss(model: IJEPA, images, masks_enc, masks_pred, var_w: float, cov_w: float, sig_w: float,
                   slices: int) -> torch.Tensor:
    """The loss as the model computed it before its terms were modules, written out whole (one context mask)."""
    with torch.no_grad():
        h = apply_masks(normalize_targets(model.target_encoder(images)), masks_pred)
    z = model.encoder(images, masks_enc)
    loss = F.smooth_l1_loss(model.predictor(z, masks_enc, masks_pred).float(), h.float())
    pooled = z.mean(dim=1).float() if (var_w or cov_w or sig_w) else None
    if var_w or cov_w:
        std = torch.sqrt(pooled.var(dim=0) + 1e-4)
        var = F.relu(1.0 - std).mean()
        zc = pooled - pooled.mean(dim=0)
        cov = (zc.T @ zc) / max(pooled.shape[0] - 1, 1)
        cov = (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / pooled.shape[1]
        loss = loss + var_w * var + cov_w * cov
    if sig_w:
        t_max, knots = 3.0, 17
        dirs = torch.randn(pooled.shape[1], slices)
        s = pooled @ (dirs / dirs.norm(dim=0, keepdim=True))
        t = torch.linspace(0.0, t_max, knots)
        ts = s.unsqueeze(-1) * t
        gauss = torch.exp(-0.5 * t * t)
        err = (torch.cos(ts).mean(0) - gauss).square() + torch.sin(ts).mean(0).square()
        w = torch.full_like(t, t_max / (knots - 1))
        w[0] = w[-1] = w[0] / 2
        loss = loss + sig_w * (pooled.shape[0] * 2.0 * (err * gauss * w).sum(-1).mean())
    return loss


def loss_and_grads(fn, model: IJEPA, seed: int, batch: tuple):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # drop-path and SIGReg's directions draw from the global RNG
    loss = fn(*batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("weights", [(0.0, 0.0, 0.0), (5.0, 0.2, 0.0), (0.0, 0.2, 0.0), (0.0, 0.0, 0.1),
                                     (5.0, 0.2, 0.1)])
def test_forward_gives_exactly_the_loss_and_gradients_of_the_written_out_formula(weights):
    var_w, cov_w, sig_w = weights
    cfg = load_config(None, TINY + [f"loss.var_weight={var_w}", f"loss.cov_weight={cov_w}",
                                    f"loss.sigreg_weight={sig_w}", "loss.sigreg_slices=64"])
    torch.manual_seed(0)
    model = IJEPA.from_config(cfg, SPEC)
    assert len(model.terms) == sum(w > 0 for w in weights)
    reference = functools.partial(reference_loss, model, var_w=var_w, cov_w=cov_w, sig_w=sig_w, slices=64)
    g = torch.Generator().manual_seed(1)
    sampler = MultiBlockMaskSampler(7, MaskConfig(min_keep=4))
    for step in range(4):  # several batches: a regrouped sum would round differently on some of them
        batch = (torch.randn(16, 1, 28, 28, generator=g), *sampler(16, g))
        new, new_grads = loss_and_grads(model, model, step, batch)
        old, old_grads = loss_and_grads(reference, model, step, batch)
        assert torch.equal(new, old)
        assert new_grads.keys() == old_grads.keys() and new_grads
        assert all(torch.equal(new_grads[n], old_grads[n]) for n in new_grads)


def test_a_term_of_weight_zero_is_not_built():
    assert len(extra_terms(LossConfig())) == 0
    only_cov = extra_terms(LossConfig(var_weight=0.0, cov_weight=0.2))
    assert [type(t) for t in only_cov] == [VICRegCovarianceTerm] and only_cov[0].weight == 0.2
    every = extra_terms(LossConfig(var_weight=5.0, cov_weight=0.2, sigreg_weight=0.1, sigreg_slices=32))
    assert [type(t) for t in every] == [VICRegVarianceTerm, VICRegCovarianceTerm, SIGRegTerm]  # the order added
    assert every[2].slices == 32
    paper = IJEPA.from_config(load_config(None, TINY + ["loss.var_weight=0", "loss.cov_weight=0"]), SPEC)
    assert len(paper.terms) == 0


def test_the_compiled_view_keeps_the_terms():
    model = IJEPA.from_config(load_config(None, TINY + ["loss.sigreg_weight=0.1"]), SPEC)
    view = model.compiled(backend="eager")
    assert len(view.terms) == len(model.terms) == 3
    assert all(a is b for a, b in zip(view.terms, model.terms))


def test_describe_loss_names_the_papers_loss_and_ours():
    paper = "loss: smooth-L1 on layer-normed target blocks (the paper's)"
    assert describe_loss(LossConfig()) == paper
    cpu_default = load_config(None).loss
    assert (cpu_default.var_weight, cpu_default.cov_weight, cpu_default.sigreg_weight) == (5.0, 0.2, 0.0)
    assert describe_loss(cpu_default) == (
        f"{paper} + VICReg variance 5 + VICReg covariance 0.2 (ours, not the paper's; "
        "loss.var_weight=0 loss.cov_weight=0 trains the paper's loss)")
    assert describe_loss(LossConfig(sigreg_weight=0.1, sigreg_slices=128)) == (
        f"{paper} + SIGReg 0.1 on 128 random directions (ours, not the paper's; "
        "loss.sigreg_weight=0 trains the paper's loss)")
