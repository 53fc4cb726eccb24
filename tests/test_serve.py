"""graft serve: a real server on 127.0.0.1, 500 requests from 8 concurrent clients, the contract enforced."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

import graft
from graft.config import EvalConfig, RunConfig


def _request(url: str, body: bytes, kind: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"content-type": kind}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@contextlib.contextmanager
def _serving(bundle):
    """``graft serve BUNDLE --port 0`` in a subprocess: (base url, the loaded bundle). The server prints
    its url once its socket listens; requests sent after that wait in the socket's queue."""
    process = subprocess.Popen(
        [sys.executable, "-m", "graft", "serve", str(bundle), "--port", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = []
    for line in process.stderr:  # blocks until the server says where it listens, or exits
        seen.append(line)
        if "graft: serving" in line:
            base = line.split(" on ", 1)[1].split()[0]
            break
    else:
        process.kill()
        pytest.fail(f"the server did not start: {''.join(seen)[-2000:]}")
    threading.Thread(target=seen.extend, args=(process.stderr,), daemon=True).start()  # keep the pipe drained
    try:
        yield base, graft.load(bundle)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def server(tiny_source, sentiment_csv, tmp_path):
    cfg = RunConfig(evaluation=EvalConfig(baselines="none"))
    graft.fit(sentiment_csv, backbone=tiny_source, strategy="linear_probe", config=cfg, progress=False,
              out=tmp_path / "run")  # fmt: skip
    with _serving(tmp_path / "run") as served:
        yield served


def test_500_mixed_requests_from_8_clients(server):
    base, model = server
    good = ["great film", "awful plot", "a great and fine movie", "boring awful film"]
    cases = [
        ("good", json.dumps({"inputs": good}).encode(), "application/json"),
        ("one", json.dumps({"inputs": ["great film"]}).encode(), "application/json"),
        ("missing field", json.dumps({"texts": good}).encode(), "application/json"),
        ("wrong type", json.dumps({"inputs": [1, 2]}).encode(), "application/json"),
        ("empty text", json.dumps({"inputs": ["  "]}).encode(), "application/json"),
        ("garbage", b"\x00\xff not json", "application/json"),
        ("wrong modality", b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
         b"\x89PNG\r\n--x--\r\n", "multipart/form-data; boundary=x"),
    ]  # fmt: skip
    jobs = [cases[i % len(cases)] for i in range(500)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda c: (c[0], *_request(f"{base}/predict", c[1], c[2])), jobs))
    expected = model.predict(good)
    for name, status, body in results:
        if name in ("good", "one"):
            assert status == 200, body
            predictions = [p["prediction"] for p in body["predictions"]]
            assert predictions == (expected if name == "good" else expected[:1])
        else:
            assert status == 422, (name, status, body)
            assert body["detail"]
    assert len(results) == 500 and sum(status == 200 for _, status, _ in results) == sum(
        name in ("good", "one") for name, _, _ in jobs
    )
    with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
        assert json.loads(r.read())["status"] == "ok"  # still serving
    with urllib.request.urlopen(f"{base}/contract", timeout=5) as r:
        assert json.loads(r.read())["label_space"] == list(model.label_space)


def test_messages_name_the_problem(server):
    base, model = server
    status, body = _request(f"{base}/predict", json.dumps({"texts": ["x"]}).encode(), "application/json")
    assert status == 422 and "missing field 'inputs'" in body["detail"]
    status, body = _request(f"{base}/predict", b"files=1", "multipart/form-data; boundary=x")
    assert status == 422 and "this model takes text" in body["detail"]
    status, body = _request(
        f"{base}/predict", json.dumps({"inputs": ["great film"]}).encode(), "application/json"
    )
    probabilities = body["predictions"][0]["probabilities"]
    assert status == 200 and set(probabilities) == {str(label) for label in model.label_space}
    assert (
        abs(probabilities[body["predictions"][0]["prediction"]] - model.predict_proba(["great film"]).max())
        < 1e-5
    )


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    parts = b"".join(
        b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"" + name.encode() + b"\"\r\n\r\n"
        + data + b"\r\n"
        for name, data in files
    )  # fmt: skip
    return parts + b"--x--\r\n", "multipart/form-data; boundary=x"


def test_image_models_take_uploads_and_name_an_undecodable_file(tmp_path):
    from tests.conftest import make_image_folder

    images = make_image_folder(tmp_path / "images", n_per_class=8)
    cfg = RunConfig(evaluation=EvalConfig(baselines="none"))
    graft.fit(images, backbone="arch:small_cnn", strategy="linear_probe", config=cfg, progress=False,
              out=tmp_path / "run")  # fmt: skip
    paths = sorted(images.rglob("*.png"))[:3]
    with _serving(tmp_path / "run") as (base, model):
        status, body = _request(f"{base}/predict", *_multipart([(p.name, p.read_bytes()) for p in paths]))
        assert status == 200 and [p["prediction"] for p in body["predictions"]] == model.predict(
            [str(p) for p in paths]
        )
        mixed = [("fine.png", paths[0].read_bytes()), ("broken.png", b"not an image")]
        status, body = _request(f"{base}/predict", *_multipart(mixed))
        assert status == 422 and "broken.png" in body["detail"]
        status, body = _request(
            f"{base}/predict", json.dumps({"inputs": ["a text"]}).encode(), "application/json"
        )
        assert status == 422 and "takes image files" in body["detail"]


def test_a_port_in_use_is_a_clear_error(server):
    from graft.serve import serve

    base, model = server
    port = int(base.rsplit(":", 1)[1])
    with pytest.raises(graft.ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
        serve(model, port=port)
