import csv
import os
import signal
import subprocess
import time
import types
from pathlib import Path

import pytest
import torch
from conftest import TINY, cfg_with

from ijepa.config import load_config
from ijepa.errors import ConfigError, NonFiniteLossError, UnsafeCheckpointError
from ijepa.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ijepa.train.loop import train


def read_losses(run: Path) -> dict[int, float]:
    with open(run / "log.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def test_training_writes_log_config_checkpoint_and_summary(tmp_path):
    summary = train(cfg_with("optimization.max_steps=6", "logging.online_knn=true"), tmp_path)
    assert summary["steps"] == 6 and summary["images_seen"] == 96
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(6))
    assert {"epoch", "step", "loss", "lr", "wd", "momentum", "ctx_tokens", "tgt_tokens", "step_ms",
            "images_per_s"} <= set(rows[0])
    assert float(rows[0]["lr"]) == pytest.approx(1e-4)  # start_lr of the CPU default
    ckpt = load_checkpoint(tmp_path / "jepa-latest.pth.tar")
    for key in ("encoder", "predictor", "target_encoder", "opt", "scaler", "epoch", "loss", "batch_size",
                "world_size", "lr", "step", "rng", "input_spec", "arch", "config"):
        assert key in ckpt
    assert ckpt["step"] == 6 and ckpt["input_spec"]["in_chans"] == 1
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "summary.json").is_file()
    mon = list(csv.DictReader(open(tmp_path / "monitor.csv")))
    assert int(mon[-1]["step"]) == 6 and 0.0 < float(mon[-1]["knn"]) <= 1.0 and float(mon[-1]["rankme"]) >= 1.0
    assert 0.0 < summary["knn"] <= 1.0
    assert not list(tmp_path.glob(".*.tmp"))


def test_exact_resume_matches_uninterrupted_run(tmp_path):
    # 16 steps per epoch; stop at 10 (mid-epoch), resume to 20 (across the epoch boundary). Two blocks with
    # drop-path on: the resumed run must also restore the generator that drop-path draws from.
    deeper = ("meta.enc_depth=2", "meta.drop_path=0.1")
    full, split = tmp_path / "full", tmp_path / "split"
    train(cfg_with(*deeper, "optimization.max_steps=20"), full)
    train(cfg_with(*deeper, "optimization.max_steps=10"), split)
    assert load_checkpoint(split / "jepa-latest.pth.tar")["batch_in_epoch"] == 10
    # a crash after step 10's checkpoint had logged two more steps: the resumed run must not log them twice
    with open(split / "log.csv", "a") as f:
        f.write("0,10,9.9,0,0,0,0,0,0,0,0\n0,11,9.9,0,0,0,0,0,0,0,0\n")
    train(cfg_with(*deeper, "optimization.max_steps=20"), split)
    assert [int(r["step"]) for r in csv.DictReader(open(split / "log.csv"))] == list(range(20))
    a, b = read_losses(full), read_losses(split)
    assert sorted(a) == sorted(b) == list(range(20))
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-6, (s, a[s], b[s])
    ca, cb = load_checkpoint(full / "jepa-latest.pth.tar"), load_checkpoint(split / "jepa-latest.pth.tar")
    for part in ("encoder", "predictor", "target_encoder"):
        for k, v in ca[part].items():
            assert torch.allclose(v, cb[part][k], atol=1e-6, rtol=0), (part, k)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    train(cfg_with("optimization.max_steps=16"), tmp_path)  # one epoch: latest at step 16
    before = (tmp_path / "jepa-latest.pth.tar").read_bytes()
    with pytest.raises(NonFiniteLossError, match="loss became"):
        train(cfg_with("optimization.max_steps=32", "optimization.lr=1e30", "optimization.start_lr=1e30",
                       "meta.allow_config_change=true"), tmp_path)
    assert (tmp_path / "jepa-latest.pth.tar").read_bytes() == before


def test_unreadable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / "jepa-latest.pth.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read .*jepa-latest.pth.tar: the file is truncated, corrupt"):
        train(cfg_with("optimization.max_steps=2"), tmp_path)


