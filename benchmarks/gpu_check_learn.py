"""The GPU check's ``learn`` section: does the project learn on this device, not only run fast.

What ``ijepa train --config fmnist_cpu`` runs, on the device for a fixed number of minutes
(``optimization.minutes``: the time limit plans the steps that fit and anneals the schedules to the last of them),
then what ``ijepa eval RUN --protocol fmnist-probe --baselines random`` runs: the fmnist-probe of the trained target
encoder beside a random-init encoder of the same architecture. Both run in the section's own process (one
start-up). A pretrained encoder that probes no better than the random one has learned nothing.

The images are read from ``shared/fmnist/`` at the repository's root when it holds the four IDX files (``python
benchmarks/prepare_fmnist.py`` copies them there, so that they travel with the working tree to a machine without
the Debian package), else from /usr/share/datasets/fashion-mnist.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "shared" / "fmnist"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
# what the section keeps for its start-up, the data's loading and the two probes (seconds)
PROBE_S = 45.0
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def has_fmnist(folder: Path) -> bool:
    return all((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in FILES)


def fmnist_folder() -> Path:
    """shared/fmnist when it holds the IDX files, else the Debian package's folder."""
    for folder in (SHARED, DEBIAN):
        if has_fmnist(folder):
            return folder
    raise FileNotFoundError(f"no Fashion-MNIST IDX files in {SHARED} or {DEBIAN}: run `python "
                            "benchmarks/prepare_fmnist.py` where the Debian package dataset-fashion-mnist is installed")


def sec_learn(sh, rec, args: dict) -> None:
    """Train for ``sh.learn_minutes``, then probe the trained and a random-init encoder (their accuracies)."""
    from ijepa.config import load_config
    from ijepa.eval.run import evaluate
    from ijepa.train.loop import train

    data = fmnist_folder()
    # a section started with less than its whole time box left trains for less, keeping PROBE_S for the probes
    minutes = round(min(sh.learn_minutes, max(0.1, (args["timeout"] - PROBE_S) / 60)), 2)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_learn_"))
    try:
        run = tmp / "run"
        overrides = [f"data.root_path={data}", f"meta.device={sh.device}", f"optimization.minutes={minutes}",
                     "logging.progress=false", "meta.load_checkpoint=false", *sh.learn_overrides]
        rec.update(data=str(data), minutes=minutes,
                   command=" ".join(["ijepa", "train", "--config", "fmnist_cpu", "--out", "RUN", *overrides]))
        t = time.perf_counter()
        summary = train(load_config("fmnist_cpu", overrides), run)
        rec.update(train_s=time.perf_counter() - t, **{k: summary.get(k) for k in (
            "steps", "epochs", "final_loss", "images_per_s", "precision", "device", "knn")})
        if not summary["steps"]:
            raise RuntimeError(f"no step trained in {minutes} min: {summary}")
        t = time.perf_counter()
        results = evaluate(str(run), ["fmnist-probe"], baselines=["random"], root=str(data),
                           limit=sh.learn_probe_limit, progress=False)
        acc = {name: results["models"][name]["fmnist-probe"]["accuracy"] for name in ("pretrained", "random")}
        rec.update(probe_s=time.perf_counter() - t, probe_accuracy=acc["pretrained"], random_accuracy=acc["random"],
                   probe_images=sh.learn_probe_limit or "the protocol's (10,000 train, 10,000 test)",
                   learned=acc["pretrained"] > acc["random"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
