"""The documentation's examples, run.

Every ```python, ```bash, ```sh, ```shell and ```console block in README.md and docs/ (not
docs/experiments/, whose reports record commands as they were run) either runs here or is marked, on the line
before it, with ``<!-- example: needs-network -->``, ``needs-gpu``, ``long`` (it trains for minutes) or ``output``
(it shows printed output). A page's unmarked blocks run in order in one temporary folder, as a reader following
the page would run them (a later block may use what an earlier one wrote): shell blocks with ``bash -e``, and each
``ijepa`` command and Python block as a process forked from a server that has already imported torch and ijepa
(tests/prewarmed.py: the same command, environment and streams, without its 2-3 s of imports), offline
(``IJEPA_OFFLINE``, ``HF_HUB_OFFLINE``), with what the examples assume already there:

- ``runs/quickstart``: a tiny trained run (ViT-tiny width at depth 1) standing in for the quick start's;
- ``photos/``: a few generated images in class folders, ``photos/train/<class>/`` and ``photos/val/<class>/``;
- Fashion-MNIST: the first 512 training and 256 test images of the real set, through ``$IJEPA_FASHION_MNIST``.

The commands that train are made small the way a user would: ``ijepa train`` gets tiny-model overrides after the
example's own (a later key wins), and ``train-decoder``, ``finetune``, ``viz predict``, ``viz features`` and
``eval``'s attentive probe get short lengths after theirs; in Python, ``ijepa.load_config`` appends the same
overrides. ``eval`` runs without its baselines (the same code on other models, which tests/test_eval.py covers):
their probe fits are what costs time here. So each example runs as written, at a size a test affords.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import PREWARMED  # each command runs in a process forked from one that has imported torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FMNIST = Path(os.environ.get("IJEPA_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))

CHECKED = ("python", "bash", "sh", "shell", "console")
MARKERS = ("needs-network", "needs-gpu", "long", "output")
MARKER_RE = re.compile(r"^\s*<!--\s*example:\s*(\S+)\s*-->\s*$")
FENCE_RE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")

# Appended to every `ijepa train` of an example (and to `ijepa.load_config` in Python): a run of milliseconds.
TRAIN_OVERRIDES = ("meta.model_name=vit_tiny meta.enc_depth=1 meta.pred_depth=1 meta.pred_emb_dim=48 "
                   "data.batch_size=16 data.limit=64 data.num_workers=0 optimization.epochs=2 optimization.warmup=0.5 "
                   "logging.progress=false logging.log_freq=2 logging.checkpoint_freq=0")


SHELL_PREAMBLE = r"""
command_ijepa() { python "$IJEPA_PREWARMED_CLIENT" ijepa "$@"; }
# The examples' commands at a test's size: each gets its short lengths after the example's own arguments.
ijepa() {
  case "$1" in
    train) command_ijepa "$@" $IJEPA_DOCS_TRAIN ;;
    train-decoder)
      case " $* " in
        *" --steps "*) command_ijepa "$@" --steps 10 --train-images 256 --val-images 128 ;;
        *) command_ijepa "$@" --minutes 0.05 --train-images 256 --val-images 128 ;;
      esac ;;
    finetune) command_ijepa "$@" --epochs 1 --limit 256 --no-progress ;;
    eval) command_ijepa "$@" --baselines '' --attentive-epochs 2 --no-progress ;;
    viz)
      case "$2" in
        predict) command_ijepa "$@" --gallery 256 --measure 32 --judge-images 256 --judge-steps 20 --sample-steps 4 ;;
        features) command_ijepa "$@" --fit 64 ;;
        *) command_ijepa "$@" ;;
      esac ;;
    *) command_ijepa "$@" ;;
  esac
}
"""

PYTHON_PREAMBLE = """\
import os as _os
import shlex as _shlex

import ijepa as _ijepa
import ijepa.config as _config

_load_config = _config.load_config


def _small_load_config(name_or_path=None, overrides=None):  # the example's overrides, then the test's
    return _load_config(name_or_path, [*(overrides or []), *_shlex.split(_os.environ["IJEPA_DOCS_TRAIN"])])


