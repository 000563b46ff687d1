"""Memory per GPU of the training state under DDP and FSDP2 (``meta.parallel``), computed from the sharding, not
measured: the parameter counts of the real models (built on the meta device, so nothing is allocated).

    python benchmarks/fsdp_memory.py                 # ViT-g/16 and ViT-G/16 at 224 px, N = 1, 8, 64 GPUs
    python benchmarks/fsdp_memory.py --gpus 1 2 4 --markdown

Per trainable parameter (the context encoder and the predictor): fp32 weights 4 bytes, fp32 gradients 4, AdamW's
two moments 8; per frozen one (the target encoder, the fixed position tables): 4 ("target" in the table). DDP
holds all of it on every GPU.
FSDP2 holds 1/N of it, plus the units it has gathered at a time: about two blocks' parameters in the compute dtype
(bf16: 2 bytes, the one running and the one prefetched) and, in backward, their unsharded gradients (bf16: 2
bytes) before the fp32 reduce-scatter. Activations, the CUDA context and the allocator's cache come on top of
both and do not shrink with N (per-GPU batch; ``meta.grad_checkpointing`` cuts the activations).

ViT-g/16 is ``vit_giant`` (width 1408, depth 40, 16 heads, MLP 6144: ~1.0 B parameters), ViT-G/16 is
``vit_gigantic`` (width 1664, depth 48, 16 heads, MLP 8192 = 64/13 x width, the ViT-bigG/G shape: ~1.8 B); the
predictor is the reference's (12 blocks of width 384).
"""

from __future__ import annotations

import argparse

import torch

from ijepa.models import build_encoder, build_predictor

GIB = 2**30
MODELS = {"ViT-g/16": "vit_giant", "ViT-G/16": "vit_gigantic"}


def counts(arch: str, patch: int = 16, img: int = 224, pred_depth: int = 12, pred_dim: int = 384) -> dict:
    """Parameter counts of one I-JEPA model: trainable and frozen, per network, and the largest block."""
    with torch.device("meta"):
        enc = build_encoder(arch, patch_size=patch, img_size=img)
        pred = build_predictor(enc, predictor_embed_dim=pred_dim, depth=pred_depth, num_heads=enc.num_heads)

    def n(module, trainable):
        return sum(p.numel() for p in module.parameters() if p.requires_grad == trainable)

    block = max(sum(p.numel() for p in b.parameters()) for b in [*enc.blocks, *pred.predictor_blocks])
    return {"encoder": n(enc, True), "encoder_frozen": n(enc, False), "predictor": n(pred, True),
            "predictor_frozen": n(pred, False), "target": n(enc, True) + n(enc, False), "block": block}


def per_gpu(c: dict, parallel: str, gpus: int, compute_bytes: int = 2) -> dict:
    """Bytes per GPU of each part of the training state (see the module's docstring)."""
    trainable = c["encoder"] + c["predictor"]
    frozen = c["encoder_frozen"] + c["predictor_frozen"] + c["target"]
    share = 1 / gpus if parallel == "fsdp" else 1.0
    row = {"weights": 4 * trainable * share, "target": 4 * frozen * share, "grads": 4 * trainable * share,
           "adamw": 8 * trainable * share}
    row["gathered"] = 2 * c["block"] * 2 * compute_bytes if parallel == "fsdp" else 0.0
    row["total"] = sum(row.values())
    return row


def table(gpus: list[int], markdown: bool = False, **kw) -> str:
    head = ["model", "params (enc + pred)", "parallel", "GPUs", "weights", "target", "grads", "AdamW", "gathered",
            "total GiB/GPU"]
    rows = []
    for name, arch in MODELS.items():
        c = counts(arch, **kw)
        for parallel in ("ddp", "fsdp"):
            for n in gpus:
                r = per_gpu(c, parallel, n)
                figures = [f"{r[k] / GIB:.2f}" for k in ("weights", "target", "grads", "adamw", "gathered", "total")]
                rows.append([name, f"{c['encoder'] / 1e9:.2f} B + {c['predictor'] / 1e6:.0f} M", parallel, str(n),
                             *figures])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in [head, *rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--pred-depth", type=int, default=12)
    p.add_argument("--pred-dim", type=int, default=384)
    p.add_argument("--markdown", action="store_true", help="a Markdown table (docs/distributed.md's)")
    a = p.parse_args()
    print(table(a.gpus, a.markdown, img=a.img, pred_depth=a.pred_depth, pred_dim=a.pred_dim))


if __name__ == "__main__":
    main()
