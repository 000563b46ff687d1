"""Attentive probe (V-JEPA): learned query token(s) cross-attend over frozen patch tokens.

Mean pooling throws away *where* things are; a learned query can pick out the tokens that matter, which is
why JEPA-style models (whose features are spread over patches) are usually read out this way. The module
follows V-JEPA 2's pooler: ``depth - 1`` self-attention blocks over the tokens, then one cross-attention
block (pre-norm cross-attention + MLP, residual) for the queries, then a linear head.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..optim import param_groups, set_lr, warmup_cosine
from ..precision import Precision, backward_step, resolve_precision

__all__ = ["AttentiveProbe", "train_attentive_probe"]

TokenSource = torch.Tensor | np.ndarray | Callable[[torch.Tensor], torch.Tensor]


def _default_heads(dim: int) -> int:
    # ~64-dim heads, as in the ViTs these tokens come from; fall back to a divisor of dim
    h = max(1, dim // 64)
    while dim % h:
        h -= 1
    return h


class _MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class _SelfAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(
            2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class _CrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)  # on the tokens (keys/values), as in V-JEPA
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _MLP(dim, int(dim * mlp_ratio))

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, Q, D = q.shape
        H = self.num_heads
        qh = self.q(q).reshape(B, Q, H, D // H).transpose(1, 2)
        k, v = self.kv(self.norm1(x)).reshape(B, x.shape[1], 2, H, D // H).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qh, k, v).transpose(1, 2).reshape(B, Q, D)
        q = q + self.proj(y)
        return q + self.mlp(self.norm2(q))


class AttentiveProbe(nn.Module):
    """Classifier over a set of tokens (B, T, D) -> logits (B, num_classes).

    ``num_queries`` learned queries cross-attend over the tokens; with several, their outputs are averaged
    before the linear head. ``depth`` > 1 adds ``depth - 1`` self-attention blocks over the tokens first.
    ``num_heads`` defaults to ``dim // 64`` (at least 1, a divisor of ``dim``).
    """

    def __init__(self, dim: int, num_classes: int, num_queries: int = 1, num_heads: int | None = None,
                 depth: int = 1, mlp_ratio: float = 4.0, init_std: float = 0.02):
        super().__init__()
        num_heads = num_heads or _default_heads(dim)
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if depth < 1 or num_queries < 1:
            raise ValueError("depth and num_queries must be >= 1")
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.blocks = nn.ModuleList(_SelfAttentionBlock(dim, num_heads, mlp_ratio) for _ in range(depth - 1))
        self.cross = _CrossAttentionBlock(dim, num_heads, mlp_ratio)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        nn.init.trunc_normal_(self.query_tokens, std=std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # residual-branch outputs shrink with depth so the stack starts near the identity (ViT/V-JEPA rule)
        blocks = [*self.blocks, self.cross]
        for i, blk in enumerate(blocks, start=1):
            blk.proj.weight.data.div_(math.sqrt(2.0 * i))
            blk.mlp[2].weight.data.div_(math.sqrt(2.0 * i))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) tokens -> (B, D) pooled representation."""
        x = tokens
        for blk in self.blocks:
            x = blk(x)
        q = self.cross(self.query_tokens.expand(len(x), -1, -1), x)
        return q.mean(dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(tokens))


def _fetch(source: TokenSource, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    if callable(source) and not isinstance(source, (torch.Tensor, np.ndarray)):
        t = source(idx)
    elif isinstance(source, np.ndarray):  # e.g. a memmap of saved tokens: only this batch is read
        t = torch.from_numpy(np.ascontiguousarray(source[np.sort(idx.numpy())]))
        # np fancy indexing wants sorted indices to read a memmap efficiently; restore the requested order
        t = t[torch.argsort(torch.argsort(idx))]
    else:
        t = source[idx.to(source.device)]
    t = torch.as_tensor(t)
    if t.ndim != 3:
        raise ValueError(f"tokens must be (B, T, D), got {tuple(t.shape)}")
    return t.to(device, non_blocking=True).float()


@torch.no_grad()
def _evaluate(model: AttentiveProbe, source: TokenSource, y: torch.Tensor, batch_size: int,
              device: torch.device, precision: Precision) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(y)))
        with precision.autocast():
            logits = model(_fetch(source, idx, device))
        correct += (logits.argmax(1).cpu() == y[idx]).sum().item()
    return correct / max(len(y), 1)


