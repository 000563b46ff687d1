"""From a data config to batches of training images on the device, reproducibly.

Two pipelines behind one interface (``steps_per_epoch``, ``input_spec``, ``epoch(e, start)`` yielding
``(images, skipped)`` (the unusable samples of the batch, :class:`~ijepa.data.decode.Unreadable` where named),
``monitor_batch(n)``):
- in memory (Fashion-MNIST): uint8 tensors cut by index and cropped as a batch on the device. No loader
  processes: on a 2-core machine a worker would take half the compute from the step.
- folders: a DataLoader with worker processes and the reference's per-image PIL transforms.
Every random draw is seeded from its stream's name and (seed, rank, epoch, batch) or (seed, epoch, image index)
(:mod:`ijepa.seeding`), never from a running generator, so a resumed run sees exactly the images and crops the
uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch

from ..config_sections import DataConfig
from ..data.datasets import dataset_info, read_sample
from ..data.decode import Unreadable
from ..data.gpu_augment import BatchAugment, CanvasFolder, DecodeShrink, default_max_size
from ..data.hf_stream import HFStreamPipeline
from ..data.loader import InMemoryBatches, build_loader
from ..data.shards.reader import ShardDataset, build_shard_loader
from ..data.shards.remote import join_root
from ..data.sources import Probe, first, mode_for, normalisation, open_images, require, require_images
from ..data.transforms import (
    BatchRandomResizedCrop,
    make_eval_transform,
    make_pretrain_transform,
    normalize_batch,
)
from ..errors import DataError
from ..seeding import generator_for, stream_seed
from ..spec import InputSpec
from .distributed import DistInfo


class InMemoryPipeline:
    def __init__(self, images: torch.Tensor, cfg: DataConfig, dist: DistInfo, seed: int, device: torch.device,
                 mean: tuple[float, ...], std: tuple[float, ...], labels: torch.Tensor | None = None,
                 held_out: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.labels, self.held_out = labels, held_out
        if images.ndim == 3:
            images = images[:, None]
        if images.shape[1] != cfg.in_chans:
            images = images[:, :1].expand(-1, cfg.in_chans, -1, -1).contiguous()
        self.images, self.cfg, self.dist, self.seed, self.device = images, cfg, dist, seed, device
        self.mean, self.std = mean, std
        self.batches = InMemoryBatches(images, torch.zeros(len(images), dtype=torch.long), cfg.batch_size,
                                       rank=dist.rank, world_size=dist.world_size, seed=seed, drop_last=True)
        if len(self.batches) == 0:
            raise DataError(f"{cfg.dataset}: {len(images)} images are fewer than {_one_batch(cfg, dist)}")
        self.crop = BatchRandomResizedCrop(cfg.crop_size, scale=cfg.crop_scale,
                                           horizontal_flip=cfg.use_horizontal_flip)
        self._steps = len(self.batches)
        self.input_spec = InputSpec(cfg.crop_size, cfg.in_chans, mean, std)

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, int]]:
        self.batches.set_epoch(epoch)
        self.batches.set_start(start)
        for i, (x, _) in enumerate(self.batches, start=start):
            x = x.to(self.device, non_blocking=True)
            x = self.crop(x, generator_for("crop", self.seed, self.dist.rank, epoch, i))
            yield normalize_batch(x, self.mean, self.std), ()

    def knn_sets(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(bank images, bank labels, query images, query labels) for the online k-NN monitor, or None."""
        if self.labels is None or self.held_out is None:
            return None
        qx, qy = self.held_out
        return self._prepare(self.images[:2000]), self.labels[:2000], self._prepare(qx[:1000]), qy[:1000]

    def monitor_batch(self, n: int = 512) -> torch.Tensor:
        """The first n images, resized, not augmented: the same pixels at every check."""
        return self._prepare(self.images[:n])

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim == 3:
            images = images[:, None]
        if images.shape[1] != self.cfg.in_chans:
            images = images[:, :1].expand(-1, self.cfg.in_chans, -1, -1)
        x = images.to(self.device).float() / 255.0
        if x.shape[-1] != self.cfg.crop_size:
            x = torch.nn.functional.interpolate(x, size=(self.cfg.crop_size,) * 2, mode="bilinear",
                                                align_corners=False, antialias=True)
        return normalize_batch(x, self.mean, self.std)


