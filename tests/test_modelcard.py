"""Model cards and ``ijepa push``: a transformers export carries a README.md whose front matter the Hub reads and
whose body says what the weights are, how they were trained and how they scored (read from the run folder); the
licence follows the weights; ``ijepa push`` uploads through huggingface_hub to a stand-in Hub on 127.0.0.1 that
answers the calls a repo creation and a one-commit upload make."""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from conftest import cfg_with, reference_file, tiny_predictor, tiny_vit

import ijepa
from ijepa.cli import main
from ijepa.interop.modelcard import read_front_matter
from ijepa.train.loop import train

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny trained run, evaluated by `ijepa eval` (which writes eval_knn.json beside the checkpoint)."""
    out = tmp_path_factory.mktemp("card") / "tiny-run"
    train(cfg_with("optimization.max_steps=3"), out)
    assert main(["eval", str(out), "--protocol", "knn", "--baselines", "random", "--limit", "200",
                 "--no-progress"]) == 0
    return out


def card_of(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    head, body = re.match(r"^---\n(.*?)\n---\n(.*)$", text, flags=re.DOTALL).groups()
    return yaml.safe_load(head), body


def test_a_run_exported_to_hf_carries_a_card_and_transformers_still_loads_it(run, tmp_path, capsys):
    dst = tmp_path / "hf"
    assert main(["convert", str(run), str(dst), "--to", "hf", "--license", "apache-2.0"]) == 0
    meta, body = card_of(dst)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-feature-extraction"
    assert meta["license"] == "apache-2.0" and {"ijepa", "vision", "self-supervised"} <= set(meta["tags"])
    assert read_front_matter((dst / "README.md").read_text()) == meta
    # what the weights are: the encoder, its input as config.json and preprocessor_config.json say
    cfg, pre = (json.loads((dst / f).read_text()) for f in ("config.json", "preprocessor_config.json"))
    assert "target encoder (the EMA" in body and f"width {cfg['hidden_size']}, depth 1" in body
    side = cfg["image_size"]
    assert f"{side} x {side} pixels, 1 channel, patch {cfg['patch_size']}" in body
    assert f"mean [{pre['image_mean'][0]:.4g}]" in body
    # how they were trained: config.yaml and summary.json
    summary = json.loads((run / "summary.json").read_text())
    assert "fashion_mnist" in body and "batch 16 per process" in body and "vit_tiny, predictor 1 blocks x 48" in body
    assert f"{summary['steps']} steps" in body and "1 x CPU" in body
    assert f"final_loss {summary['final_loss']:.4g}" in body
    # how they scored: the eval_*.json `ijepa eval` wrote in the run folder
    res = json.loads((run / "eval_knn.json").read_text())
    ours, rnd = (res["models"][m]["knn"]["accuracy"] for m in ("pretrained", "random"))
    assert f"| knn | {res['dataset']} (mean pooling) | {100 * ours:.2f}% | random {100 * rnd:.2f}% |" in body
    model, info = transformers.IJepaModel.from_pretrained(dst, output_loading_info=True)
    assert not any(info.values()), info
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # written whole: no temporary left beside it
    # exported again over itself (the card is part of an export), from Python, without a licence: unknown
    ijepa.convert(run, dst, to="hf")
    meta, body = card_of(dst)
    assert meta["license"] == "unknown" and "Not stated: whoever trained these weights decides" in body


def test_the_reference_weights_carry_their_licence_whatever_is_asked(tmp_path, capsys):
    ctx, tgt = tiny_vit(0), tiny_vit(1)
    f = reference_file(tmp_path / "ref.pth.tar", ctx, tgt, tiny_predictor(ctx))
    assert main(["convert", str(f), str(tmp_path / "hf"), "--to", "hf", "--which", "encoder"]) == 0
    meta, body = card_of(tmp_path / "hf")
    assert meta["license"] == "cc-by-nc-4.0" and "context encoder" in body and "CC-BY-NC 4.0" in body
    assert "the I-JEPA authors' (facebookresearch/ijepa)" in body
    capsys.readouterr()
    assert main(["convert", str(f), str(tmp_path / "mit"), "--to", "hf", "--license", "mit"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ijepa: config error: --license mit:") and "cc-by-nc-4.0" in err and err.count("\n") == 1
    assert not (tmp_path / "mit").exists()
    assert main(["convert", str(f), str(tmp_path / "x"), "--to", "hf", "--license", "Not A Licence"]) == 2
    assert main(["convert", str(f), str(tmp_path / "x.safetensors"), "--license", "mit"]) == 2  # ours: no card


def test_a_finetuned_classifier_export_carries_a_classification_card(run, tmp_path):
    hf = tmp_path / "hf"
    assert main(["finetune", str(run), "--out", str(tmp_path / "ft"), "--limit", "64", "--epochs", "1",
                 "--batch-size", "32", "--export-hf", str(hf), "--device", "cpu", "--dtype", "fp32", "--no-progress",
                 "--license", "cc-by-4.0"]) == 0
    meta, body = card_of(hf)
    assert meta["pipeline_tag"] == "image-classification" and meta["license"] == "cc-by-4.0"
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert "## Fine-tuning" in body and f"{100 * metrics['final_val_top1']:.2f}% at the end" in body
    assert "64 training, 64 validation images, 10 classes" in body and "## Training" in body  # the pretraining too
    _, info = transformers.IJepaForImageClassification.from_pretrained(hf, output_loading_info=True)
    assert not any(info.values()), info


# ------------------------------------------------------------------------------------------ ijepa push

class StandInHub(BaseHTTPRequestHandler):
    """What huggingface_hub asks of the Hub to create a repo and upload a folder in one commit (without hf_xet):
    create-repo, validate-yaml (the card), preupload (every file "regular": its bytes go in the commit) and
    commit (newline-delimited JSON). A repo named "forbidden" is refused, as one without write rights is."""

    def log_message(self, *args) -> None:
        pass

    def reply(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.reply(404, {"error": "Repository not found"})

    def do_POST(self) -> None:
        hub, path = self.server.hub, self.path.split("?")[0]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hub["auth"].append(self.headers.get("Authorization"))
        m = re.fullmatch(r"/api/models/(.+)/(preupload|commit)/main", path)
        if path == "/api/repos/create":
            req = json.loads(body)
            if req["name"] == "forbidden":
                return self.reply(403, {"error": "You don't have the rights to create a model under this namespace"})
            hub["created"].append(req)
            return self.reply(200, {"url": f"{hub['url']}/{req['organization']}/{req['name']}"})
        if path == "/api/validate-yaml":
            return self.reply(200, {"errors": [], "warnings": []})
        if m and m.group(2) == "preupload":
            files = json.loads(body)["files"]
            return self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                              for f in files]})
        if m:
            items = [json.loads(line) for line in body.splitlines()]
            hub["commits"].append((m.group(1), {i["value"]["path"]: base64.b64decode(i["value"]["content"])
                                                for i in items if i["key"] == "file"}))
            return self.reply(200, {"commitUrl": f"{hub['url']}/{m.group(1)}/commit/{'0' * 40}",
                                    "commitOid": "0" * 40, "pullRequestUrl": None})
        return self.reply(404, {"error": f"no {path}"})


@pytest.fixture
def hub(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInHub)
    url = f"http://127.0.0.1:{server.server_port}"
    server.hub = {"url": url, "created": [], "commits": [], "auth": []}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # another test may have set it
    yield server.hub
    server.shutdown()
    server.server_close()


def test_push_exports_a_run_with_its_card_and_uploads_it_in_one_commit(run, hub, tmp_path, capsys):
    assert main(["push", str(run), "someone/tiny-ijepa", "--token", "hf_test", "--license", "mit"]) == 0
    assert "pushed" in capsys.readouterr().out
    ((created),) = hub["created"]
    assert (created["organization"], created["name"]) == ("someone", "tiny-ijepa")
    assert created.get("visibility") != "private" and not created.get("private")
    assert set(hub["auth"]) == {"Bearer hf_test"}
    ((repo, files),) = hub["commits"]
    assert repo == "someone/tiny-ijepa"
    assert set(files) == {"README.md", "config.json", "preprocessor_config.json", "model.safetensors"}
    card = files["README.md"].decode()
    assert read_front_matter(card)["license"] == "mit" and 'from_pretrained("someone/tiny-ijepa")' in card
    got = tmp_path / "got"
    got.mkdir()
    for name, data in files.items():
        (got / name).write_bytes(data)
    pushed, ours = ijepa.load(got), ijepa.load(run)
    assert all(torch.equal(a, b) for a, b in zip(pushed.state_dict().values(), ours.state_dict().values()))


def test_push_uploads_an_export_naming_its_repo_and_errors_are_one_line(run, hub, tmp_path, capsys, monkeypatch):
    export = ijepa.convert(run, tmp_path / "hf", to="hf", license="apache-2.0")
    assert main(["push", str(export), "someone/as-is", "--token", "hf_test", "--private"]) == 0
    ((_, files),) = hub["commits"]
    on_disk = {p.name: p.read_bytes() for p in export.iterdir()}
    card = on_disk.pop("README.md").decode()
    assert {k: v for k, v in files.items() if k != "README.md"} == on_disk  # the weights and configs as they are
    # the uploaded card names the repo it is in; the export's own card is left as it was
    assert files["README.md"].decode() == card.replace("path/to/this/folder", "someone/as-is") != card
    assert 'from_pretrained("someone/as-is")' in files["README.md"].decode()
    assert hub["created"][0].get("visibility") == "private" or hub["created"][0].get("private") is True
    capsys.readouterr()
    assert main(["push", str(export), "someone/forbidden", "--token", "hf_test"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ijepa: hub error: someone/forbidden:") and err.count("\n") == 1
    assert main(["push", str(export), "someone/x", "--token", "hf_test", "--license", "mit"]) == 2  # its card says
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    calls = len(hub["auth"])
    assert main(["push", str(export), "someone/x"]) == 1
    assert "ijepa: hub error: no Hugging Face token: pass --token" in capsys.readouterr().err
    assert len(hub["auth"]) == calls  # nothing was sent
