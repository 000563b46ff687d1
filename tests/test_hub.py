"""Weights by name, offline: a Hugging Face Hub repo id read from a pre-filled local Hub cache with HF_HUB_OFFLINE=1,
the registry of the published reference checkpoints, and a published checkpoint downloaded once from a file server on
127.0.0.1 standing in for its URL."""

import functools
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from importlib.resources import files
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from conftest import reference_file, tiny_predictor, tiny_vit

from ijepa import interop
from ijepa.errors import CheckpointError, CheckpointMismatchError, CheckpointNotFoundError
from ijepa.interop import hub, registry
from ijepa.models.predictor import VisionTransformerPredictor
from ijepa.models.vit import VisionTransformer

COMMIT_MAIN = "a" * 40
COMMIT_V1 = "b" * 40


def _tiny_hf(seed: int) -> transformers.IJepaModel:
    torch.manual_seed(seed)
    cfg = transformers.IJepaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                   image_size=32, patch_size=8, layer_norm_eps=1e-6)
    return transformers.IJepaModel(cfg).eval()


def _hub_cache(root: Path) -> Path:
    """The Hub cache's layout for one repo, ``acme/ijepa-tiny``: refs/main and refs/v1 naming two snapshots of
    different weights (what huggingface_hub leaves behind after downloading both)."""
    repo = root / "models--acme--ijepa-tiny"
    for ref, commit, seed in (("main", COMMIT_MAIN, 0), ("v1", COMMIT_V1, 1)):
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        _tiny_hf(seed).save_pretrained(repo / "snapshots" / commit)
    return root


CHECKS = textwrap.dedent("""
    import json, sys, torch, transformers
    import ijepa
    from ijepa.errors import CheckpointNotFoundError
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, kw, commit in (("main", {}, "a" * 40), ("v1", {"revision": "v1"}, "b" * 40),
                             ("commit", {"revision": "a" * 40}, "a" * 40)):
        enc = ijepa.load("acme/ijepa-tiny", **kw)
        ref = transformers.IJepaModel.from_pretrained(sys.argv[1] + f"/models--acme--ijepa-tiny/snapshots/{commit}")
        with torch.no_grad():
            diff = (enc(x) - ref.eval()(pixel_values=x).last_hidden_state).abs().max().item()
        out[name] = {"diff": diff, "source": enc.source}
    try:
        ijepa.load("acme/not-cached")
    except CheckpointNotFoundError as e:
        out["missing"] = str(e)
    print(json.dumps(out))
""")


