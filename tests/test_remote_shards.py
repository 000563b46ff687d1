"""Tar shards at a URL (ijepa.data.shards.remote): over S3 (moto's server) and HTTP (http.server), both on
127.0.0.1, the same samples, shuffle and exact resume as from the folder; a connection dropped half-way through a
shard retried from where it broke; a server gone for good one line naming the shard, the run folder intact;
`ijepa shards` writing to S3 and training from there. 40 images of 20x20 pixels in 5 shards."""

from __future__ import annotations

import csv
import functools
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, cfg_with
from PIL import Image

from ijepa.cli import main
from ijepa.config import load_config
from ijepa.data.shards.reader import ShardDataset
from ijepa.data.shards.remote import URL, RemoteStoreError, join_root, location
from ijepa.errors import ConfigError
from ijepa.train.checkpoint import load_checkpoint
from ijepa.train.loop import train

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.moto_server.threaded_moto_server")

BUCKET = "ijepa-test"
S3_SET = f"s3://{BUCKET}/shards"
# the shards' training: 40 images, 8 per step, 5 steps an epoch
TRAIN = ("data.dataset=shards", "data.crop_size=16", "data.in_chans=3", "data.num_workers=0", "data.limit=null",
         "data.batch_size=8", "mask.patch_size=4")


# ------------------------------------------------------------------------------------------------ servers

class _Files(http.server.SimpleHTTPRequestHandler):
    """http.server's files; a request for a shard that ``server.fault(path)`` picks gets its headers and half
    its bytes, then ``server.after_fault()`` runs and the connection closes."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        fault = self.server.fault
        if fault is None or not self.path.endswith(".tar") or not fault(self.path):
            return super().do_GET()
        data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        if self.server.after_fault is not None:
            self.server.after_fault()  # before the connection closes: the client's retry finds the server gone
        self.close_connection = True


class HTTPFiles:
    """``python -m http.server``'s handler on 127.0.0.1 in a thread, serving ``root`` at :attr:`url`."""

    def __init__(self, root: Path) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(root)))
        self.httpd.fault = self.httpd.after_fault = None
        self.httpd.requests = []
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.httpd.shutdown()
            self.httpd.server_close()


class S3Server:
    """moto's S3 server on 127.0.0.1 (its buckets live in this process, shared by every server)."""

    def __init__(self) -> None:
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.stop()
        self.server._server.server_close()  # stop() leaves the socket listening: connections would hang, not fail


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def env():
    """Any credentials do for moto; no ~/.aws; botocore's own retries off and short waits between the reader's,
    which are what is tested; connections closed after each answer, so a stopped moto server is gone."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
                           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                           "IJEPA_REMOTE_RETRIES": "2", "IJEPA_REMOTE_RETRY_DELAY": "0.01"}.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(key, raising=False)
        mp.setattr(moto_server.MotoRequestHandler, "protocol_version", "HTTP/1.0", raising=False)
        yield mp


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(20):
            Image.fromarray((torch.rand(20, 20, 3, generator=g) * 255).byte().numpy()).save(root / c / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def served(src, tmp_path_factory) -> Path:
    """The folder http.server serves: the shards in ``shards/``, written by `ijepa shards`."""
    root = tmp_path_factory.mktemp("served")
    assert main(["shards", str(src), str(root / "shards"), "--max-count", "8"]) == 0
    return root


@pytest.fixture(scope="module")
def http_files(served):
    server = HTTPFiles(served)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3(env, src):
    """moto's server with the shards `ijepa shards` wrote to S3_SET."""
    import boto3

    server = S3Server()
    env.setenv("AWS_ENDPOINT_URL", server.endpoint)
    boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=BUCKET)
    assert main(["shards", str(src), S3_SET, "--max-count", "8"]) == 0
    yield server
    server.stop()


@pytest.fixture(scope="module")
def urls(s3, http_files) -> dict[str, str]:
    return {"s3": S3_SET, "http": f"{http_files.url}/shards"}


@pytest.fixture(scope="module")
def reference(served, tmp_path_factory) -> Path:
    """8 steps from the local shards without a stop."""
    run = tmp_path_factory.mktemp("reference")
    _train(served / "shards", run, 8)
    return run


def _train(root, out: Path, steps: int) -> dict:
    return train(cfg_with(*TRAIN, f"data.root_path={root}", f"optimization.max_steps={steps}"), out)


def _ids(ds) -> list[bytes]:
    return [np.asarray(img).tobytes() for img, _ in ds]


# ------------------------------------------------------------------------------------------------ reading

def test_urls_and_paths():
    assert location("s3://b/x") == "s3://b/x" and isinstance(location("s3://b/x"), URL)
    assert location("file:///data/x") == "/data/x" and not isinstance(location("file:///data/x"), URL)
    assert join_root("s3://b/", "set") == "s3://b/set" and join_root("gs://b/set", "") == "gs://b/set"
    assert join_root("/data", "set") == Path("/data/set")
    u = URL("s3://b/set/shard-000001.tar")
    assert (u.parent, u.name, u.protocol) == ("s3://b/set", "shard-000001.tar", "s3")
    with pytest.raises(ConfigError, match=r"data\.root_path: s3://b/x is a URL, which data\.dataset=shards reads"):
        load_config(None, ["data.dataset=imagefolder", "data.root_path=s3://b/x"])


def test_ijepa_shards_writes_the_same_set_to_s3(s3, served):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint)
    local = sorted(p.name for p in (served / "shards").iterdir())
    assert sorted(p.rpartition("/")[2] for p in fs.ls(S3_SET)) == local  # 5 shards, index.json, classes.json
    for name in local:
        assert fs.cat_file(f"{S3_SET}/{name}") == (served / "shards" / name).read_bytes(), name


