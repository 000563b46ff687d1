"""What several test files share: the tiny training run (``from conftest import TINY, cfg_with``; pytest puts this
folder on ``sys.path``, as the tests have no ``__init__.py``)."""

from ijepa.config import Config, load_config

# Overrides of the CPU default (fmnist_cpu) for a run whose steps take milliseconds: the tests are about the loop,
# not the learning. The default's time limit is off, so a run's length is the steps a test sets, on any machine;
# fp32, so every machine runs the same arithmetic; the paper's loss alone (the default's variance and covariance
# terms off). A tuple, so that no test can change it for the others.
TINY = ("data.limit=256", "data.batch_size=16", "meta.model_name=vit_tiny", "meta.enc_depth=1",
        "meta.pred_depth=1", "meta.pred_emb_dim=48", "meta.precision=fp32", "optimization.minutes=null",
        "optimization.epochs=2", "optimization.warmup=0.5", "logging.progress=false", "logging.log_freq=4",
        "loss.var_weight=0", "loss.cov_weight=0")


def cfg_with(*extra: str) -> Config:
    """The tiny run's config with ``extra`` overrides applied after :data:`TINY` (a later key wins)."""
    return load_config(None, [*TINY, *extra])
