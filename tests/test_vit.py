import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from ijepa.models import VIT_SIZES, apply_masks, build_encoder, build_predictor, resample_pos_embed, sincos_2d
from ijepa.models.vit import CPU_CHUNK_TOKENS, inference_forward, sdpa_backend


def reference_sincos(dim, grid):
    """The reference's numpy formula, transcribed as the executable spec (meshgrid(w, h): column first)."""
    gh = np.arange(grid, dtype=float)
    gw = np.arange(grid, dtype=float)
    g = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid, grid)

    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=float) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)


@pytest.mark.parametrize("dim,grid", [(192, 7), (384, 16), (1280, 16), (96, 14)])
def test_sincos_equals_reference(dim, grid):
    ours = sincos_2d(dim, grid)
    ref = torch.from_numpy(reference_sincos(dim, grid)).float()
    assert ours.shape == (grid * grid, dim)
    assert torch.equal(ours, ref)


def test_sincos_non_square_rows_and_columns():
    emb = sincos_2d(16, (3, 5))
    # first half encodes the column, second half the row
    assert torch.allclose(emb[0, :8], emb[5, :8])      # same column, different row
    assert torch.allclose(emb[0, 8:], emb[4, 8:])      # same row, different column
    assert not torch.allclose(emb[0, 8:], emb[5, 8:])


@pytest.mark.parametrize("arch,patch,size,expected", [
    ("vit_huge", 14, 224, 630_762_240),
    ("vit_huge", 16, 448, 631_668_480),
    ("vit_giant", 16, 224, 1_011_368_576),
    ("vit_tiny", 16, 224, 5_524_032),
])
def test_parameter_counts_equal_reference(arch, patch, size, expected):
    with torch.device("meta"):
        enc = build_encoder(arch, patch_size=patch, img_size=size)
    assert sum(p.numel() for p in enc.parameters()) == expected


def test_predictor_parameter_count_equals_reference():
    with torch.device("meta"):
        enc = build_encoder("vit_huge", patch_size=14, img_size=224)
        pred = build_predictor(enc, predictor_embed_dim=384, depth=12)
    assert sum(p.numel() for p in pred.parameters()) == 22_377_728


def test_reference_parameter_names():
    enc = build_encoder("vit_tiny", patch_size=16, img_size=32, depth=1)
    keys = set(enc.state_dict())
    expected = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
        expected |= {f"blocks.0.{part}.weight", f"blocks.0.{part}.bias"}
    assert keys == expected
    pred = build_predictor(enc, predictor_embed_dim=48, depth=1)
    assert {"mask_token", "predictor_pos_embed", "predictor_embed.weight", "predictor_norm.weight",
            "predictor_proj.weight", "predictor_blocks.0.attn.qkv.weight"} <= set(pred.state_dict())


def test_sizes_registry_dimensions():
    assert VIT_SIZES["vit_tiny"][:3] == (192, 12, 3)
    assert VIT_SIZES["vit_small"][:3] == (384, 12, 6)
    assert VIT_SIZES["vit_base"][:3] == (768, 12, 12)
    assert VIT_SIZES["vit_large"][:3] == (1024, 24, 16)
    assert VIT_SIZES["vit_huge"][:3] == (1280, 32, 16)
    assert VIT_SIZES["vit_giant"][:3] == (1408, 40, 16)
    assert VIT_SIZES["vit_gigantic"][:3] == (1664, 48, 16)
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("vit_enormous")
    assert build_encoder("tiny", 4, 28, depth=1).embed_dim == 192