_config.load_config = _ijepa.load_config = _small_load_config
"""


@dataclass(frozen=True)
class Block:
    page: Path
    line: int      # the opening fence's line, 1-based
    lang: str
    code: str
    marker: str | None

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page.name
        return f"{page}:{self.line}"


def doc_pages() -> list[Path]:
    """README.md and every page under docs/ but the experiment reports."""
    pages = [ROOT / "README.md"] + sorted(p for p in DOCS.rglob("*.md") if "experiments" not in p.parts)
    return [p for p in pages if p.is_file()]


def fenced_blocks(page: Path) -> list[Block]:
    """Every fenced code block of a page, with its language and the marker on the line before it."""
    lines = page.read_text().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        prev = lines[i - 1] if i > 0 else ""
        marker = MARKER_RE.match(prev).group(1) if MARKER_RE.match(prev) else None
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        blocks.append(Block(page, i + 1, lang.lower(), "\n".join(body) + "\n", marker))
        i = j + 1
    return blocks


def example_blocks(page: Path) -> list[Block]:
    return [b for b in fenced_blocks(page) if b.lang in CHECKED]


def runnable(page: Path) -> list[Block]:
    return [b for b in example_blocks(page) if b.marker is None]


# ------------------------------------------------------------------------------------------------ the markers


def test_every_example_runs_or_is_marked():
    """Each example is run by test_every_page_runs (unmarked) or carries one of the markers; nothing else."""
    problems, counts = [], {"runs": 0, **{m: 0 for m in MARKERS}}
    for page in doc_pages():
        for b in fenced_blocks(page):
            if b.marker is not None and b.marker not in MARKERS:
                problems.append(f"{b.where}: unknown marker {b.marker!r} (use one of {', '.join(MARKERS)})")
            elif b.marker is not None and b.lang not in CHECKED:
                problems.append(f"{b.where}: a marker before a ```{b.lang or '(no language)'} block, which is "
                                "never run: drop the marker")
            elif b.lang in CHECKED:
                counts["runs" if b.marker is None else b.marker] += 1
    assert not problems, "\n".join(problems)
    run_by_pages = sum(len(runnable(p)) for p in pages_with_examples())
    assert run_by_pages == counts["runs"], "every unmarked example must belong to a page that runs"
    print(f"examples: {counts}")


def pages_with_examples() -> list[Path]:
    return [p for p in doc_pages() if runnable(p)]


def test_marker_parsing_sees_the_line_before_the_fence(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n\n<!-- example: long -->\n```bash\nsleep 600\n```\n\n```python\nprint(1)\n```\n"
                    "<!-- example: output -->\n```console\n$ ok\n```\n")
    got = [(b.lang, b.marker, b.code) for b in fenced_blocks(page)]
    assert got == [("bash", "long", "sleep 600\n"), ("python", None, "print(1)\n"), ("console", "output", "$ ok\n")]


# ------------------------------------------------------------------------------------------------ the examples


def _write_fmnist_subset(dst: Path, n_train: int = 512, n_test: int = 256) -> None:
    """The first images of the real Fashion-MNIST as IDX files: what the CPU examples read, at a test's size."""
    from ijepa.data.fashion_mnist import load_fashion_mnist

    dst.mkdir(parents=True)
    for train, n, prefix in ((True, n_train, "train"), (False, n_test, "t10k")):
        x, y = load_fashion_mnist(FMNIST, train=train)
        for array, kind in ((x[:n].numpy().astype(np.uint8), "images-idx3"), (y[:n].numpy().astype(np.uint8),
                                                                                "labels-idx1")):
            header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            with gzip.open(dst / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.tobytes())


