import pytest
import torch

from ijepa.config import load_config
from ijepa.errors import CheckpointError, CheckpointNotFoundError
from ijepa.precision import Precision
from ijepa.train.checkpoint import Checkpointer, load_checkpoint, read_resume, save_checkpoint
from ijepa.train.horizon import Horizon
from ijepa.train.ijepa import IJEPA
from ijepa.train.schedules import Schedules

SPEC = {"image_size": (16, 16), "in_chans": 1, "mean": (0.5,), "std": (0.5,)}


def make(out, *extra):
    cfg = load_config(None, ["meta.model_name=vit_tiny", "meta.enc_depth=1", "meta.pred_depth=1",
                             "meta.pred_emb_dim=48", "data.crop_size=16", "mask.patch_size=4", "mask.min_keep=2",
                             "optimization.epochs=2", "optimization.warmup=1", *extra])
    torch.manual_seed(0)
    model = IJEPA.from_config(cfg, SPEC)
    opt = model.configure_optimizer(cfg.optimization, "cpu")
    sched = Schedules.from_config(cfg.optimization, 10, Horizon(20))
    info = {"batch_size": 8, "world_size": 1, "input_spec": SPEC, "config": cfg.to_dict()}
    scaler = Precision("fp32", "cpu").grad_scaler()
    return Checkpointer(out, "jepa", model, opt, scaler, sched, steps_per_epoch=10, is_main=True, info=info)


def resume(ck, read_checkpoint=None, load_latest=True):
    """What a run does at start-up: find the checkpoint to resume (or None), then load it into the run."""
    found = read_resume(ck.out, ck.tag, read_checkpoint, load_latest)
    return None if found is None else ck.restore(*found)


def test_save_writes_the_reference_keys_and_skips_a_step_already_saved(tmp_path):
    ck = make(tmp_path)
    ck.save(4, 1.25)
    first = ck.latest.stat().st_ino
    ck.save(4, 9.0)  # the same step again (an epoch end that is also the last step): not rewritten
    assert ck.latest.stat().st_ino == first
    state = load_checkpoint(ck.latest)
    assert (state["step"], state["epoch"], state["batch_in_epoch"], state["loss"]) == (4, 0, 4, 1.25)
    assert state["lr"] == ck.schedules.lr_at(4) and state["arch"]["encoder"]["depth"] == 1
    ck.save(10, 1.0, keep_epoch=1)
    kept = load_checkpoint(tmp_path / "jepa-ep1.pth.tar")
    assert kept["step"] == load_checkpoint(ck.latest)["step"] == 10
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_restores_models_optimizer_and_rng_exactly(tmp_path):
    ck = make(tmp_path)
    for p in ck.model.encoder.parameters():
        p.grad = torch.randn_like(p)
    ck.optimizer.step()  # some optimizer state worth restoring
    torch.manual_seed(123)
    ck.save(7, 0.5)
    expected_draw = torch.rand(3)
    fresh = make(tmp_path)
    assert resume(fresh) == (7, 0.5)
    assert torch.equal(torch.rand(3), expected_draw)  # the global stream continues where the save left it
    for a, b in zip(ck.model.state_dict().values(), fresh.model.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = ck.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    assert fresh.last_saved == 7  # the latest holds this state already: saving step 7 again is skipped


def test_resume_starts_fresh_only_when_there_is_nothing_to_resume(tmp_path):
    assert resume(make(tmp_path)) is None
    save_checkpoint({"encoder": {}}, tmp_path / "jepa-latest.pth.tar")
    assert resume(make(tmp_path), load_latest=False) is None  # meta.load_checkpoint=false
    with pytest.raises(CheckpointError, match="lacks predictor, target_encoder, opt, step: not a resumable"):
        resume(make(tmp_path))
    with pytest.raises(CheckpointNotFoundError, match="elsewhere.pth.tar"):
        resume(make(tmp_path), str(tmp_path / "elsewhere.pth.tar"))


def test_a_checkpoint_of_other_models_names_the_mismatch(tmp_path):
    make(tmp_path / "a").save(3, 1.0)
    deeper = make(tmp_path / "b", "meta.enc_depth=2")
    with pytest.raises(CheckpointError, match="does not match this config's models"):
        resume(deeper, str(tmp_path / "a" / "jepa-latest.pth.tar"))