def manual_attention(attn, x):
    B, N, C = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).view(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
    w = (q @ k.transpose(-2, -1)) / math.sqrt(C // h)
    return attn.proj((w.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))


def test_sdpa_attention_equals_manual_attention():
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", patch_size=4, img_size=28, depth=1).eval()
    x = torch.randn(2, 49, 192)
    assert torch.allclose(enc.blocks[0].attn(x), manual_attention(enc.blocks[0].attn, x), atol=1e-5)


def test_masked_forward_gathers_before_the_blocks():
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", patch_size=4, img_size=28, depth=2).eval()
    x = torch.randn(3, 3, 28, 28)
    all_ids = torch.arange(49).expand(3, -1)
    assert torch.allclose(enc(x, all_ids), enc(x), atol=1e-6)
    ids = torch.stack([torch.randperm(49)[:20].sort().values for _ in range(3)])
    expected = enc.norm(torch.nn.Sequential(*enc.blocks)(apply_masks(enc.embed(x), ids)))
    assert torch.allclose(enc(x, ids), expected, atol=1e-6)
    # two masks stack along the batch
    assert enc(x, [ids, ids]).shape == (6, 20, 192)


def test_cpu_chunks_give_the_same_tokens_layers_and_gradients():
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", patch_size=4, img_size=28, depth=2)
    x = torch.randn(10, 3, 28, 28)
    ids = torch.stack([torch.randperm(49)[:20].sort().values for _ in range(10)])
    calls = []
    enc.blocks[0].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))

    def run(chunk_tokens):
        enc.zero_grad(set_to_none=True)
        calls.clear()
        out = enc(x, [ids, ids], cpu_chunk_tokens=chunk_tokens)  # 20 rows of 20 tokens
        out.square().mean().backward()
        grads = [p.grad.clone() for p in enc.parameters() if p.requires_grad]
        return out.detach(), grads, list(calls), enc.get_intermediate_layers(x, n=2, cpu_chunk_tokens=chunk_tokens)

    whole, g_whole, c_whole, l_whole = run(0)
    sliced, g_sliced, c_sliced, l_sliced = run(60)
    assert c_whole == [20] and c_sliced == [3] * 6 + [2]  # 60 tokens: 3 rows of 20
    assert torch.allclose(sliced, whole, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_sliced, g_whole))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(l_sliced, l_whole))


def test_only_inference_forward_slices_the_batch():
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", patch_size=4, img_size=28, depth=2).eval()
    rows = CPU_CHUNK_TOKENS // 49  # images per slice at 49 tokens each
    x = torch.randn(2 * rows + 3, 3, 28, 28)
    calls = []
    enc.blocks[0].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    with torch.no_grad():
        whole = enc(x)  # what training runs: the whole batch, always
        assert calls == [len(x)]
        calls.clear()
        sliced = inference_forward(enc, x)
        assert calls == [rows, rows, 3]
        calls.clear()
        layers = inference_forward(enc, x, last_layers=2)
        assert calls == [rows, rows, 3] and len(layers) == 2
    assert torch.allclose(sliced, whole, atol=1e-6) and torch.equal(layers[-1], sliced)
    # any other encoder is called as it is
    assert torch.equal(inference_forward(lambda t: t * 2, torch.ones(3)), torch.full((3,), 2.0))


@pytest.mark.parametrize("device, dtype, grad, tokens, backend", [
    ("cpu", torch.bfloat16, True, 49, SDPBackend.MATH),
    ("cpu", torch.bfloat16, True, 128, SDPBackend.MATH),
    ("cpu", torch.bfloat16, True, 129, None),   # long sequences: flash wins again
    ("cpu", torch.bfloat16, False, 49, None),   # forward only: flash is 3x faster
    ("cpu", torch.float32, True, 49, None),
    ("cuda", torch.bfloat16, True, 49, None),
])
def test_sdpa_backend_pins_math_for_short_bf16_cpu_sequences_with_grad(device, dtype, grad, tokens, backend):
    assert sdpa_backend(device, dtype, grad, tokens) == backend


