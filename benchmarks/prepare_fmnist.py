"""Copy Fashion-MNIST's four IDX files (gzipped, about 30 MB) into ``shared/fmnist/`` at the repository's root.

    python benchmarks/prepare_fmnist.py                     # from /usr/share/datasets/fashion-mnist
    python benchmarks/prepare_fmnist.py --src DIR --dst DIR

A ``shared/`` folder travels with the working tree to a GPU machine that has no copy of the dataset (it is
git-ignored), where the GPU check's ``learn`` section (benchmarks/gpu_check_learn.py) reads it. Each file is read
whole first (its IDX header and size checked), then copied under a temporary name and renamed into place; a file
already there with the same bytes is left alone.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
from pathlib import Path

from gpu_check_learn import DEBIAN, FILES, SHARED

from ijepa.data.fashion_mnist import read_idx


def prepare(src: Path, dst: Path) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for stem in FILES:
        path = next((p for p in (src / f"{stem}.gz", src / stem) if p.is_file()), None)
        if path is None:
            sys.exit(f"prepare_fmnist: {src} has no {stem}[.gz]; install it with `apt-get install -y "
                     "dataset-fashion-mnist` or give --src")
        shape = read_idx(path).shape  # a torn or foreign file stops here, before anything is copied over
        target = dst / path.name
        if not (target.is_file() and filecmp.cmp(path, target, shallow=False)):
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        written.append(target)
        print(f"{target} {tuple(shape)}")
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=DEBIAN, help=f"the IDX files (default {DEBIAN})")
    p.add_argument("--dst", type=Path, default=SHARED, help=f"where to put them (default {SHARED})")
    args = p.parse_args()
    files = prepare(args.src, args.dst)
    print(f"{len(files)} files, {sum(f.stat().st_size for f in files) / 2**20:.1f} MiB in {args.dst}")


if __name__ == "__main__":
    main()