def test_a_hub_repo_id_loads_from_the_cache_offline_with_revisions(tmp_path):
    cache = _hub_cache(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    r = subprocess.run([sys.executable, "-c", CHECKS, str(cache)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for name in ("main", "v1", "commit"):
        assert out[name]["diff"] < 1e-5, (name, out[name])
    assert out["main"]["source"].startswith("acme/ijepa-tiny@main (Hugging Face Hub): transformers IJepaModel")
    assert out["v1"]["source"].startswith("acme/ijepa-tiny@v1 ")
    assert "acme/not-cached@main is not in the Hugging Face cache and downloads are off" in out["missing"]


def test_repo_ids_and_paths_are_told_apart(tmp_path, monkeypatch):
    assert hub.is_repo_id("facebook/ijepa_vith14_1k") and hub.is_repo_id("a-b/c.d_e")
    for not_id in ("vith14-in1k", "runs/a/b", "/abs/path", "./x/y", "a/", "-a/b"):
        assert not hub.is_repo_id(not_id), not_id
    monkeypatch.chdir(tmp_path)
    _tiny_hf(0).save_pretrained(tmp_path / "acme" / "local")  # a folder of that shape on this machine wins
    assert not hub.is_repo_id("acme/local")
    assert interop.load("acme/local").source.startswith("transformers IJepaModel")
    with pytest.raises(CheckpointError, match="revision= is for Hugging Face Hub repo ids"):
        interop.load("acme/local", revision="v1")


def test_without_huggingface_hub_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
    with pytest.raises(CheckpointError, match=r"pip install 'ijepa\[hub\]'"):
        interop.load("acme/anything")


# ------------------------------------------------------------------------------------------ registry


def test_registry_matches_the_shipped_configs() -> None:
    assert set(registry.PUBLISHED) == {"vith14-in1k", "vith16-448-in1k", "vith14-in22k", "vitg16-in22k"}
    for m in registry.PUBLISHED.values():
        cfg = yaml.safe_load((files("ijepa") / "configs" / f"{m.config}.yaml").read_text())
        assert cfg["meta"]["model_name"] == m.arch and cfg["mask"]["patch_size"] == m.patch_size
        assert cfg["data"]["crop_size"] == m.resolution and cfg["optimization"]["epochs"] == m.epochs
        assert (cfg["meta"]["pred_depth"], cfg["meta"]["pred_emb_dim"]) == (m.pred_depth, m.pred_emb_dim)
        assert m.url == "https://dl.fbaipublicfiles.com/ijepa/" + m.filename
        with torch.device("meta"):
            enc = VisionTransformer(**m.encoder_arch())
        assert enc.grid_size == (m.resolution // m.patch_size,) * 2
    assert registry.get("vit_giant_patch16_gap_224.in22k_ijepa").name == "vitg16-in22k"
    assert "IN1K-vit.h.16-448px-300e.pth.tar" in interop.describe()


def test_registry_load_warns_on_name_and_builds_the_registry_arch(tmp_path: Path, monkeypatch) -> None:
    enc = tiny_vit(depth=2)
    f = reference_file(tmp_path / "renamed.pth.tar", enc, enc, tiny_predictor(enc))
    with pytest.warns(UserWarning) as caught, \
            pytest.raises(CheckpointMismatchError, match=r"embed_dim=1280, depth=32"):
        interop.load("vith14-in1k", path=f)
    said = " | ".join(str(w.message) for w in caught)
    assert "not the published file name" in said and "is 0.01 GB; vith14-in1k's full checkpoint" in said
    monkeypatch.setenv("IJEPA_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("IJEPA_OFFLINE", "1")  # else the missing file is downloaded (see below)
    with pytest.raises(CheckpointNotFoundError, match="IN1K-vit.h.14-300e.pth.tar"):
        interop.load("vith14-in1k")


def test_registry_entry_builds_encoder_and_predictor(tmp_path: Path, monkeypatch) -> None:
    # A registry entry of a tiny size, so that a file which fits it can be written here.
    tiny = registry.PublishedModel("tiny-test", "vit_tiny", 16, 224, "nothing", 1, "tiny.pth.tar", 0.1, 2, 96,
                                   "fmnist_cpu", "none")
    monkeypatch.setitem(registry.PUBLISHED, "tiny-test", tiny)
    with torch.device("meta"):
        probe = VisionTransformer(**tiny.encoder_arch())
    torch.manual_seed(0)
    enc = VisionTransformer(**tiny.encoder_arch()).eval()
    pred = VisionTransformerPredictor(**tiny.predictor_arch()).eval()
    assert probe.arch_dict() == enc.arch_dict()
    f = reference_file(tmp_path / "tiny.pth.tar", enc, enc, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # right name, plausible size: nothing to warn about
        got, got_pred = interop.load("tiny-test", path=f, with_predictor=True)
    assert got.source == "tiny-test: reference .pth.tar (epoch 300): target_encoder"
    assert got.depth == 12 and got_pred.depth == 2 and got_pred.num_heads == 3
    assert got.input_spec["mean"] == (0.485, 0.456, 0.406)


# ------------------------------------------------------------------------------------------ reference download


class _CountingFiles(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (the base class's name)
        type(self).requests.append(self.path)
        return super().do_GET()

    def log_message(self, *args) -> None:
        pass


TINY_ARCH = {"encoder": dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2),
             "predictor": dict(grid_size=(4, 4), embed_dim=64, predictor_embed_dim=32, depth=1, num_heads=2)}


def _reference_checkpoint(path: Path) -> tuple[VisionTransformer, VisionTransformer]:
    torch.manual_seed(0)
    ctx, tgt = VisionTransformer(**TINY_ARCH["encoder"]), VisionTransformer(**TINY_ARCH["encoder"])
    reference_file(path, ctx, tgt, VisionTransformerPredictor(**TINY_ARCH["predictor"]))
    return ctx.eval(), tgt.eval()


def test_a_published_name_downloads_its_file_once_then_reads_the_cache(tmp_path, monkeypatch, capsys):
    served, cache = tmp_path / "served", tmp_path / "cache"
    served.mkdir()
    name = registry.get("vith14-in1k").filename
    _, tgt = _reference_checkpoint(served / name)
    _CountingFiles.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_CountingFiles, directory=served))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("IJEPA_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("IJEPA_HOME", str(cache))
        for k in registry.OFFLINE_ENVS:
            monkeypatch.delenv(k, raising=False)
        x = torch.randn(2, 3, 32, 32)
        with pytest.warns(UserWarning, match="full checkpoint is about"):  # a tiny file under ViT-H's name
            first = interop.load("vith14-in1k", arch=TINY_ARCH)
        err = capsys.readouterr().err
        assert f"vith14-in1k: downloading http://127.0.0.1:{server.server_address[1]}/{name}" in err
        assert f"{name}: 100%" in err  # progress
        assert (cache / name).is_file() and _CountingFiles.requests == [f"/{name}"]
        with pytest.warns(UserWarning, match="full checkpoint is about"):
            second, pred = interop.load("vith14-in1k", arch=TINY_ARCH, with_predictor=True)
        assert _CountingFiles.requests == [f"/{name}"]  # read from the cache, not fetched again
        with torch.no_grad():
            assert torch.equal(first(x), tgt(x)) and torch.equal(second(x), tgt(x))
        assert pred.depth == 1 and first.source.startswith("vith14-in1k: reference .pth.tar")
    finally:
        server.shutdown()
        server.server_close()


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``short.pth.tar`` promises more bytes than it sends (a connection cut mid-download)."""

    def do_GET(self):  # noqa: N802 (the base class's name)
        if not self.path.endswith("short.pth.tar"):
            return super().do_GET()
        body = b"x" * 1000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + 500))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_download_from_a_local_stand_in(tmp_path: Path, monkeypatch) -> None:
    served, cache = tmp_path / "served", tmp_path / "cache"
    served.mkdir()
    payload = os.urandom(3 << 20)  # several read chunks
    (served / "tiny.pth.tar").write_bytes(payload)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=served))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(registry, "BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/")
        for name in ("tiny", "short", "gone"):
            monkeypatch.setitem(registry.PUBLISHED, f"{name}-test", registry.PublishedModel(
                f"{name}-test", "vit_tiny", 16, 224, "nothing", 1, f"{name}.pth.tar", 0.1, 2, 96, "fmnist_cpu",
                "none"))
        got = interop.download("tiny-test", cache, progress=False)
        assert got == cache / "tiny.pth.tar" and got.read_bytes() == payload
        (served / "tiny.pth.tar").unlink()
        assert interop.download("tiny-test", cache) == got  # already there: not fetched again
        with pytest.raises(CheckpointError, match="stopped after 1000 of 1500 bytes"):
            interop.download("short-test", cache, progress=False)
        with pytest.raises(OSError, match="404"):
            interop.download("gone-test", cache, progress=False)
        assert sorted(p.name for p in cache.iterdir()) == ["tiny.pth.tar"]  # nothing torn, no temporary left
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("switch", registry.OFFLINE_ENVS)
def test_offline_no_download_a_clear_error(tmp_path, monkeypatch, switch):
    monkeypatch.setenv("IJEPA_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("IJEPA_BASE_URL", "http://127.0.0.1:9/")  # never reached: nothing listens there
    monkeypatch.setenv(switch, "1")
    with pytest.raises(CheckpointNotFoundError, match=f"downloads are off.*{registry.OFFLINE_ENVS[0]}"):
        interop.load("vith14-in1k")
    with pytest.raises(CheckpointNotFoundError, match="not downloading"):
        interop.download("vith14-in1k")
    assert not (tmp_path / "empty").exists()