@pytest.mark.parametrize("kind", ["s3", "http"])
def test_same_samples_shuffle_and_resume_as_the_folder(kind, urls, served):
    for start in (0, 3):
        remote, local = ShardDataset(urls[kind], seed=1, batch_size=4), ShardDataset(served / "shards", seed=1,
                                                                                     batch_size=4)
        for ds in (remote, local):
            ds.set_epoch(1)
            ds.set_start(start, 4)
        assert _ids(remote) == _ids(local)
    assert (remote.num_samples, remote.classes, len(remote.shards)) == (40, ["a", "b"], 5)


def test_a_connection_dropped_half_way_is_retried_from_where_it_broke(env, served):
    server = HTTPFiles(served)
    cut: set[str] = set()
    server.httpd.fault = lambda path: path not in cut and not cut.add(path)  # each shard's first answer breaks
    try:
        assert _ids(ShardDataset(f"{server.url}/shards", seed=2)) == _ids(ShardDataset(served / "shards", seed=2))
    finally:
        server.stop()
    tars = [p for p in server.httpd.requests if p.endswith(".tar")]
    assert len(cut) == 5 and sorted(tars) == sorted(2 * sorted(cut))  # every shard: once broken, once whole


def test_an_s3_server_gone_for_good_is_one_line_naming_the_shard(s3, monkeypatch):
    other = S3Server()  # the same buckets, a server this test may stop
    monkeypatch.setenv("AWS_ENDPOINT_URL", other.endpoint)
    items = iter(ShardDataset(S3_SET, shuffle=False))
    for _ in range(8):  # the first shard's samples
        next(items)
    other.stop()
    with pytest.raises(RemoteStoreError, match=rf"^cannot read shard {S3_SET}/shard-000001\.tar \(at byte 0\): "
                                               r".* \(gave up after 3 tries"):
        next(items)


def test_a_missing_shard_is_one_line_naming_it(s3, src, served, tmp_path):
    import s3fs

    from ijepa.data.shards.format import ShardsNotFoundError
    from ijepa.data.shards.writer import write_shards

    copy = f"s3://{BUCKET}/copy"
    write_shards(src, copy, max_count=8)
    s3fs.S3FileSystem(endpoint_url=s3.endpoint).rm_file(f"{copy}/shard-000002.tar")
    with pytest.raises(ShardsNotFoundError, match=rf"^1 shard\(s\) listed in {copy}/index.json are missing \(e.g. "
                                                  r"shard-000002.tar\)"):
        ShardDataset(copy)  # an object store's listing: at start-up
    (tmp_path / "shards").mkdir()
    for p in (served / "shards").iterdir():
        if p.name != "shard-000002.tar":
            (tmp_path / "shards" / p.name).write_bytes(p.read_bytes())
    server = HTTPFiles(tmp_path)
    try:
        with pytest.raises(RemoteStoreError, match=rf"^shard {server.url}/shards/shard-000002.tar is not there"):
            list(ShardDataset(f"{server.url}/shards", shuffle=False))  # over HTTP: when it is read
    finally:
        server.stop()


def test_a_worker_error_reaches_the_loop_as_its_one_line():
    from torch._utils import ExceptionWrapper

    try:
        raise RemoteStoreError("cannot read shard s3://b/set/shard-000003.tar (at byte 0): ConnectionError: gone")
    except RemoteStoreError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(RemoteStoreError) as e:
        wrapped.reraise()
    assert str(e.value) == "cannot read shard s3://b/set/shard-000003.tar (at byte 0): ConnectionError: gone"


def test_a_missing_package_is_one_line_naming_the_extra(src, tmp_path):
    code = "import sys; sys.modules['s3fs'] = None; from ijepa.cli import main; raise SystemExit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", code, "shards", str(src), "s3://b/set"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip() == ("ijepa: data error: reading or writing s3:// URLs needs the s3fs package: "
                                  "pip install 'ijepa[remote]'")


# ------------------------------------------------------------------------------------------------ training

@pytest.mark.parametrize("kind", ["s3", "http"])
def test_training_from_a_url_resumes_exactly(kind, urls, reference, tmp_path):
    run = tmp_path / "run"
    _train(urls[kind], run, 3)  # stopped mid-epoch
    assert load_checkpoint(run / "jepa-latest.pth.tar")["batch_in_epoch"] == 3
    summary = _train(urls[kind], run, 8)  # resumed, across the epoch's end
    assert summary["steps"] == 8
    a, b = load_checkpoint(reference / "jepa-latest.pth.tar"), load_checkpoint(run / "jepa-latest.pth.tar")
    for part in ("encoder", "predictor", "target_encoder"):
        for k, v in a[part].items():
            assert torch.allclose(v, b[part][k], atol=1e-6, rtol=0), (part, k)


def test_a_server_stopped_mid_run_stops_it_in_one_line_and_keeps_the_run_folder(env, served, tmp_path, capsys):
    server, run = HTTPFiles(served), tmp_path / "run"
    # the first shard asked for once the epoch-end checkpoint (step 5) is written breaks half-way, the server gone
    server.httpd.fault = lambda path: (run / "jepa-latest.pth.tar").exists()
    server.httpd.after_fault = server.stop
    try:
        rc = main(["train", "--out", str(run), *TINY, *TRAIN, f"data.root_path={server.url}/shards",
                   "optimization.max_steps=10"])
    finally:
        server.stop()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith(f"ijepa: data error: cannot read shard {server.url}/shards/shard-0000"), err[-1]
    assert "(gave up after 3 tries" in err[-1]
    assert load_checkpoint(run / "jepa-latest.pth.tar")["step"] == 5
    with open(run / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(5))