class _SeededTransform(torch.utils.data.Dataset):
    """Seeds the transform of every image from (seed, epoch, index), so crops do not depend on which worker
    loads the image or where a resumed run restarts. torchvision's transforms draw from the global torch and
    Python generators; their states are restored after each image, so with ``num_workers=0`` the training
    process's own stream (drop-path, anything else drawn from the global generator) is left as it was."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        s = stream_seed("image_transform", self.seed, self.epoch, i)
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            try:
                return read_sample(self.dataset, i)  # an unusable file comes back as an Unreadable naming it
            finally:
                random.setstate(py_state)


class LoaderPipeline:
    """Folders (map-style, a resumable sampler) or tar shards (iterable, resumable by itself)."""

    def __init__(self, dataset, cfg: DataConfig, dist: DistInfo, seed: int, device: torch.device,
                 mean: tuple[float, ...], std: tuple[float, ...], eval_dataset):
        self.cfg, self.dist, self.device, self.seed = cfg, dist, device, seed
        self.eval_dataset = eval_dataset
        # Files monitor_batch could not use: reported with the next batch, then not counted again when training
        # first meets them, so each file's occurrences stay one per epoch (see monitor_batch).
        self._monitor_skips: list[Unreadable] = []
        self._counted: set[str] = set()
        # data.gpu_augment: the workers send (canvases, sizes); crops and colour run here, on the device
        self.augment = BatchAugment.from_config(cfg, mean, std) if cfg.gpu_augment else None
        pin = cfg.pin_mem and device.type == "cuda"
        if isinstance(dataset, ShardDataset):  # seeds its own transforms per sample and splits ranks itself
            self.dataset = self.sampler = dataset
            self.loader = build_shard_loader(dataset, cfg.batch_size, num_workers=cfg.num_workers, pin_memory=pin)
        else:
            self.dataset = _SeededTransform(dataset, seed)
            self.loader, self.sampler = build_loader(
                self.dataset, cfg.batch_size, rank=dist.rank, world_size=dist.world_size, seed=seed,
                num_workers=cfg.num_workers, pin_memory=pin, drop_last=True)
        self._steps = len(self.loader)
        if self._steps == 0:  # build_pipeline checks the count first; kept for pipelines built directly
            raise DataError(f"{len(dataset)} images are fewer than {_one_batch(cfg, dist)}")
        self.input_spec = InputSpec(cfg.crop_size, cfg.in_chans, mean, std)

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, int]]:
        if isinstance(self.dataset, _SeededTransform):
            self.dataset.epoch = epoch  # picked up by workers: they are re-created each epoch (no persistence)
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start, self.cfg.batch_size)
        for i, (images, _, skipped) in enumerate(self.loader, start=start):
            skipped = [*self._monitor_skips, *self._not_counted(skipped)]
            self._monitor_skips = []
            if images is None:
                yield None, skipped
                continue
            if self.augment is None:
                yield images.to(self.device, non_blocking=True), skipped
                continue
            canvases, sizes = images
            g = generator_for("gpu_augment", self.seed, self.dist.rank, epoch, i)
            yield self.augment(canvases.to(self.device, non_blocking=True), sizes, g), skipped

    def _not_counted(self, skipped: list) -> list:
        """``skipped`` less the files monitor_batch reported already (once each: a later epoch counts again)."""
        out = []
        for u in skipped:
            if u is not None and u.source in self._counted:
                self._counted.discard(u.source)
                continue
            out.append(u)
        return out

    def knn_sets(self) -> None:
        return None  # folder and shard pipelines: no labelled held-out split to use

    def monitor_batch(self, n: int = 256) -> torch.Tensor:
        """The first n images, not augmented. A file among them that cannot be used is skipped here too and
        reported with the next training batch's skips, standing in for the first time training meets it: the
        run's final line names every file a warning named, also one the training batches never reach (cut off
        by the last partial batch or by the run's end)."""
        if isinstance(self.eval_dataset, _FirstItems):
            items, skipped = self.eval_dataset.items[:n], self.eval_dataset.skipped
        else:
            read = [read_sample(self.eval_dataset, i) for i in range(min(n, len(self.eval_dataset)))]
            items = [it for it in read if not isinstance(it, Unreadable)]
            skipped = [it for it in read if isinstance(it, Unreadable)]
        self._monitor_skips = [u for u in skipped if u is not None]
        self._counted = {u.source for u in self._monitor_skips}
        if not items:
            raise DataError(f"none of the first {len(skipped)} images can be read (first: {skipped[0]}): the "
                            "collapse checks need a fixed batch of readable ones")
        return torch.stack([it[0] for it in items]).to(self.device)


class _FirstItems:
    """The first n usable items of an iterable dataset, indexable (for the fixed monitoring batch), and the
    unusable ones met on the way (``skipped``)."""

    def __init__(self, dataset, n: int):
        self.items, self.skipped = [], []
        for item in dataset:
            if item is None or isinstance(item, Unreadable):
                self.skipped.append(item)
                continue
            self.items.append(item)
            if len(self.items) >= n:
                break

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def _one_batch(cfg: DataConfig, dist: DistInfo) -> str:
    return (f"one batch of {cfg.batch_size} per process × {dist.world_size} process(es): lower data.batch_size or "
            "add images")


def check_channels(cfg: DataConfig, probe: Probe, where: object) -> None:
    """Refuse to train a 1-channel model on colour images: the CPU default's data keys (Fashion-MNIST's 1 channel at
    36 or 28 px) must not carry over silently to a folder of photos. Failing, rather than taking the channels and
    size from the images, because that default's model, patch size and time limit were chosen for 28-px grey
    images: a run at 224 px in colour is another run, which its user should ask for by name."""
    if cfg.in_chans == 1 and probe.colour:
        raise DataError(f"{where} holds colour images but data.in_chans is 1 (the Fashion-MNIST CPU default's, at "
                        f"data.crop_size {cfg.crop_size}): set data.in_chans=3 and a data.crop_size for these images "
                        "(a multiple of mask.patch_size), or start from a config made for image folders, e.g. "
                        "--config imagenette_vits16")


