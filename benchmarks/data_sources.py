"""Images/s through the training loader from each data source, on the same images.

    python benchmarks/data_sources.py                         # 1,000 small JPEGs, 2 loader workers, 2 rounds
    python benchmarks/data_sources.py --n 2000 --workers 4 --rounds 3 --json benchmarks/results/data_sources.json

The same synthetic JPEGs (loader.py's ImageNet-like noise at 128 x 96 and 96 x 128 pixels, in 10 class folders)
are read by the loader a training run builds (``build_pipeline`` in ijepa/train/inputs.py: its worker transforms at
``--crop`` pixels, its collate, its batches) from:

1. the local folder (``data.dataset=imagefolder``);
2. local tar shards of them (``data.dataset=shards``, written by ``write_shards`` as ``ijepa shards`` does);
3. those shards over HTTP, from ``python -m http.server`` on 127.0.0.1;
4. those shards over S3, from moto's server (``python -m moto.server``) on 127.0.0.1, uploaded by the shard writer;
5. the same files as a Hugging Face dataset saved with ``save_to_disk`` (``data.dataset=hf``), map-style;
6. that dataset streamed (``data.streaming=true``: rows read in the training process, decoded by the workers).

Each row is images/s over ``--epochs`` epochs after the first batch (loader start-up is not throughput), the best of
``--rounds`` rounds taken in turn (a busy machine favours no row), and its ratio to the local folder. Both servers
are processes of their own. On 127.0.0.1 the network costs little: the remote rows show the reader's own overhead
(fsspec, one request or stream per shard, tar parsing), not a real store's latency or bandwidth.

:func:`measure` takes any ``data.dataset`` kind and root a training config takes, plus config overrides: another
source is one more row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import make_jpegs  # noqa: E402

from ijepa.config import load_config  # noqa: E402
from ijepa.data.shards.writer import write_shards  # noqa: E402
from ijepa.train.distributed import DistInfo  # noqa: E402
from ijepa.train.inputs import build_pipeline  # noqa: E402

SIZES = ((96, 128), (128, 96))  # (h, w)
BUCKET = "ijepa-bench"


def save_as_hf(train: Path, dst: Path) -> Path:
    """The class-folder tree ``train`` as a ``datasets`` split (``image``: each file's bytes, ``label``: a ClassLabel
    of the class folders), written with ``save_to_disk`` to ``dst``: what ``data.hf_path`` reads."""
    import datasets

    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((train / c).iterdir())]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    data = datasets.Dataset.from_dict({"image": [{"bytes": f.read_bytes(), "path": f.name} for f, _ in files],
                                       "label": [y for _, y in files]}, features=features)
    data.save_to_disk(str(dst))
    return dst


def measure(kind: str, root: str | None, *, overrides: Sequence[str] = (), workers: int = 2, batch: int = 32,
            crop: int = 64, epochs: int = 2) -> float:
    """Images/s of the training loader for ``data.dataset=kind`` at ``data.root_path=root`` (``overrides`` after,
    e.g. a kind's own keys), over ``epochs`` epochs after the first batch."""
    keys = [f"data.dataset={kind}", "data.in_chans=3", f"data.crop_size={crop}", "mask.patch_size=8",
            f"data.batch_size={batch}", f"data.num_workers={workers}", "data.limit=null", "data.pin_mem=false"]
    if root is not None:
        keys.append(f"data.root_path={root}")
    cfg = load_config(None, [*keys, *overrides])
    data = build_pipeline(cfg.data, DistInfo(), cfg.meta.seed, torch.device("cpu"))
    count, t0 = 0, None
    for epoch in range(epochs):
        for images, _ in data.epoch(epoch):
            if images is None:
                continue
            if t0 is None:
                t0 = time.perf_counter()
                continue
            count += images.shape[0]
    return count / (time.perf_counter() - t0) if count else float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(args: list[str], port: int) -> Iterator[str]:
    """A server process listening on 127.0.0.1:``port``, stopped on leaving; its base URL."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{' '.join(args)} did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="synthetic JPEGs")
    p.add_argument("--workers", type=int, default=2, help="loader worker processes (data.num_workers)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crop", type=int, default=64, help="data.crop_size")
    p.add_argument("--epochs", type=int, default=2, help="epochs per measurement")
    p.add_argument("--rounds", type=int, default=2, help="measurements of each source, in turn; the best is kept")
    p.add_argument("--max-count", type=int, default=100, help="images per shard")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="ijepa-sources-") as tmp:
        folder = make_jpegs(Path(tmp) / "images", args.n, sizes=SIZES)
        served = Path(tmp) / "served"
        write_shards(folder, served / "shards", max_count=args.max_count, check_images=True)
        http_port, s3_port = _free_port(), _free_port()
        http_args = ["-m", "http.server", str(http_port), "--bind", "127.0.0.1", "--directory", str(served)]
        with _server(http_args, http_port) as http_url, \
                _server(["-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], s3_port) as s3_url:
            os.environ.update(AWS_ENDPOINT_URL=s3_url, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                              AWS_DEFAULT_REGION="us-east-1")
            import boto3

            boto3.client("s3", endpoint_url=s3_url).create_bucket(Bucket=BUCKET)
            write_shards(folder, f"s3://{BUCKET}/shards", max_count=args.max_count, check_images=True)
            hf_dir = save_as_hf(folder, Path(tmp) / "hf")
            sources = {"local folder (imagefolder)": ("imagefolder", str(folder), []),
                       "local shards": ("shards", str(served / "shards"), []),
                       "shards over HTTP (http.server, 127.0.0.1)": ("shards", f"{http_url}/shards", []),
                       "shards over S3 (moto, 127.0.0.1)": ("shards", f"s3://{BUCKET}/shards", []),
                       "HF dataset, save_to_disk (map-style)": ("hf", None, [f"data.hf_path={hf_dir}"]),
                       "HF dataset, save_to_disk (streaming)": ("hf", None, [f"data.hf_path={hf_dir}",
                                                                             "data.streaming=true"])}
            best = dict.fromkeys(sources, 0.0)
            for r in range(args.rounds):
                for name, (kind, root, extra) in sources.items():
                    rate = measure(kind, root, overrides=extra, workers=args.workers, batch=args.batch,
                                   crop=args.crop, epochs=args.epochs)
                    best[name] = max(best[name], rate)
                    print(f"round {r + 1}: {name}: {rate:.0f} images/s", flush=True)

    base = best["local folder (imagefolder)"]
    print(f"\n{args.n} JPEGs of {SIZES[0][1]} x {SIZES[0][0]} px, crop {args.crop}, batch {args.batch}, "
          f"{args.workers} workers, best of {args.rounds} rounds of {args.epochs} epochs:")
    rows = []
    for name, rate in best.items():
        rows.append({"source": name, "images_per_s": rate, "vs_local_folder": rate / base})
        print(f"  {name:<44} {rate:8.0f} images/s  {rate / base:5.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
