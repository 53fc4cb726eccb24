"""graft serve: a real server on 127.0.0.1, 500 requests from 8 concurrent clients, the contract enforced;
hostile clients (bad text, huge bodies, long file names, a full queue) answered alone; the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import queue
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import graft
from graft.config import EvalConfig, RunConfig
from tests.conftest import make_sentiment


def _request(url: str, body: bytes, kind: str) -> tuple[int, dict]:
    return _exchange(url, body, kind)[:2]


def _exchange(url: str, body: bytes, kind: str) -> tuple[int, dict, dict]:
    """(status, JSON answer, headers with lower-case names) of a POST."""
    request = urllib.request.Request(url, data=body, headers={"content-type": kind}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), _lower(response.headers)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace")
        answer = json.loads(text) if text.startswith("{") else {"detail": text}  # a 500 is plain text
        return exc.code, answer, _lower(exc.headers)


def _lower(headers) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _texts(*texts: str) -> tuple[bytes, str]:
    return json.dumps({"inputs": list(texts)}).encode(), "application/json"


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def _serving(bundle, *options: str):
    """``graft serve BUNDLE --port 0 OPTIONS`` in a subprocess: (base url, the loaded bundle, the lines
    it printed on stderr). The server prints its url once its socket listens; requests sent after that
    wait in the socket's queue. A server that never says where it listens fails the test (after 120 s,
    a guard against hanging, not a measurement)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "graft", "serve", str(bundle), "--port", "0", *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:  # keeps the pipe drained for the server's whole life
        for line in process.stderr:
            seen.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    base = None
    with contextlib.suppress(queue.Empty):
        while (line := lines.get(timeout=120)) is not None:
            if "graft: serving" in line:
                base = line.split(" on ", 1)[1].split()[0]
                break
    if base is None:
        process.kill()
        pytest.fail(f"the server did not say where it listens: {''.join(seen)[-2000:]}")
    try:
        yield base, graft.load(bundle), seen
    finally:
        process.terminate()
        process.wait(timeout=30)
        reader.join(timeout=10)