def test_checkpoint_of_another_architecture_names_the_mismatch(tmp_path):
    train(cfg_with("optimization.max_steps=2"), tmp_path)
    with pytest.raises(CheckpointError, match="does not match"):
        train(cfg_with("optimization.max_steps=4", "meta.enc_depth=3", "meta.allow_config_change=true"), tmp_path)


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.pth.tar"
    save_checkpoint({"a": torch.ones(2)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth.tar"]


class Evil:
    """Stands for any object a pickle could smuggle in."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"x": Evil()}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused to unpickle .*evil.pth.tar"):
        load_checkpoint(path)


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    from PIL import Image
    root = tmp_path / "imgs"
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(40):
        arr = (torch.rand(20, 20, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(arr).save(root / f"{i:03d}.png")
    for i in range(3):
        (root / f"bad{i}.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    cfg = cfg_with("data.dataset=folder", f"data.root_path={root}", "data.crop_size=16",
                   "data.in_chans=3", "data.num_workers=0", "data.limit=null",
                   "data.batch_size=43", "optimization.max_steps=2", "mask.patch_size=4")
    with pytest.warns(Warning, match="bad"):
        summary = train(cfg, tmp_path / "run")
    # one batch holds all 43 files: each epoch reads the 3 corrupt ones once and trains on the other 40
    assert summary["skipped_images"] == 6 and summary["steps"] == 2
    assert summary["skipped_files"] == 3 and sorted(summary["skipped"]) == ["bad0.jpg", "bad1.jpg", "bad2.jpg"]
    assert summary["skipped_line"].startswith("skipped 3 unreadable files (6 occurrences): bad")


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path, prewarmed):
    run, log = tmp_path / "run", tmp_path / "train.out"
    with open(log, "w") as out:
        proc = prewarmed.ijepa(["train", "--out", str(run), *TINY, "optimization.epochs=50", "data.limit=2048",
                              "logging.log_freq=1"], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (run / "log.csv").exists() or len((run / "log.csv").read_text().splitlines()) < 4:
        assert proc.poll() is None and time.time() < deadline, log.read_text()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()  # 128 + SIGTERM: a stopped run is not a finished one
    assert "received SIGTERM" in log.read_text()
    step = load_checkpoint(run / "jepa-latest.pth.tar")["step"]
    assert 0 < step < 50 * 128


# ---------------------------------------------------------------------------------------- distributed (gloo)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    result = _one_step(rank, world)
    if rank == 0:
        torch.save(result, Path(out_dir) / "ddp.pt")
    torch.distributed.destroy_process_group()


def _one_step(rank: int, world: int) -> dict:
    """Build the model from one seed, take one training step on this rank's share of a fixed batch."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ijepa.masks import MaskConfig, MultiBlockMaskSampler
    from ijepa.precision import Precision
    from ijepa.train import distributed as D
    from ijepa.train.horizon import Horizon
    from ijepa.train.ijepa import IJEPA
    from ijepa.train.loop import TrainState, train_step
    from ijepa.train.schedules import Schedules

    cfg = cfg_with("meta.drop_path=0.0")
    torch.manual_seed(0)
    model = IJEPA.from_config(cfg, {"image_size": (28, 28), "in_chans": 1, "mean": (0.5,), "std": (0.5,)})
    opt = model.configure_optimizer(cfg.optimization, "cpu")
    sched = Schedules.from_config(cfg.optimization, 10, Horizon(20))
    g = torch.Generator().manual_seed(1)
    images = torch.randn(16, 1, 28, 28, generator=g)
    masks_enc, masks_pred = MultiBlockMaskSampler(7, MaskConfig(min_keep=4))(16, g)
    share = slice(rank * 16 // world, (rank + 1) * 16 // world)
    fp32 = Precision("fp32", "cpu")
    state = TrainState(model, DDP(model) if world > 1 else model, opt, fp32.grad_scaler(), sched, fp32)
    loss = train_step(state, images[share], [m[share] for m in masks_enc], [m[share] for m in masks_pred], 3)
    return {"loss": D.all_reduce_mean(loss).item(), "encoder": model.encoder.state_dict(),
            "predictor": model.predictor.state_dict(), "target": model.target_encoder.state_dict()}


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_twice_the_batch(tmp_path):
    single = _one_step(0, 1)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert abs(ddp["loss"] - single["loss"]) < 1e-6
    # Tolerance: AdamW's first step moves each weight by about lr·sign(grad), so weights agree to float
    # round-off of the gradient all-reduce (1e-6 at lr 1e-4 here).
    for part in ("encoder", "predictor", "target"):
        for k, v in single[part].items():
            assert torch.allclose(v, ddp[part][k], atol=1e-6, rtol=0), (part, k, (v - ddp[part][k]).abs().max())


def test_training_streams_from_tar_shards(tmp_path):
    from PIL import Image

    from ijepa.data.shards.writer import write_shards
    src = tmp_path / "imgs"
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        for i in range(20):
            arr = (torch.rand(20, 20, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(arr).save(src / c / f"{i:03d}.png")
    (src / "a" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    write_shards(src, tmp_path / "shards", max_count=8)
    cfg = cfg_with("data.dataset=shards", f"data.root_path={tmp_path / 'shards'}",
                   "data.crop_size=16", "data.in_chans=3", "data.num_workers=0", "data.limit=null",
                   "data.batch_size=41", "optimization.max_steps=2", "mask.patch_size=4")
    with pytest.warns(Warning, match="bad|not"):
        summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == 2 and summary["skipped_images"] == 2  # the corrupt file, once per epoch
    assert summary["skipped_files"] == 1 and list(summary["skipped"]) == ["shard-000000.tar:000000020"]  # shard:key


def test_targets_are_the_papers_layer_norm_shared_with_the_decoders():
    from ijepa.models.targets import normalize_targets
    from ijepa.viz.decoder import decoder_input

    h = 3 + 5 * torch.randn(4, 9, 16, dtype=torch.bfloat16)
    t = normalize_targets(h)
    assert t.dtype == torch.float32
    torch.testing.assert_close(t, torch.nn.functional.layer_norm(h.float(), (16,)))
    assert decoder_input is normalize_targets  # what the decoders read is what the predictor regresses


@pytest.mark.parametrize("key, value", [("loss.target_batch_norm", "center"), ("meta.cpu_chunk_tokens", "1536")])
def test_removed_training_options_fail_naming_the_removal(key, value):
    with pytest.raises(ConfigError, match=f"^command line: {key}={value}: {key} was removed: ") as e:
        cfg_with(f"{key}={value}")
    assert "\n" not in str(e.value)


def test_online_knn_runs_at_epoch_ends_only(tmp_path):
    # 16 steps per epoch, a collapse check every 4 steps: std/RankMe at 4, 8, 12, 16, 20; k-NN at 16 and 20 only
    train(cfg_with("optimization.max_steps=20", "logging.monitor_freq=4", "logging.online_knn=true"), tmp_path)
    mon = {int(r["step"]): r for r in csv.DictReader(open(tmp_path / "monitor.csv"))}
    assert sorted(mon) == [4, 8, 12, 16, 20]
    assert all(float(r["rankme"]) >= 1.0 for r in mon.values())
    assert [s for s, r in mon.items() if r["knn"]] == [16, 20]


def test_sigreg_measures_distance_from_an_isotropic_gaussian_and_its_gradient_closes_it():
    from ijepa.train.losses import sigreg

    torch.manual_seed(0)
    gauss = torch.randn(256, 32)
    near = sigreg(gauss).item()
    assert near < 3  # a test statistic: about 1 for a true standard Gaussian sample
    for far in (3 * torch.randn(256, 32), torch.randn(256, 2) @ torch.randn(2, 32), torch.randn(256, 32) + 2):
        assert sigreg(far).item() > 5 * near  # wrong scale, collapsed to a plane, off-centre
    z = (0.1 * torch.randn(256, 32)).requires_grad_()  # shrunken features: gradient descent spreads them out
    before = sigreg(z, num_slices=512).item()
    for _ in range(50):
        (g,) = torch.autograd.grad(sigreg(z, num_slices=512), z)
        z = (z - 2.0 * g).detach().requires_grad_()
    assert sigreg(z, num_slices=512).item() < before / 50 and 0.9 < z.std().item() < 1.1
    with pytest.raises(Exception, match="^command line: loss.sigreg_weight=-1: must be >= 0"):
        cfg_with("loss.sigreg_weight=-1")


def test_tensorboard_events_carry_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(cfg_with("optimization.max_steps=6", "logging.tensorboard=true", "logging.monitor_freq=3",
                   "logging.online_knn=true"), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "monitor/rankme", "monitor/knn"} <= tags
    logged = read_losses(tmp_path)
    board = {e.step: e.value for e in events.Scalars("train/loss")}
    assert sorted(board) == sorted(logged)
    assert all(board[s] == pytest.approx(logged[s], rel=1e-5) for s in logged)


def test_two_context_masks_train(tmp_path):
    # each target is predicted from each context (2 x 4 pairs per image); 32 steps draw batches whose two
    # context masks would differ in length without the shared cut (about one batch in five on this 7x7 grid)
    summary = train(cfg_with("optimization.max_steps=32", "mask.num_enc_masks=2"), tmp_path)
    assert summary["steps"] == 32
    assert all(torch.isfinite(torch.tensor(v)) for v in read_losses(tmp_path).values())


@pytest.mark.slow  # dynamo traces the three networks (the "eager" backend: no C++ compiler needed)
def test_the_compiled_view_shares_the_parameters_and_computes_the_same_step():
    from ijepa.masks import MaskConfig, MultiBlockMaskSampler
    from ijepa.precision import Precision
    from ijepa.train.horizon import Horizon
    from ijepa.train.ijepa import IJEPA
    from ijepa.train.loop import TrainState, train_step
    from ijepa.train.schedules import Schedules

    cfg = cfg_with("meta.drop_path=0.0")
    fp32 = Precision("fp32", "cpu")
    spec = {"image_size": (28, 28), "in_chans": 1, "mean": (0.5,), "std": (0.5,)}
    g = torch.Generator().manual_seed(1)
    images = torch.randn(8, 1, 28, 28, generator=g)
    masks = MultiBlockMaskSampler(7, MaskConfig(min_keep=4))(8, g)
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = IJEPA.from_config(cfg, spec)
        view = model.compiled(backend="eager") if compiled else None
        if view is not None:  # the view's networks are the model's own parameters, not copies
            assert {id(p) for p in view.parameters()} == {id(p) for p in model.parameters()}
        state = TrainState(model, view or model, model.configure_optimizer(cfg.optimization, "cpu"),
                           fp32.grad_scaler(), Schedules.from_config(cfg.optimization, 10, Horizon(20)), fp32)
        losses = [train_step(state, images, *masks, i).item() for i in range(2)]
        runs.append((losses, model.state_dict()))
    assert runs[0][0] == pytest.approx(runs[1][0], abs=1e-6)
    for k, v in runs[0][1].items():
        torch.testing.assert_close(v, runs[1][1][k], atol=1e-6, rtol=0)
    assert set(runs[0][1]) == set(runs[1][1])  # state-dict keys untouched by compiling


def test_ijepa_pretrain_is_the_training_function_and_ijepa_train_the_package(tmp_path):
    import ijepa
    import ijepa.train.runlog  # binds the name ijepa.train to the package

    assert ijepa.pretrain is train and isinstance(ijepa.train, types.ModuleType)
    assert not callable(ijepa.train)
    assert ijepa.pretrain(cfg_with("optimization.max_steps=2"), tmp_path)["steps"] == 2


def test_images_above_the_pixel_limit_are_skipped_and_named(tmp_path):
    from PIL import Image
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(16):
        Image.new("RGB", (20, 20), (10 * i, 50, 90)).save(root / f"{i:02d}.png")
    Image.new("RGB", (60, 60), (1, 2, 3)).save(root / "big.png")  # 3,600 pixels, above the limit below
    cfg = cfg_with("data.dataset=folder", f"data.root_path={root}", "data.crop_size=16",
                   "data.in_chans=3", "data.num_workers=0", "data.limit=null",
                   "data.batch_size=17", "optimization.max_steps=1", "mask.patch_size=4",
                   "data.max_image_pixels=1000")
    with pytest.warns(Warning, match="big.png"):
        summary = train(cfg, tmp_path / "run")
    assert summary["skipped_files"] == 1 and "above the limit of 1,000" in summary["skipped"]["big.png"]
    with pytest.raises(ConfigError, match="^command line: data.max_image_pixels=0: must be > 0"):
        load_config(None, ["data.max_image_pixels=0"])
