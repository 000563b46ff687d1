"""``ijepa finetune``: from a model and a dataset to a fine-tuned classifier folder, its log and metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ...data.hf import held_out_split as hf_held_out_split
from ...data.preprocess import resolve_input_spec
from ...data.sources import open_images, require
from ...device import resolve_device
from ...errors import ConfigError, DataError
from ...interop import load
from ...interop.modelcard import choose_license, from_reference, model_card
from ..linear import stratified_split
from .config import FinetuneConfig
from .files import save_hf_classifier
from .loop import finetune


def load_image_folder(root: str | os.PathLike, input_spec: dict, *, classes: list[str] | None = None,
                      progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode an ImageNet-style folder (``root/<class>/<image>``) once into memory: uint8 (N, C, H, W) at the
    encoder's input size (short side resized, bicubic, then centre-cropped), labels, class names. Unreadable
    images are skipped with a warning. ``classes``: the class list to match (a val split must have the
    training split's classes). Memory is N·C·H·W bytes: meant for up to ~10^5 images at 224 px."""
    return _decode_all("imagefolder", root, input_spec, classes=classes, progress=progress)


def _decode_all(kind: str, root: str | os.PathLike, input_spec: dict, *, classes: list[str] | None = None,
                progress: bool = True, **options: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """:func:`load_image_folder` for a dataset of ``kind`` (``imagefolder``, or ``hf`` with its ``options``:
    split, name, columns)."""
    spec = resolve_input_spec(None, input_spec)
    h, w = spec["image_size"]
    mode = "L" if spec["in_chans"] == 1 else "RGB"
    from torchvision import transforms as T  # imported where used: ijepa.data.transforms says why

    tf = T.Compose([T.Resize(max(h, w), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop((h, w)),
                    T.PILToTensor()])
    ds = open_images(kind, root, split=options.pop("split", None), transform=tf, mode=mode, **options)
    if kind == "hf":
        if ds.classes is None:
            raise DataError(f"{ds.root}: no ClassLabel column: a classifier needs named classes (the labels' column "
                            "as a ClassLabel feature)")
        root = ds.root
    if classes is not None and list(ds.classes) != list(classes):
        raise DataError(f"{root}: classes {ds.classes} differ from the training split's {classes}")
    c = 1 if mode == "L" else 3
    images = torch.empty((len(ds), c, h, w), dtype=torch.uint8)
    labels = torch.empty(len(ds), dtype=torch.long)
    n = 0
    for i in tqdm(range(len(ds)), disable=not progress, desc=f"decoding {Path(root).name}", unit="img"):
        item = ds[i]
        if item is None:
            continue
        images[n], labels[n] = item[0], item[1]
        n += 1
    if n == 0:
        raise DataError(f"{root}: no readable images")
    return images[:n].clone() if n < len(ds) else images, labels[:n].clone(), list(ds.classes)


def _folder_splits(images_dir: Path, spec: dict, val_fraction: float, seed: int, progress: bool):
    train_dir = images_dir / "train"
    val_dir = next((images_dir / v for v in ("val", "test") if (images_dir / v).is_dir()), None)
    if train_dir.is_dir() and val_dir is not None:
        xtr, ytr, classes = load_image_folder(train_dir, spec, progress=progress)
        xva, yva, _ = load_image_folder(val_dir, spec, classes=classes, progress=progress)
        return xtr, ytr, xva, yva, classes, f"{train_dir.name} / {val_dir.name}"
    if not 0 < val_fraction < 1:
        raise ConfigError(f"finetune.val_fraction must be in (0, 1), got {val_fraction!r}")
    x, y, classes = load_image_folder(images_dir, spec, progress=progress)
    tr, va = stratified_split(y, val_fraction, seed)
    return x[tr], y[tr], x[va], y[va], classes, f"stratified {val_fraction:g} held out"


def _hf_splits(path: str, hf: dict, split: str | None, spec: dict, val_fraction: float, seed: int,
               progress: bool):
    """A Hugging Face dataset's train split and ``split`` (default validation, else val, else test), or without one
    ``val_fraction`` of each class of train held out; as :func:`_folder_splits` returns them."""
    if split == "train":
        raise ConfigError("finetune trains on the train split: --split names the one validated on")
    split = split or hf_held_out_split(path, hf.get("name"))
    xtr, ytr, classes = _decode_all("hf", path, spec, progress=progress, split="train", **hf)
    if split is not None:
        xva, yva, _ = _decode_all("hf", path, spec, classes=classes, progress=progress, split=split, **hf)
        return xtr, ytr, xva, yva, classes, f"train / {split}"
    if not 0 < val_fraction < 1:
        raise ConfigError(f"finetune.val_fraction must be in (0, 1), got {val_fraction!r}")
    tr, va = stratified_split(ytr, val_fraction, seed)
    return xtr[tr], ytr[tr], xtr[va], ytr[va], classes, f"stratified {val_fraction:g} held out"


def _random_n(n: int, seed: int, xtr, ytr, xva, yva):
    """A seeded random ``n`` of each split, in their order (the first ``n`` would be the first classes only)."""
    g = torch.Generator().manual_seed(seed)
    itr = torch.randperm(len(xtr), generator=g)[:n].sort().values
    iva = torch.randperm(len(xva), generator=g)[:n].sort().values
    return xtr[itr], ytr[itr], xva[iva], yva[iva]


def run_finetune(src: str | os.PathLike, out_dir: str | os.PathLike, *, cfg: FinetuneConfig | None = None,
                 dataset: str = "fashion_mnist", images_dir: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None, limit: int | None = None, which: str = "target_encoder",
                 path: str | None = None, device: str = "auto", export_hf: str | os.PathLike | None = None,
                 val_fraction: float = 0.1, progress: bool = True, split: str | None = None,
                 hf: dict | None = None, license: str | None = None) -> dict[str, Any]:
    """``ijepa finetune``: load ``src``, fine-tune it, write everything under ``out_dir``.

    Args:
        src: anything ``ijepa.load`` reads.
        out_dir: the folder for ``finetune_log.csv``, ``metrics.json`` and ``model/``.
        cfg: the hyper-parameters (default: ``FinetuneConfig()``).
        dataset: ``"fashion_mnist"``: train on the training set, validate on the 10,000 test images.
        images_dir: instead, a folder of class sub-folders; with ``train/`` and ``val/`` (or ``test/``)
            sub-folders those are the splits, else ``val_fraction`` of each class is held out.
        root: the Fashion-MNIST folder.
        limit: the first N images of each Fashion-MNIST split, or a seeded random N of each folder split.
        which: ``"target_encoder"`` or ``"encoder"``, as for ``ijepa.load``.
        path: the checkpoint file, when ``src`` is a published model's name.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        export_hf: also write a transformers ``IJepaForImageClassification`` folder there.
        val_fraction: with ``images_dir`` and no validation folder (or a ``hf`` dataset with no held-out split).
        progress: show progress bars.
        split: with ``dataset="hf"``: the split validated on (default validation, else val, else test).
        hf: with ``dataset="hf"`` (``root`` its Hub id or local folder): its name and columns.
        license: with ``export_hf``: the licence its model card states (``ijepa.interop.modelcard``).

    Returns:
        ``finetune``'s result plus the run's description (``src``, ``source``, ``dataset``, ``split``,
        ``classes``, ``out_dir``, and ``export_hf``).
    """
    cfg = (cfg or FinetuneConfig()).validate()
    if limit is not None and limit < 1:
        raise ConfigError(f"finetune.limit must be >= 1, got {limit!r}")
    if images_dir is not None:  # the data first: a wrong path is one line before any model is read
        require("imagefolder", images_dir)
    elif dataset == "fashion_mnist":
        require("fashion_mnist", root)
    elif dataset == "hf":
        require("hf", root)
    else:
        raise ConfigError(f"unknown dataset {dataset!r} (fashion_mnist, or pass an image folder)")
    encoder = load(src, which=which, path=path)
    if export_hf:  # a licence the card cannot state is one line before any training
        choose_license(license, from_reference(getattr(encoder, "source", "") or "", src))
    spec = resolve_input_spec(encoder)
    if images_dir is not None:
        xtr, ytr, xva, yva, classes, split = _folder_splits(Path(images_dir), spec, val_fraction, cfg.seed,
                                                            progress)
        name = Path(images_dir).name
    elif dataset == "hf":
        xtr, ytr, xva, yva, classes, split = _hf_splits(os.fspath(root), dict(hf or {}), split, spec, val_fraction,
                                                        cfg.seed, progress)
        name = os.fspath(root)
    else:
        tr = open_images("fashion_mnist", root, split="train", limit=limit)
        va = open_images("fashion_mnist", root, split="test", limit=limit)
        xtr, ytr, xva, yva = tr.images, tr.labels, va.images, va.labels
        classes, split, name = list(tr.classes), "train / test", "fashion_mnist"
    if limit and (images_dir is not None or dataset == "hf"):  # Fashion-MNIST's first N are read above
        xtr, ytr, xva, yva = _random_n(limit, cfg.seed, xtr, ytr, xva, yva)
    id2label = dict(enumerate(classes))
    meta = {"src": str(src), "source": getattr(encoder, "source", ""), "dataset": name, "split": split,
            "classes": classes}
    res = finetune(encoder, xtr, ytr, xva, yva, cfg, out_dir, num_classes=len(classes), id2label=id2label,
                   device=resolve_device(device), progress=progress, meta=meta)
    res.update(meta)
    res["out_dir"] = str(out_dir)
    if export_hf:
        card = model_card(res["model"].encoder, src=src, license=license, classifier=res)
        res["export_hf"] = str(save_hf_classifier(res["model"], export_hf, id2label, card=card))
        metrics_path = Path(out_dir) / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        metrics["export_hf"] = res["export_hf"]
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    return res


def format_history(res: dict[str, Any]) -> str:
    """The per-epoch table ``ijepa finetune`` prints."""
    lines = [f"{'epoch':>5}  {'train loss':>10}  {'val loss':>8}  {'val top-1':>9}"]
    for r in res["history"]:
        lines.append(f"{r['epoch']:>5}  {r['train_loss']:>10.4f}  {r['val_loss']:>8.4f}  "
                     f"{100 * r['val_top1']:>8.2f}%")
    return "\n".join(lines)