@pytest.fixture(scope="module")
def bundle(tiny_source, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    with open(folder / "sentiment.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *make_sentiment(40)])
    cfg = RunConfig(evaluation=EvalConfig(baselines="none"))
    graft.fit(folder / "sentiment.csv", backbone=tiny_source, strategy="linear_probe", config=cfg,
              progress=False, out=folder / "run")  # fmt: skip
    return folder / "run"


@pytest.fixture(scope="module")
def server(bundle):
    with _serving(bundle) as served:
        yield served


def test_500_mixed_requests_from_8_clients(server):
    base, model, _ = server
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
    assert _get(f"{base}/health")["status"] == "ok"  # still serving
    assert _get(f"{base}/contract")["label_space"] == list(model.label_space)


def test_a_lone_surrogate_fails_its_own_request_only(server):
    """Issue 19 item 3: '\\ud800' is valid JSON but no text; it once failed the whole batch with 500."""
    base, model, _ = server
    good = ["great film", "boring awful film"]
    bad = b'{"inputs": ["fine film", "\\ud800 bad"]}'
    jobs = [(bad if i % 3 == 0 else _texts(*good)[0]) for i in range(60)]
    with ThreadPoolExecutor(8) as pool:  # 8 at a time: good and bad requests share batches
        results = list(pool.map(lambda body: _request(f"{base}/predict", body, "application/json"), jobs))
    expected = model.predict(good)
    for body, (status, answer) in zip(jobs, results, strict=True):
        if body is bad:
            assert status == 422 and "input 1 is not text: a lone surrogate \\ud800" in answer["detail"]
        else:
            assert status == 200 and [p["prediction"] for p in answer["predictions"]] == expected
    assert _request(f"{base}/predict", *_texts("great film"))[0] == 200  # still serving


def test_quiet_still_says_where_it_listens_once(bundle):
    """Issue 19 item 11: `serve --port 0 --quiet` printed nothing, so the port was unknowable."""
    with _serving(bundle, "--quiet") as (base, _, lines):
        assert _request(f"{base}/predict", *_texts("great film"))[0] == 200
    assert sum("graft: serving" in line for line in lines) == 1


def test_messages_name_the_problem(server):
    base, model, _ = server
    status, body = _request(f"{base}/predict", json.dumps({"texts": ["x"]}).encode(), "application/json")
    assert status == 422 and "missing field 'inputs'" in body["detail"]
    status, body = _request(f"{base}/predict", b"files=1", "multipart/form-data; boundary=x")
    assert status == 422 and "this model takes text" in body["detail"]
    status, body = _request(f"{base}/predict", b"[" * 100_000, "application/json")
    assert status == 422 and "not valid JSON" in body["detail"]
    status, body = _request(f"{base}/predict", *_texts("great film"))
    probabilities = body["predictions"][0]["probabilities"]
    assert status == 200 and set(probabilities) == {str(label) for label in model.label_space}
    assert (
        abs(probabilities[body["predictions"][0]["prediction"]] - model.predict_proba(["great film"]).max())
        < 1e-5
    )


def test_limits_refuse_with_413_and_a_full_queue_with_503(bundle):
    """Issue 19 item 4: no limit on body, inputs, text length or queue. Scored one input at a time on
    one thread, a 40-input request stays queued long enough for a second one to find the queue full."""
    options = ["--max-body", "8KB", "--max-inputs", "40", "--max-text-chars", "150", "--max-queue", "40",
               "--threads", "1", "--max-batch", "1"]  # fmt: skip
    with _serving(bundle, *options) as (base, _, _):
        limits = _get(f"{base}/health")["limits"]
        assert limits | {"max_file": 0} == {"max_body": 8192, "max_file": 0, "max_inputs": 40,
                                            "max_text_chars": 150, "max_queue": 40}  # fmt: skip
        status, body = _request(f"{base}/predict", *_texts(*["great film " * 13] * 60))
        assert status == 413 and "--max-body" in body["detail"], body
        status, body = _request(f"{base}/predict", *_texts(*["great film"] * 41))
        assert status == 413 and "41 inputs" in body["detail"] and "--max-inputs" in body["detail"]
        status, body = _request(f"{base}/predict", *_texts("fine", "a great film " * 12))
        assert status == 413 and "input 1: 156 characters" in body["detail"], body
        assert "--max-text-chars" in body["detail"]

        full = _texts(*[f"a great and fine film number {i}" for i in range(40)])
        for _attempt in range(10):
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(_request, f"{base}/predict", *full)
                while _get(f"{base}/health")["queued"] == 0 and not first.done():
                    pass
                status, body, headers = _exchange(f"{base}/predict", *full)
                assert first.result()[0] == 200 and len(first.result()[1]["predictions"]) == 40
            if status == 503:
                break  # else the first request was answered before the second arrived: try again
        assert status == 503 and "--max-queue" in body["detail"], (status, body)
        assert int(headers["retry-after"]) >= 1
        assert _request(f"{base}/predict", *full)[0] == 200  # the queue drained: served again


def test_bad_limits_are_refused_before_loading(capsys):
    from graft.cli import main

    assert main(["serve", "no-such-bundle", "--max-inputs", "100", "--max-queue", "10"]) == 2
    assert "--max-queue (10) is smaller than --max-inputs (100)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a range the parser checks: a usage error (exit 2)
        main(["serve", "no-such-bundle", "--threads", "0"])
    assert "argument --threads: must be an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "no-such-bundle", "--max-body", "12 parsecs"])
    assert "expected a size such as 16MB" in capsys.readouterr().err


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    parts = b"".join(
        b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"" + name.encode() + b"\"\r\n\r\n"
        + data + b"\r\n"
        for name, data in files
    )  # fmt: skip
    return parts + b"--x--\r\n", "multipart/form-data; boundary=x"


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory):
    from tests.conftest import make_image_folder

    folder = tmp_path_factory.mktemp("serve-images")
    images = make_image_folder(folder / "images", n_per_class=8)
    cfg = RunConfig(evaluation=EvalConfig(baselines="none"))
    graft.fit(images, backbone="arch:small_cnn", strategy="linear_probe", config=cfg, progress=False,
              out=folder / "run")  # fmt: skip
    return folder / "run", sorted(images.rglob("*.png"))[:3]


def test_image_models_take_uploads_and_name_an_undecodable_file(image_bundle):
    bundle, paths = image_bundle
    long = "a" * 300 + ".png"  # issue 19 item 3: 500, the server built a path from it
    with _serving(bundle) as (base, model, _):
        status, body = _request(f"{base}/predict", *_multipart([(p.name, p.read_bytes()) for p in paths]))
        assert status == 200 and [p["prediction"] for p in body["predictions"]] == model.predict(
            [str(p) for p in paths]
        )
        status, body = _request(f"{base}/predict", *_multipart([(long, paths[0].read_bytes())]))
        assert status == 200 and body["predictions"][0]["prediction"] == model.predict([str(paths[0])])[0]

        mixed = [("fine.png", paths[0].read_bytes()), ("broken.png", b"not an image"), (long, b"nor this")]
        status, body = _request(f"{base}/predict", *_multipart(mixed))
        assert status == 422 and "broken.png" in body["detail"] and "a" * 60 + "..." in body["detail"]
        # issue 19 item 11: details named the server's temporary paths
        assert tempfile.gettempdir() not in body["detail"] and "graft-serve-" not in body["detail"]
        status, body = _request(f"{base}/predict", *_multipart([("notes.txt", b"hello")]))
        assert status == 422 and "'notes.txt'" in body["detail"], body
        assert tempfile.gettempdir() not in body["detail"]
        status, body = _request(
            f"{base}/predict", json.dumps({"inputs": ["a text"]}).encode(), "application/json"
        )
        assert status == 422 and "takes image files" in body["detail"]


def test_uploads_over_the_limits_are_413(image_bundle):
    bundle, paths = image_bundle
    with _serving(bundle, "--max-file", "2KB", "--max-body", "64KB", "--max-inputs", "3") as (base, _, _):
        status, body = _request(f"{base}/predict", *_multipart([("big.png", b"x" * 4096)]))
        assert status == 413 and "big.png is 4,096 bytes" in body["detail"] and "--max-file" in body["detail"]
        status, body = _request(
            f"{base}/predict", *_multipart([(f"{i}.png", b"x" * 1000) for i in range(70)])
        )
        assert status == 413 and "--max-body" in body["detail"], body
        status, body = _request(f"{base}/predict", *_multipart([(p.name, p.read_bytes()) for p in paths * 2]))
        assert status == 413 and "--max-inputs" in body["detail"], body
        status, body = _request(f"{base}/predict", *_multipart([(p.name, p.read_bytes()) for p in paths]))
        assert status == 200 and len(body["predictions"]) == 3


def test_a_port_in_use_is_a_clear_error(server):
    from graft.serve import serve

    base, model, _ = server
    port = int(base.rsplit(":", 1)[1])
    with pytest.raises(graft.ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
        serve(model, port=port)


class _Recorder:
    """A stand-in for a loaded bundle that records each batch it scores and fails on the input "boom";
    a batch starting with "hold" waits until ``release`` is set (or 30 s, which fails the test)."""

    task, label_space = "multiclass", ["neg", "pos"]

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.holding, self.release = threading.Event(), threading.Event()

    def activated(self, examples: list[str]) -> np.ndarray:
        self.batches.append(list(examples))
        if examples[0].startswith("hold"):
            self.holding.set()
            assert self.release.wait(30), "the held batch was never released"
        if "boom" in examples:
            raise ValueError("this input breaks the model")
        return np.tile([0.25, 0.75], (len(examples), 1))

    def decide(self, activated: np.ndarray) -> list[str]:
        return ["pos"] * len(activated)


def _schedule(model, requests: list[list[str]], release: bool = True, **options) -> list:
    """Each request's answers (or the RequestError it got) from a Scheduler, requests submitted in order."""
    from graft.serve import Scheduler

    async def main() -> list:
        scheduler = Scheduler(model, **options)
        worker = asyncio.create_task(scheduler.run())
        tasks = []
        for examples in requests:
            tasks.append(asyncio.create_task(scheduler.score(examples)))
            await asyncio.sleep(0)  # queued in this order
            if examples[0].startswith("hold"):
                while not model.holding.is_set():  # its first batch is being scored
                    await asyncio.sleep(0.001)
        if release:
            model.release.set()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        worker.cancel()
        scheduler.pool.shutdown()
        return out

    return asyncio.run(main())


def test_a_batch_that_fails_is_scored_again_alone():
    """Issue 19 item 3: an input the model cannot score fails its own request (422, its index), and the
    requests that shared its batch are answered."""
    from graft.serve import RequestError

    model = _Recorder()
    model.release.set()
    good, bad, other = _schedule(model, [["a", "b"], ["c", "boom", "d"], ["e"]], max_wait_ms=500)
    assert sorted(model.batches[0]) == ["a", "b", "boom", "c", "d", "e"]  # one batch, which failed
    assert [a["prediction"] for a in good] == ["pos", "pos"] and len(other) == 1
    assert isinstance(bad, RequestError) and bad.status == 422
    assert bad.detail == "input 1 cannot be scored: ValueError: this input breaks the model"


def test_a_small_request_takes_its_turn_between_a_large_ones_batches():
    """Issue 19 item 4: a one-sentence request waited 122 s behind 1,024 long texts. On one thread, it
    joins the next batch; on two, a large request never takes the last free thread."""
    model = _Recorder()
    large = ["hold"] + [f"large {i}" for i in range(11)]
    answers = _schedule(model, [large, ["small"]], max_batch=4, threads=1)
    assert [len(a) for a in answers] == [12, 1]
    assert "small" in model.batches[1]  # right after the batch that was running

    model = _Recorder()
    other = [f"other {i}" for i in range(8)]

    def release_on_small(examples, activated=model.activated):
        out = activated(examples)
        if "small" in examples:
            model.release.set()  # the held batch ends only once the small request is scored
        return out

    model.activated = release_on_small
    answers = _schedule(model, [large, other, ["small"]], release=False, max_batch=4, threads=2)
    assert [len(a) for a in answers] == [12, 8, 1]
    assert model.batches[1] == ["small"]  # beside the held batch, before the other large request