def _write_photos(dst: Path) -> None:
    """Three classes of generated 40-px JPEGs: 16 training and 4 validation images each."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 4)):
        for c, cls in enumerate(("discs", "squares", "stripes")):
            folder = dst / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = Image.fromarray(rng.integers(0, 60, (40, 40, 3), dtype=np.uint8))
                draw, (x, y), r = ImageDraw.Draw(img), rng.integers(8, 32, 2), int(rng.integers(5, 9))
                colour = tuple(int(v) for v in rng.integers(150, 255, 3))
                if c == 0:
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
                elif c == 1:
                    draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
                else:
                    for k in range(0, 40, 6):
                        draw.line((k, 0, k, 39), fill=colour, width=2)
                img.save(folder / f"{cls}_{i}.jpg", quality=90)


def _env(home: Path, fmnist: Path, threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""), HOME=str(home),
               IJEPA_FASHION_MNIST=str(fmnist), IJEPA_HOME=str(home / ".cache" / "ijepa"), IJEPA_OFFLINE="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(home / ".cache" / "huggingface"),
               MPLBACKEND="Agg", IJEPA_DOCS_TRAIN=TRAIN_OVERRIDES, PYTHONWARNINGS="ignore",
               IJEPA_PREWARMED_CLIENT=str(PREWARMED))
    return env


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    """A folder holding what the examples assume: Fashion-MNIST's subset, photos/ and runs/quickstart."""
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists() and not (FMNIST / "train-images-idx3-ubyte").exists():
        pytest.skip(f"Fashion-MNIST is not installed at {FMNIST}")
    base = tmp_path_factory.mktemp("docs-fixtures")
    _write_fmnist_subset(base / "fashion-mnist")
    _write_photos(base / "work" / "photos")
    env = _env(base, base / "fashion-mnist")
    cmd = ["ijepa", "train", "--config", "fmnist_cpu", "--out", "runs/quickstart", *TRAIN_OVERRIDES.split()]
    done = subprocess.run(cmd, cwd=base / "work", env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return base


def _run_block(block: Block, index: int, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    if block.lang == "python":
        script = cwd / f".example_{index}.py"
        script.write_text(PYTHON_PREAMBLE + "\n" + block.code)
        cmd = [sys.executable, str(PREWARMED), "python", script.name]
    else:
        script = cwd / f".example_{index}.sh"
        script.write_text(SHELL_PREAMBLE + "\n" + block.code)
        cmd = ["bash", "-e", script.name]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def run_page(page: Path, fixtures: Path, tmp_path: Path, env: dict[str, str], server: str) -> list[str]:
    """Run a page's unmarked examples in order in a fresh copy of the fixtures, in ``env``, their ``ijepa``
    commands through the prewarmed ``server``; the failures, described."""
    work = tmp_path / "work"
    shutil.copytree(fixtures / "work", work)
    env = {**env, "IJEPA_PREWARMED": server}
    for i, block in enumerate(runnable(page)):
        t0 = time.perf_counter()
        done = _run_block(block, i, work, env)
        print(f"{block.where}: {time.perf_counter() - t0:.1f} s")  # shown with -s, or beside a failure
        if done.returncode != 0:
            return [f"{block.where}: the example failed (exit {done.returncode}); mark it on the line before "
                    f"the block if it cannot run here (<!-- example: {' | '.join(MARKERS)} -->)\n"
                    f"--- example ---\n{block.code}--- stdout ---\n{done.stdout[-4000:]}\n"
                    f"--- stderr ---\n{done.stderr[-4000:]}"]
    return []


@contextmanager
def prewarmed_server(env: dict[str, str], cwd: Path):
    """tests/prewarmed.py's server for one page, started with the page's environment; yields its socket's path."""
    folder = tempfile.mkdtemp(prefix="ijepa-docs-")  # a short path: a socket's is limited to ~100 characters
    path = os.path.join(folder, "server")
    # through bash, as the examples' commands are: the server compares their environment with what bash passes on
    server = subprocess.Popen(["bash", "-c", 'exec "$@"', "bash", sys.executable, str(PREWARMED), "serve", path],
                              cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = server.stdout.readline()
        assert ready == "ready\n", f"the examples' server did not start: {server.communicate(timeout=60)[1][-3000:]}"
        yield path
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


# Pages whose examples train decoders, fine-tune or run several probes: started first, so the pool ends together.
SLOW_PAGES = ("docs/visualisation.md", "README.md", "docs/evaluation.md", "docs/time-limits.md", "docs/finetuning.md",
              "docs/published-models.md", "docs/data.md", "docs/training.md")


def _longest_first(pages: list[Path]) -> list[Path]:
    rank = {name: i for i, name in enumerate(SLOW_PAGES)}
    return sorted(pages, key=lambda p: rank.get(p.relative_to(ROOT).as_posix(), len(rank)))


@pytest.mark.slow
def test_every_page_runs(fixtures, tmp_path):
    """Every page's examples, the pages side by side, one per core, each process on one thread: an example is
    mostly a process starting, which one thread does as fast as several. The pages share one home folder (their
    caches) and one prewarmed server; each has its own working folder."""
    pages = _longest_first(pages_with_examples())
    workers = max(1, min(len(pages), os.cpu_count() or 1))
    env = _env(tmp_path / "home", fixtures / "fashion-mnist", threads=1)
    with prewarmed_server(env, tmp_path) as server, ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda ip: run_page(ip[1], fixtures, tmp_path / f"page{ip[0]}", env, server),
                           enumerate(pages))
        failures = [f for result in results for f in result]
    assert not failures, "\n\n".join(failures)


def test_a_broken_example_fails(fixtures, tmp_path):
    """The harness reports an unmarked example that does not run, naming its page and line."""
    page = tmp_path / "broken.md"
    page.write_text("# A page\n\n```bash\nijepa eval runs/quickstart --protocol no-such-protocol\n```\n")
    env = _env(tmp_path / "home", fixtures / "fashion-mnist")
    with prewarmed_server(env, tmp_path) as server:
        failures = run_page(page, fixtures, tmp_path, env, server)
    assert len(failures) == 1 and "broken.md:3: the example failed" in failures[0]
