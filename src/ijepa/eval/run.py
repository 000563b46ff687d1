"""``ijepa eval``: run protocols on an encoder and its baselines, with features extracted once per model.

A model is a run folder (its ``*-latest.pth.tar``), any file or folder ``ijepa.interop.load`` reads, or a
published model's registry name with ``path=``. Baselines use the same code path: ``random`` is an encoder of
the same architecture and input spec with fresh weights, ``pixels`` the raw [0, 1] pixels (flattened; as
patch tokens for the attentive probe).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from ..data.hf import held_out_split as hf_held_out_split
from ..data.sources import (
    held_out_split,
    mode_for,
    open_images,
    require,
    require_images,
    set_decoding,
    split_folders,
    split_root,
)
from ..data.transforms import make_eval_transform
from ..errors import ConfigError, DataError
from ..interop import load
from ..interop.load import run_checkpoint
from ..metrics import knn_accuracy
from ..models.vit import VisionTransformer
from ..spec import InputSpec
from .attentive import train_attentive_probe
from .extract import extract_features
from .linear import FMNIST_PROBE_TRAIN, FMNIST_PROBE_WD, linear_probe, pixel_features
from .lowshot import lowshot_eval

PROTOCOLS = ("fmnist-probe", "linear", "knn", "lowshot", "attentive")


def find_checkpoint(path: str | Path) -> Path:
    """A run folder -> its latest checkpoint; anything else is returned as is."""
    return Path(run_checkpoint(path))


def load_model(spec: str, which: str = "target_encoder", path: str | None = None) -> VisionTransformer:
    return load(spec, which=which, path=path)


def random_like(encoder: VisionTransformer, seed: int = 0) -> VisionTransformer:
    """A fresh encoder of ``encoder``'s architecture and input spec, its weights drawn from ``seed``; the caller's
    global RNG streams are left as they were (the rule the attentive probe and fine-tuning follow)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rnd = VisionTransformer(**encoder.arch_dict(), input_spec=getattr(encoder, "input_spec", None))
    rnd.source = "random init (same architecture)"
    return rnd.eval()


@dataclass
class Split:
    images: Any                    # uint8 tensor (N, H, W) / (N, C, H, W), or a Dataset of (image, label)
    labels: torch.Tensor


@dataclass
class EvalData:
    name: str
    train: Split
    test: Split
    cache: dict = field(default_factory=dict)

    def prepare(self, spec: dict) -> None:
        """Folders: decode to ``spec`` (the encoder's input: resized, centre-cropped, normalised). In-memory data is
        prepared batch by batch when features are extracted, so it needs nothing here."""
        spec = InputSpec.coerce(spec)
        tf = make_eval_transform(spec.image_size[0], spec.mean, spec.std, in_chans=spec.in_chans)
        for split in (self.train, self.test):
            if not isinstance(split.images, torch.Tensor):
                set_decoding(split.images, tf, mode_for(spec.in_chans))


def fashion_mnist_data(root: str | None = None, limit: int | None = None, n_train: int | None = None) -> EvalData:
    """Fashion-MNIST's two splits, the first ``limit`` images of each; ``n_train`` caps the training split too
    (the fmnist-probe needs only its first 10,000)."""
    caps = [c for c in (limit, n_train) if c]
    tr = open_images("fashion_mnist", root, split="train", limit=min(caps) if caps else None)
    te = open_images("fashion_mnist", root, split="test", limit=limit)
    return EvalData("fashion_mnist", Split(tr.images, tr.labels), Split(te.images, te.labels))


def folder_data(train_dir: str | Path, test_dir: str | Path, limit: int | None = None, seed: int = 0, *,
                follow_symlinks: bool = False, name: str | None = None) -> EvalData:
    """Two image folders with class sub-folders, opened and checked (a readable image in each) but not yet decoded:
    :meth:`EvalData.prepare` gives them the encoder's transform once it is loaded. ``limit``: a seeded random N of
    each split (the first N would be the first classes only)."""
    splits = []
    for folder in (train_dir, test_dir):
        ds = open_images("imagefolder", folder, split=None, follow_symlinks=follow_symlinks)
        require_images(ds, folder)
        labels = torch.tensor(ds.targets)
        if limit and limit < len(ds):
            keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
            ds, labels = Subset(ds, keep.tolist()), labels[keep]
        splits.append(Split(ds, labels))
    return EvalData(name or Path(train_dir).parent.name, *splits)


