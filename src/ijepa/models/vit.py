"""The I-JEPA Vision Transformer encoder: one class, a registry of sizes, and the token gather.

Parameter names and shapes follow the reference (facebookresearch/ijepa ``src/models/vision_transformer.py``), so
its published checkpoints load after stripping DDP's ``module.`` prefix and nothing else. Differences that do not
touch the weights: attention goes through ``scaled_dot_product_attention`` (flash / memory-efficient kernels on
GPU), position embeddings resample to any grid, square or not (the reference's resampling assumes a class token and
crashes, facebookresearch/ijepa #42), and tokens are gathered with one index op per mask.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from ..spec import InputSpec
from .pos_embed import resample_pos_embed, sincos_2d

# name -> (embed_dim, depth, num_heads, mlp_ratio). giant's 48/11 (MLP width 6144) is the reference's; gigantic's
# 64/13 (MLP width 8192) is the convention of the later Meta JEPA code (the I-JEPA reference has no gigantic).
VIT_SIZES: dict[str, tuple[int, int, int, float]] = {
    "vit_tiny": (192, 12, 3, 4.0),
    "vit_small": (384, 12, 6, 4.0),
    "vit_base": (768, 12, 12, 4.0),
    "vit_large": (1024, 24, 16, 4.0),
    "vit_huge": (1280, 32, 16, 4.0),
    "vit_giant": (1408, 40, 16, 48 / 11),
    "vit_gigantic": (1664, 48, 16, 64 / 13),
}

# torch's CPU flash-attention backward is slow in bf16 on short sequences: forward+backward with 3 heads of 64 takes
# 31.7 ms against 11.8 ms for the plain matmul path at 49 tokens (57 vs 13 at 20; flash wins again at 197 tokens
# and in fp32), while its forward alone is 3x faster than the matmul path (14.7 vs 45.4 ms, batch 256, 49 tokens).
# So short bf16 sequences that need gradients take SDPA's MATH backend on the CPU; everything else takes flash.
_CPU_BF16_MATH_MAX_TOKENS = 128

# On the CPU a whole batch's activations fall out of the caches, and the copies, adds, layer norms and GELUs around
# the matmuls become memory-bound: in batches of 512, feature extraction runs 1.6-2.0x faster when the blocks run on
# slices of the batch of about this many tokens each (benchmarks/cpu_chunks.py: ViT-base at depth 2 on 49 tokens,
# 377 against 230 images/s). The rows are independent sequences: the result is the same, to the bit in fp32 (in
# bf16 oneDNN may round differently at another batch size: pooled features within ~1e-3 on an AMX CPU). Only
# forward-only passes slice (:func:`inference_forward`): the CPU default's training step gained nothing from it
# (0.98x), so training runs each batch whole.
CPU_CHUNK_TOKENS = 1536


def sdpa_backend(device_type: str, dtype: torch.dtype, needs_grad: bool, n_tokens: int) -> SDPBackend | None:
    """The SDPA backend attention pins for these inputs, or None to leave the choice to torch: the MATH backend
    for short bf16 sequences that need gradients on the CPU (see :data:`_CPU_BF16_MATH_MAX_TOKENS`)."""
    if device_type == "cpu" and dtype == torch.bfloat16 and needs_grad and n_tokens <= _CPU_BF16_MATH_MAX_TOKENS:
        return SDPBackend.MATH
    return None


def run_in_chunks(fn, x: torch.Tensor, chunk_tokens: int):
    """``fn(x)`` for a (rows, N, D) ``x`` whose rows are independent sequences, computed on slices of about
    ``chunk_tokens`` tokens when ``x`` is on the CPU (0: the whole batch; see :data:`CPU_CHUNK_TOKENS`). ``fn``
    returns a tensor or a list of tensors, each with the rows first."""
    rows = max(1, chunk_tokens // max(x.shape[1], 1)) if chunk_tokens > 0 else x.shape[0]
    if x.device.type != "cpu" or rows >= x.shape[0]:
        return fn(x)
    outs = [fn(c) for c in x.split(rows)]
    if isinstance(outs[0], torch.Tensor):
        return torch.cat(outs)
    return [torch.cat(parts) for parts in zip(*outs)]


def to_2tuple(x: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    t = tuple(int(v) for v in x)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), ids (B, K) patch ids -> (B, K, D). ``expand`` keeps the index a view (no copy per channel)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.size(-1)))


def apply_masks(x: torch.Tensor, masks: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Select tokens for each mask and stack the masks along the batch: (B, N, D) -> (len(masks)·B, K, D).

    The one gather every token selection in the project goes through (context, targets, predictor positions).
    """
    if isinstance(masks, torch.Tensor):
        masks = [masks]
    return torch.cat([gather_tokens(x, m) for m in masks], dim=0)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch for whole samples."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_mask``: optional bool (N, N), True where a query may attend to a key (the one-pass predictor)."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        p = self.attn_drop if self.training else 0.0
        backend = sdpa_backend(q.device.type, q.dtype, q.requires_grad, N)
        with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, attn_drop: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def init_vit_weights(module: nn.Module, blocks: Sequence[Block], std: float = 0.02) -> None:
    """The reference's initialisation: truncated normal for linear/conv weights, then each block's output
    projections scaled by 1/sqrt(2·layer) so the residual stream's variance does not grow with depth."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for layer_id, blk in enumerate(blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))


class VisionTransformer(nn.Module):
    """ViT encoder without a class token; ``forward`` returns the last layer's layer-normed patch tokens (B, N, D),
    the same thing as transformers' ``IJepaModel(...).last_hidden_state``.

    ``input_spec`` says what images it takes; ``source`` where its weights came from (set by ``ijepa.load`` and
    training, empty for a fresh model)."""

    source: str = ""

    def __init__(self, img_size: int | Sequence[int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 norm_eps: float = 1e-6, init_std: float = 0.02, input_spec: InputSpec | dict | None = None):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f"image size {self.img_size} is not a multiple of the patch size {patch_size}")
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_features = self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.norm_eps = norm_eps
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        # A fixed table, stored as a frozen parameter (not a buffer) because that is where the reference's
        # checkpoints keep it.
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, self.grid_size)[None], requires_grad=False)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear decay rule
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i], attn_drop_rate, norm_eps) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        init_vit_weights(self, self.blocks, init_std)
        self.input_spec = input_spec  # None: InputSpec's default rule at this size and channel count

    @property
    def input_spec(self) -> InputSpec:
        """The images this encoder takes (size, channels, normalisation); set from any mapping, completed by
        :meth:`InputSpec.coerce` at the encoder's own size and channels."""
        return self._input_spec

    @input_spec.setter
    def input_spec(self, spec: InputSpec | dict | None) -> None:
        self._input_spec = InputSpec.coerce(spec, image_size=self.img_size, in_chans=self.in_chans)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        return resample_pos_embed(self.pos_embed, self.grid_size, grid)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patchify and add position embeddings (resampled when the input is not the native resolution)."""
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        return self.patch_embed(x) + self.pos_embed_for(grid)

    def _run_blocks(self, x: torch.Tensor, keep_last: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
        kept = []
        first_kept = len(self.blocks) - keep_last
        for i, blk in enumerate(self.blocks):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if i >= first_kept:
                kept.append(x)
        return x, kept

    def forward(self, x: torch.Tensor, masks: torch.Tensor | Sequence[torch.Tensor] | None = None, *,
                cpu_chunk_tokens: int = 0) -> torch.Tensor:
        """images (B, C, H, W) -> (B, N, D); with ``masks`` (each (B, K) patch ids), only those tokens enter the
        blocks (gathered before, not after — that is where I-JEPA's context encoder saves its compute) and the
        result is (len(masks)·B, K, D). ``cpu_chunk_tokens`` > 0 runs the blocks on CPU slices of the batch of
        about that many tokens (same result; forward-only passes take :func:`inference_forward`, which sets it)."""
        x = self.embed(x)
        if masks is not None:
            x = apply_masks(x, masks)
        return run_in_chunks(lambda c: self.norm(self._run_blocks(c)[0]), x, cpu_chunk_tokens)

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 4, norm: bool = True, *,
                                cpu_chunk_tokens: int = 0) -> list[torch.Tensor]:
        """The last ``n`` blocks' outputs (each (B, N, D)), passed through the final norm when ``norm``;
        ``cpu_chunk_tokens`` as in :meth:`forward`."""
        def last_n(c: torch.Tensor) -> list[torch.Tensor]:
            kept = self._run_blocks(c, keep_last=n)[1]
            return [self.norm(t) for t in kept] if norm else kept
        return run_in_chunks(last_n, self.embed(x), cpu_chunk_tokens)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def arch_dict(self) -> dict:
        """Everything needed to rebuild this encoder (stored in our checkpoints and exports)."""
        return {"img_size": list(self.img_size), "patch_size": self.patch_size, "in_chans": self.in_chans,
                "embed_dim": self.embed_dim, "depth": self.depth, "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio, "norm_eps": self.norm_eps,
                "qkv_bias": self.blocks[0].attn.qkv.bias is not None if len(self.blocks) else True}


def inference_forward(encoder: Callable, images: torch.Tensor, *,
                      last_layers: int = 0) -> torch.Tensor | list[torch.Tensor]:
    """A forward-only pass (feature extraction, the training monitor): ``encoder(images)``, or with ``last_layers``
    ``encoder.get_intermediate_layers(images, n=last_layers)``. A :class:`VisionTransformer` runs its blocks on CPU
    slices of :data:`CPU_CHUNK_TOKENS` tokens (the same features, 1.6-2x faster); any other encoder is called as
    it is. Training calls the encoders directly, on the whole batch."""
    kw = {"cpu_chunk_tokens": CPU_CHUNK_TOKENS} if isinstance(encoder, VisionTransformer) else {}
    if last_layers:
        return encoder.get_intermediate_layers(images, n=last_layers, **kw)
    return encoder(images, **kw)


def arch_name(arch: str) -> str:
    """Accept 'vit_huge', 'huge', 'ViT-H' style names."""
    a = arch.lower().replace("-", "_")
    short = {"t": "tiny", "s": "small", "b": "base", "l": "large", "h": "huge", "g": "giant", "gg": "gigantic"}
    a = a.removeprefix("vit_")
    a = short.get(a, a)
    name = "vit_" + a
    if name not in VIT_SIZES:
        raise ValueError(f"unknown encoder '{arch}'; choose from {', '.join(VIT_SIZES)}")
    return name


def build_encoder(arch: str = "vit_base", patch_size: int = 16, img_size: int | Sequence[int] = 224,
                  in_chans: int = 3, **kwargs) -> VisionTransformer:
    """An encoder of a registered size (``vit_tiny`` … ``vit_gigantic``), with random weights.

    Args:
        arch: the size's name (``VIT_SIZES``: ``vit_tiny``, ``vit_small``, ``vit_base``, ``vit_large``,
            ``vit_huge``, ``vit_giant``, ``vit_gigantic``; ``"huge"`` and ``"ViT-H"`` also work).
        patch_size: patch side in pixels.
        img_size: the input resolution, one side or ``(height, width)``.
        in_chans: input channels.
        **kwargs: override any field of ``VisionTransformer`` (e.g. ``depth=6`` for a shallower tiny,
            ``drop_path_rate=0.1``).

    Returns:
        The ``VisionTransformer``; its forward maps images (B, C, H, W) to patch tokens (B, N, D).
    """
    dim, depth, heads, mlp = VIT_SIZES[arch_name(arch)]
    params = dict(embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=mlp)
    params.update(kwargs)
    return VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, **params)