def _fit(model: nn.Module, opt: torch.optim.Optimizer, precision: Precision, tokens: TokenSource, y: torch.Tensor,
         dev: torch.device, g: torch.Generator, *, epochs: int, lr: float, batch_size: int, warmup_fraction: float,
         progress: bool) -> float:
    """``epochs`` shuffled passes over the tokens, the lr warmed up then cosine-decayed per step; the last epoch's
    mean loss."""
    from tqdm.auto import tqdm

    n, scaler = len(y), precision.grad_scaler()
    total = max(1, epochs * math.ceil(n / batch_size))
    warmup = int(warmup_fraction * total)
    step, loss_sum, loss_n = 0, 0.0, 0
    for _ in tqdm(range(epochs), disable=not progress, desc="attentive probe", unit="epoch"):
        model.train()
        perm = torch.randperm(n, generator=g)
        loss_sum, loss_n = 0.0, 0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            x = _fetch(tokens, idx, dev)
            set_lr(opt, warmup_cosine(step, total, warmup, lr, warmup_offset=1))
            with precision.autocast():
                loss = F.cross_entropy(model(x).float(), y[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            backward_step(loss, opt, scaler)
            step += 1
            loss_sum += loss.item() * len(idx)
            loss_n += len(idx)
    return loss_sum / max(loss_n, 1)


@torch.inference_mode(False)  # usable from inside an extraction's inference mode
@torch.enable_grad()
def train_attentive_probe(train_tokens: TokenSource, train_y: torch.Tensor | np.ndarray,
                          test_tokens: TokenSource, test_y: torch.Tensor | np.ndarray, *, epochs: int = 20,
                          lr: float = 1e-3, weight_decay: float = 0.05, batch_size: int = 256, seed: int = 0,
                          num_classes: int | None = None, num_queries: int = 1, num_heads: int | None = None,
                          depth: int = 1, warmup_fraction: float = 0.05,
                          device: torch.device | str | None = None, dtype: str = "fp32",
                          progress: bool = False, eval_train: bool = False
                          ) -> dict[str, Any]:
    """Train an ``AttentiveProbe`` on frozen tokens and report its test accuracy.

    AdamW (weight decay on matrices and query tokens, not on biases/norms), learning rate with a linear
    warm-up over ``warmup_fraction`` of the steps then cosine decay to 0, per step; cross-entropy loss.

    Args:
        train_tokens: a (N, T, D) tensor (any float dtype; each batch is cast to float32), a numpy array or
            memmap, or a callable ``indices (B,) -> tokens (B, T, D)`` that produces them on demand (e.g. by
            running the frozen encoder), so the full token set never has to fit in memory.
        train_y: training labels (N,).
        test_tokens: as ``train_tokens``.
        test_y: test labels.
        epochs: passes over the training tokens.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        batch_size: token sets per step.
        seed: the probe's init and the shuffling.
        num_classes: default: the largest label + 1.
        num_queries: learned query tokens.
        num_heads: attention heads (default: chosen from the token width).
        depth: self-attention blocks before the cross-attention.
        warmup_fraction: the share of the steps the lr warms up over.
        device: where the probe trains (default: the tokens' device).
        dtype: ``"fp32"`` (default), ``"auto"``, ``"bf16"`` or ``"fp16"`` (with a gradient scaler), resolved by
            the one precision policy as in feature extraction (``ijepa.precision.resolve_precision``).
        progress: show a progress bar.
        eval_train: also measure the training accuracy (another pass over the training tokens).

    Returns:
        ``{"accuracy", "train_accuracy", "final_loss", "epochs", "seconds", "precision", "model"}``;
        ``train_accuracy`` is None unless ``eval_train``.
    """
    t0 = time.perf_counter()
    train_y = torch.as_tensor(train_y).long().reshape(-1).cpu()
    test_y = torch.as_tensor(test_y).long().reshape(-1).cpu()
    dev = torch.device(device) if device is not None else (
        train_tokens.device if isinstance(train_tokens, torch.Tensor) else torch.device("cpu"))
    C = int(num_classes) if num_classes is not None else int(max(train_y.max(), test_y.max())) + 1
    n = len(train_y)
    if n == 0:
        raise ValueError("empty training set")

    g = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG stream
        torch.manual_seed(int(seed))
        dim = _fetch(train_tokens, torch.arange(min(2, n)), torch.device("cpu")).shape[-1]
        model = AttentiveProbe(dim, C, num_queries=num_queries, num_heads=num_heads, depth=depth).to(dev)

    opt = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999))
    precision = resolve_precision(dtype, dev)
    final_loss = _fit(model, opt, precision, train_tokens, train_y, dev, g, epochs=epochs, lr=lr,
                      batch_size=batch_size, warmup_fraction=warmup_fraction, progress=progress)

    model.requires_grad_(False)
    eval_bs = max(batch_size, 256)
    train_acc = _evaluate(model, train_tokens, train_y, eval_bs, dev, precision) if eval_train else None
    test_acc = _evaluate(model, test_tokens, test_y, eval_bs, dev, precision)
    return {"accuracy": test_acc, "train_accuracy": train_acc, "final_loss": final_loss,
            "epochs": epochs, "seconds": time.perf_counter() - t0, "precision": str(precision),
            "model": model.eval()}