def hf_data(path: str, split: str | None, limit: int | None = None, seed: int = 0,
            hf: dict | None = None) -> EvalData:
    """A Hugging Face dataset's ``train`` split and ``split`` (default: ``validation``, else ``val``, else ``test``),
    opened and checked as :func:`folder_data` does; labelled (a ClassLabel column, or ``label_column``)."""
    hf = hf or {}
    require("hf", path)
    if split == "train":
        raise ConfigError("eval fits on the train split and tests on --split: give another split")
    test = split or hf_held_out_split(path, hf.get("name"))
    if test is None:
        raise DataError(f"{path}: no validation, val or test split to test on: name one with --split")
    splits = []
    for name in ("train", test):
        ds = open_images("hf", path, split=name, **hf)
        require_images(ds, ds.root)
        labels = torch.tensor(ds.targets)
        if bool((labels < 0).all()):
            raise DataError(f"{ds.root}: no labels (no ClassLabel column): eval's protocols are labelled; name the "
                            "labels' column with --label-column")
        if limit and limit < len(ds):
            keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
            ds, labels = Subset(ds, keep.tolist()), labels[keep]
        splits.append(Split(ds, labels))
    return EvalData(str(path), *splits)


def eval_folders(root: str | None, split: str | None, train_dir: str | None, test_dir: str | None
                 ) -> tuple[Path, Path, str]:
    """The training and test folders of ``--dataset imagefolder`` (:mod:`ijepa.data.layout`): ``ROOT/train`` and
    ``ROOT/<split>`` (default ``val``, else ``test``), or ``--train-dir`` and ``--test-dir``; and the data's name."""
    if train_dir or test_dir:
        if root or not (train_dir and test_dir):
            raise ConfigError("--dataset imagefolder takes --root (with train/ and val/ or test/ split folders), or "
                              "both --train-dir and --test-dir")
        return Path(train_dir), Path(test_dir), Path(train_dir).parent.name
    if not root:
        raise ConfigError("--dataset imagefolder needs --root (with train/ and val/ or test/ split folders), or "
                          "--train-dir and --test-dir")
    require("imagefolder", root)
    if split == "train":
        raise ConfigError("eval fits on train/ and tests on --split: give val or test")
    test = split or held_out_split(root)
    if test is None or "train" not in split_folders(root):
        raise DataError(f"{root!r} has no train/ and val/ (or test/) split folders: eval fits on one split and "
                        "tests on another (or give --train-dir and --test-dir)")
    return split_root("imagefolder", root, "train"), split_root("imagefolder", root, test), Path(root).name


def _features(model: Any, split: Split, pooling: str, batch_size: int, progress: bool) -> tuple:
    if model == "pixels":
        if isinstance(split.images, torch.Tensor):
            x = split.images.float() / 255.0
            return pixel_features(split.images) if pooling != "tokens" else _pixel_tokens(x), split.labels
        feats, labels = [], []
        for img, y in split.images:
            feats.append(img.flatten() if pooling != "tokens" else _pixel_tokens(img[None])[0])
            labels.append(y)
        return torch.stack(feats), torch.tensor(labels)
    if isinstance(split.images, torch.Tensor):
        return extract_features(model, split.images, pooling=pooling, batch_size=batch_size,
                                progress=progress), split.labels
    return extract_features(model, split.images, pooling=pooling, batch_size=batch_size, progress=progress,
                            return_labels=True, prepare=False)


def _pixel_tokens(x: torch.Tensor, patch: int = 4) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None]
    return F.unfold(x.float(), patch, stride=patch).transpose(1, 2)  # (N, patches, C·p·p)


