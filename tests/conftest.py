"""What several test files share: the tiny training run, the mask tests' helpers, the tiny random-weight models and
reference checkpoint of the interop tests (``from conftest import TINY, cfg_with``; pytest puts this folder on
``sys.path``, as the tests have no ``__init__.py``), and the ``ijepa`` processes started without their imports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ijepa.config import Config, load_config
from ijepa.masks import MaskConfig
from ijepa.models.predictor import VisionTransformerPredictor
from ijepa.models.vit import VisionTransformer

PREWARMED = Path(__file__).resolve().parent / "prewarmed.py"  # the documentation examples' harness starts it too

# Overrides of the CPU default (fmnist_cpu) for a run whose steps take milliseconds: the tests are about the loop,
# not the learning. The default's time limit is off, so a run's length is the steps a test sets, on any machine;
# fp32, so every machine runs the same arithmetic; the paper's loss alone (the default's variance and covariance
# terms off); no online k-NN (3,000 forward passes at each epoch end: most of a tiny run's time; the tests of the
# monitor turn it on). A tuple, so that no test can change it for the others.
TINY = ("data.limit=256", "data.batch_size=16", "meta.model_name=vit_tiny", "meta.enc_depth=1",
        "meta.pred_depth=1", "meta.pred_emb_dim=48", "meta.precision=fp32", "optimization.minutes=null",
        "optimization.epochs=2", "optimization.warmup=0.5", "logging.progress=false", "logging.log_freq=4",
        "loss.var_weight=0", "loss.cov_weight=0", "logging.online_knn=false")


def cfg_with(*extra: str) -> Config:
    """The tiny run's config with ``extra`` overrides applied after :data:`TINY` (a later key wins)."""
    return load_config(None, [*TINY, *extra])


# ---------------------------------------------------------------- masks (test_masks, test_masks_reference)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_grid_cfg(**kw) -> MaskConfig:
    """min_keep=4 (the reference class's default): at 8x8 the recipe's min_keep=10 can hang the reference."""
    return MaskConfig(**{"min_keep": 4, **kw})


def rows_cols(ids: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return ids // width, ids % width


# ---------------------------------------------------------------- checkpoints (test_interop, test_hub)

TINY_VIT = dict(embed_dim=192, depth=4, num_heads=3)  # as test_interop's _hf_model builds, so the two can be compared


def tiny_vit(seed: int = 0, **kw) -> VisionTransformer:
    """A :data:`TINY_VIT` encoder at 224 px, patch 16 (``kw`` overrides), with random weights."""
    torch.manual_seed(seed)
    args = dict(img_size=224, patch_size=16, **TINY_VIT)
    args.update(kw)
    enc = VisionTransformer(**args).eval()
    with torch.no_grad():  # non-trivial norms, so a swapped or dropped LayerNorm cannot pass unnoticed
        for name, p in enc.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return enc


def tiny_predictor(enc: VisionTransformer, seed: int = 1) -> VisionTransformerPredictor:
    torch.manual_seed(seed)
    return VisionTransformerPredictor(enc.grid_size, enc.embed_dim, predictor_embed_dim=96, depth=2,
                                      num_heads=enc.num_heads).eval()


def reference_file(path: Path, ctx: VisionTransformer, tgt: VisionTransformer,
                   pred: VisionTransformerPredictor) -> Path:
    """A checkpoint in the reference's ``.pth.tar`` layout: its keys, DDP's ``module.`` prefix, its bookkeeping."""
    prefixed = lambda m: {"module." + k: v.clone() for k, v in m.state_dict().items()}
    torch.save({
        "encoder": prefixed(ctx), "predictor": prefixed(pred), "target_encoder": prefixed(tgt),
        "opt": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        "scaler": None, "epoch": 300, "loss": 0.123, "batch_size": 128, "world_size": 16, "lr": 1e-3,
    }, path)
    return path


@pytest.fixture
def one_thread():
    """torch on one thread for a test, restored after: the small models these tests train run as fast, and the
    other core stays free for the processes the test starts."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- ijepa processes (test_kill_resume, test_horizon, ...)


@pytest.fixture(scope="package")  # tests/ is one folder: for the whole run
def prewarmed():
    """Starts ``ijepa ARGS`` (``prewarmed.ijepa(args, stdout=file, stderr=subprocess.STDOUT, env=...)``) or ``python
    -c CODE`` (``prewarmed.python(["-c", code, ...])``) as a process of its own, forked from a server that has
    imported torch and ijepa (tests/prewarmed.py), so a test that starts many pays the 2-3 s of imports once; a
    ``subprocess.Popen``-like handle (pid, poll, wait, send_signal, kill)."""
    from prewarmed import Servers

    servers = Servers()
    yield servers
    servers.close()