def test_attention_takes_the_chosen_backend(monkeypatch):
    import ijepa.models.vit as vit

    seen = []
    monkeypatch.setattr(vit, "sdpa_kernel", lambda b: seen.append(b) or contextlib.nullcontext())
    attn = vit.Attention(64, 2)
    x = torch.randn(2, 49, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn(x)  # grad: MATH
        with torch.no_grad():
            attn(x)  # no pin
    assert seen == [SDPBackend.MATH]


def test_position_embeddings_resample_to_any_grid():
    enc = build_encoder("vit_tiny", patch_size=4, img_size=28, depth=1).eval()
    assert enc(torch.randn(1, 3, 28, 36)).shape == (1, 7 * 9, 192)
    assert enc(torch.randn(1, 3, 40, 40)).shape == (1, 100, 192)
    table = enc.pos_embed
    assert resample_pos_embed(table, (7, 7), (7, 7)) is table
    grid = table.reshape(1, 7, 7, 192).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(10, 12), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(resample_pos_embed(table, (7, 7), (10, 12)), ref.reshape(1, 120, 192))


def test_intermediate_layers_end_with_forward_output():
    enc = build_encoder("vit_tiny", patch_size=4, img_size=28, depth=3).eval()
    x = torch.randn(2, 3, 28, 28)
    layers = enc.get_intermediate_layers(x, n=2)
    assert len(layers) == 2 and torch.allclose(layers[-1], enc(x), atol=1e-6)


def test_stochastic_depth_is_off_in_eval_and_random_in_training():
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", patch_size=4, img_size=28, depth=4, drop_path_rate=0.5)
    assert enc.blocks[0].drop_path.p == 0.0 and enc.blocks[-1].drop_path.p == pytest.approx(0.5)
    x = torch.randn(8, 3, 28, 28)
    enc.eval()
    assert torch.equal(enc(x), enc(x))
    enc.train()
    assert not torch.allclose(enc(x), enc(x))


def test_predictor_outputs_one_prediction_per_target_and_context_mask():
    torch.manual_seed(0)
    enc = build_encoder("vit_tiny", patch_size=4, img_size=28, depth=1).eval()
    pred = build_predictor(enc, predictor_embed_dim=48, depth=1).eval()
    x = torch.randn(2, 3, 28, 28)
    ctx = [torch.arange(10, 40).expand(2, -1), torch.arange(0, 30).expand(2, -1)]
    tgt = [torch.arange(0, 6).expand(2, -1), torch.arange(43, 49).expand(2, -1), torch.arange(20, 26).expand(2, -1)]
    out = pred(enc(x, ctx), ctx, tgt)
    assert out.shape == (3 * 2 * 2, 6, 192)
    # rows are ordered (target mask, context mask, image): recompute one block alone and compare
    alone = pred(enc(x, ctx[1]), ctx[1], tgt[2])
    assert torch.allclose(out[2 * 4 + 2: 2 * 4 + 4], alone, atol=1e-5)


def _one_pass_inputs(n_ctx_masks=1, B=3, grid=6, K=4, n_ctx=9, n_pred=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks_x = [torch.stack([torch.randperm(grid * grid, generator=g)[:n_ctx].sort().values for _ in range(B)])
               for _ in range(n_ctx_masks)]
    masks = [torch.stack([torch.randperm(grid * grid, generator=g)[:K].sort().values for _ in range(B)])
             for _ in range(n_pred)]
    x = torch.randn(n_ctx_masks * B, n_ctx, 32, generator=g)
    return x, masks_x, masks


def test_one_pass_predictor_equals_per_target_at_depth_one():
    # At depth 1 a mask token's output depends only on the inputs it attends to (context + its own block) in
    # both modes, so one pass must reproduce the reference's per-target pass exactly, order included.
    torch.manual_seed(0)
    ref = build_predictor(grid_size=6, embed_dim=32, predictor_embed_dim=16, depth=1, num_heads=2).eval()
    one = build_predictor(grid_size=6, embed_dim=32, predictor_embed_dim=16, depth=1, num_heads=2,
                          one_pass=True).eval()
    one.load_state_dict(ref.state_dict())
    for n_ctx_masks in (1, 2):
        x, masks_x, masks = _one_pass_inputs(n_ctx_masks)
        a, b = ref(x, masks_x, masks), one(x, masks_x, masks)
        assert a.shape == b.shape == (3 * n_ctx_masks * 3, 4, 32)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_one_pass_predictor_blocks_do_not_see_each_other():
    # Deeper, the two modes differ (context tokens no longer attend to mask tokens), but each block's prediction
    # must still depend on the context and that block only: dropping the other blocks changes nothing.
    torch.manual_seed(0)
    one = build_predictor(grid_size=6, embed_dim=32, predictor_embed_dim=16, depth=3, num_heads=2,
                          one_pass=True).eval()
    with torch.no_grad():  # weights large enough that context tokens' attention to mask tokens shows
        for p in one.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    ref = build_predictor(grid_size=6, embed_dim=32, predictor_embed_dim=16, depth=3, num_heads=2).eval()
    ref.load_state_dict(one.state_dict())
    x, masks_x, masks = _one_pass_inputs()
    full = one(x, masks_x, masks).view(3, 3, 4, 32)
    for m in range(3):
        torch.testing.assert_close(one(x, masks_x, [masks[m]]), full[m], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ref(x, masks_x, masks), full.reshape(9, 4, 32), atol=1e-4)
    assert one.arch_dict()["one_pass"] is True