def features(model: Any, key: str, data: EvalData, split: str, pooling: str, batch_size: int = 256,
             progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of one split, extracted once per (model, split, pooling) and reused by every protocol."""
    ck = (key, split, pooling)
    if ck not in data.cache:
        data.cache[ck] = _features(model, getattr(data, split), pooling, batch_size, progress)
    return data.cache[ck]


def run_protocol(protocol: str, model: Any, key: str, data: EvalData, *, pooling: str = "mean",
                 batch_size: int = 512, progress: bool = True, lowshot_shots=(1, 5, 10, "1%"),
                 attentive_epochs: int = 20) -> dict:
    t0 = time.perf_counter()
    if protocol == "fmnist-probe":  # from the same cached features as every other protocol
        if data.name != "fashion_mnist":
            raise ConfigError("the fmnist-probe protocol is defined on Fashion-MNIST only")
        tr, ytr = features(model, key, data, "train", pooling, batch_size, progress)
        te, yte = features(model, key, data, "test", pooling, batch_size, progress)
        n = FMNIST_PROBE_TRAIN
        res = linear_probe(tr[:n], ytr[:n], te, yte, wds=FMNIST_PROBE_WD, seed=0, num_classes=10)
        out = {"accuracy": res["accuracy"], "best_wd": res.get("best_wd"), "n_train": res["n_train"],
               "n_test": res["n_test"]}
    elif protocol == "attentive":
        tr, ytr = features(model, key, data, "train", "tokens", batch_size, progress)
        te, yte = features(model, key, data, "test", "tokens", batch_size, progress)
        res = train_attentive_probe(tr, ytr, te, yte, epochs=attentive_epochs, progress=progress)
        out = {"accuracy": res["accuracy"]}
    else:
        tr, ytr = features(model, key, data, "train", pooling, batch_size, progress)
        te, yte = features(model, key, data, "test", pooling, batch_size, progress)
        if protocol == "linear":
            res = linear_probe(tr, ytr, te, yte)
            out = {"accuracy": res["accuracy"], "best_wd": res.get("best_wd")}
        elif protocol == "knn":
            out = {"accuracy": knn_accuracy(tr, ytr, te, yte, k=20, T=0.07)}
        elif protocol == "lowshot":
            res = lowshot_eval(tr, ytr, te, yte, shots=lowshot_shots)
            out = {"shots": {str(k): {"mean": m, "std": s} for k, (m, s) in res.items()}}
        else:
            raise ConfigError(f"unknown protocol '{protocol}' (choose from {', '.join(PROTOCOLS)})")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def evaluate(model_spec: str, protocols: list[str], *, baselines: list[str] = (), which: str = "target_encoder",
             path: str | None = None, dataset: str = "fashion_mnist", root: str | None = None,
             split: str | None = None, train_dir: str | None = None, test_dir: str | None = None,
             limit: int | None = None, pooling: str = "mean", batch_size: int = 512, progress: bool = True,
             attentive_epochs: int = 20, follow_symlinks: bool = False, hf: dict | None = None) -> dict:
    """{"models": {name: {"source": ..., protocol: result}}, ...}; names: "pretrained", "random", "pixels".

    ``dataset``: ``fashion_mnist`` (fit on its training set, test on its test set) or ``imagefolder``: ``root``'s
    ``train/`` and ``split`` folder (default ``val/``, else ``test/``), or ``train_dir`` and ``test_dir``; or ``hf``:
    the Hugging Face dataset at ``root`` (``hf``: its name and columns), its train split and ``split``."""
    for p in protocols:
        if p not in PROTOCOLS:
            raise ConfigError(f"unknown protocol '{p}' (choose from {', '.join(PROTOCOLS)})")
    for b in baselines:
        if b not in ("random", "pixels"):
            raise ConfigError(f"unknown baseline '{b}' (random, pixels)")
    # the data first: a wrong path, an empty folder or unreadable images are one line before any model is read
    if dataset == "folder":
        raise ConfigError("eval's protocols are labelled: --dataset folder reads every image unlabelled; give "
                          "--dataset imagefolder (class sub-folders) with --root, or --train-dir and --test-dir")
    if "fmnist-probe" in protocols and dataset != "fashion_mnist":
        raise ConfigError("the fmnist-probe protocol is defined on Fashion-MNIST only")
    if dataset == "fashion_mnist":
        require("fashion_mnist", root)
        if split not in (None, "test"):
            raise ConfigError(f"Fashion-MNIST is evaluated on its test split, not {split!r}")
    elif dataset == "imagefolder":
        train_folder, test_folder, name = eval_folders(root, split, train_dir, test_dir)
        data = folder_data(train_folder, test_folder, limit, follow_symlinks=follow_symlinks, name=name)
    elif dataset == "hf":
        data = hf_data(root, split, limit, hf=hf)
    else:
        raise ConfigError(f"unknown dataset '{dataset}' (fashion_mnist, imagefolder, hf)")
    encoder = load_model(model_spec, which, path)
    models: dict[str, Any] = {"pretrained": encoder}
    for b in baselines:
        models[b] = random_like(encoder) if b == "random" else "pixels"
    if dataset == "fashion_mnist":
        # the fmnist-probe alone reads only the training images it fits on
        only_probe = set(protocols) == {"fmnist-probe"}
        data = fashion_mnist_data(root, limit, n_train=FMNIST_PROBE_TRAIN if only_probe else None)
    else:
        data.prepare(encoder.input_spec)
    results: dict[str, Any] = {"model": str(model_spec), "dataset": data.name, "pooling": pooling, "models": {}}
    for name, model in models.items():
        entry = {"source": getattr(model, "source", "raw pixels") if model != "pixels" else "raw pixels"}
        for p in protocols:
            entry[p] = run_protocol(p, model, name, data, pooling=pooling, batch_size=batch_size,
                                    progress=progress, attentive_epochs=attentive_epochs)
        results["models"][name] = entry
    return results


def format_table(results: dict) -> str:
    protocols = [k for k in next(iter(results["models"].values())) if k != "source"]
    cols = []
    for p in protocols:
        first = results["models"]["pretrained"][p]
        cols += [f"{p} {k}-shot" for k in first["shots"]] if "shots" in first else [p]
    width = max(12, *(len(c) for c in cols))
    lines = [f"{'model':<12}" + "".join(f"{c:>{width + 2}}" for c in cols)]
    for name, entry in results["models"].items():
        cells = []
        for p in protocols:
            r = entry[p]
            if "shots" in r:
                cells += [f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}" for v in r["shots"].values()]
            else:
                cells.append(f"{100 * r['accuracy']:.2f}%")
        lines.append(f"{name:<12}" + "".join(f"{c:>{width + 2}}" for c in cells))
    return "\n".join(lines)


def save_results(results: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))
    return path