def data_root(cfg: DataConfig) -> str | None:
    """Where the data ``cfg`` names is: a Hugging Face dataset's path, else the root joined with its image folder
    (shards: a URL stays one)."""
    if cfg.dataset == "fashion_mnist":
        return cfg.root_path
    return cfg.hf_path if cfg.dataset == "hf" else join_root(cfg.root_path, cfg.image_folder)


def require_data(cfg: DataConfig) -> None:
    """Fail now, in one line naming the path, if the data ``cfg`` names cannot be there: the check a run makes
    before any work (``ijepa train``'s CPU default makes it before timing its rungs)."""
    require(cfg.dataset, data_root(cfg))


def build_pipeline(cfg: DataConfig, dist: DistInfo, seed: int, device: torch.device):
    """The training data ``cfg`` names, checked before any model is built: a folder or shard set too small for
    one batch, with no readable image, or in colour for a 1-channel model is one :class:`DataError` line. A folder
    with split folders trains on ``train/`` (:mod:`ijepa.data.layout`)."""
    # the config's statistics, else the dataset's default (Fashion-MNIST's own; InputSpec's rule for folders)
    default_mean, default_std = normalisation(cfg.dataset, cfg.in_chans)
    mean, std = cfg.mean or default_mean, cfg.std or default_std
    if cfg.dataset == "fashion_mnist":
        train = open_images("fashion_mnist", cfg.root_path, split="train", limit=cfg.limit)
        test = open_images("fashion_mnist", cfg.root_path, split="test")
        return InMemoryPipeline(train.images, cfg, dist, seed, device, mean, std, train.labels,
                                (test.images, test.labels))
    if cfg.dataset == "hf" and cfg.streaming:  # its own reader, split and resume (data/hf_stream.py)
        stream = HFStreamPipeline(cfg, dist.rank, dist.world_size, seed, device, mean, std)
        check_channels(cfg, stream.probe, stream.where)
        return stream
    # a Hugging Face split map-style (data/hf.py) goes the folders' way from here
    hf = dict(split=cfg.split, name=cfg.hf_name, image_column=cfg.image_column,
              label_column=cfg.label_column) if cfg.dataset == "hf" else {}
    root = data_root(cfg)
    require(cfg.dataset, root)
    transform = make_pretrain_transform(
        crop_size=cfg.crop_size, crop_scale=cfg.crop_scale, horizontal_flip=cfg.use_horizontal_flip,
        color_distortion=cfg.use_color_distortion, color_jitter_strength=cfg.color_jitter_strength,
        gaussian_blur=cfg.use_gaussian_blur, mean=mean, std=std, in_chans=cfg.in_chans)
    eval_tf = make_eval_transform(cfg.crop_size, mean, std, in_chans=cfg.in_chans)
    mode, draft = mode_for(cfg.in_chans), None
    if cfg.gpu_augment:  # the workers only decode; LoaderPipeline augments on the device
        transform = DecodeShrink(cfg.gpu_augment_size or default_max_size(cfg.crop_size), cfg.in_chans)
        draft = 2 * cfg.crop_size
    need, why = cfg.batch_size * dist.world_size, _one_batch(cfg, dist)
    if cfg.dataset == "shards":
        dataset = open_images("shards", root, transform=transform, mode=mode, limit=cfg.limit, rank=dist.rank,
                              world_size=dist.world_size, seed=seed, name_skipped=True,
                              max_pixels=cfg.max_image_pixels)
        check_channels(cfg, require_images(dataset, root, at_least=need, why=why), root)
        eval_ds = open_images("shards", root, transform=eval_tf, mode=mode, shuffle=False, limit=cfg.limit,
                              max_pixels=cfg.max_image_pixels, name_skipped=True)
        return LoaderPipeline(dataset, cfg, dist, seed, device, mean, std, _FirstItems(eval_ds, 256))
    # the limit applies after the canvas wrapper, which needs the folder dataset itself
    dataset = open_images(cfg.dataset, root, transform=transform, mode=mode, draft_size=draft,
                          max_pixels=cfg.max_image_pixels, follow_symlinks=cfg.follow_symlinks, **hf)
    where = dataset_info(dataset)["root"]  # the split folder read: root/train where the root has split folders
    check_channels(cfg, require_images(first(dataset, cfg.limit), where, at_least=need, why=why), where)
    eval_ds = open_images(cfg.dataset, root, transform=eval_tf, mode=mode, max_pixels=cfg.max_image_pixels,
                          follow_symlinks=cfg.follow_symlinks, limit=cfg.limit, **hf)  # the files training reads
    if cfg.gpu_augment:
        dataset = CanvasFolder(dataset)
    return LoaderPipeline(first(dataset, cfg.limit), cfg, dist, seed, device, mean, std, eval_ds)
