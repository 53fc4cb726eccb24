"""``graft serve``: a bundle behind HTTP (FastAPI + uvicorn), its contract enforced on every request.

Endpoints:

* ``GET /health``: ``{"status": "ok", "queued": n, "limits": {...}, ...}``.
* ``GET /contract``: task, label space, input contract and decision rules (what ``graft export`` writes).
* ``POST /predict``: text models take JSON ``{"inputs": ["a text", ...]}``; image and audio models take
  the files as multipart uploads named ``files``. The answer: one ``{"prediction", "probabilities"}``
  per input, exactly what ``graft predict`` answers (abstaining, cost rule and label thresholds of the
  bundle included).

Every request is checked alone before it is queued, against the contract and the :class:`ServeLimits`:
a request over a size limit gets 413, one that breaks the contract (wrong modality, missing field,
empty text, text that is not Unicode, undecodable file) gets 422 naming the input, and when the queue
holds ``max_queue`` inputs new requests get 503 with ``Retry-After``. Details name inputs by index and
uploads by the client's file name, never by a path on the server.

Scoring (:class:`Scheduler`): inputs from concurrent requests are scored together in batches of at most
``max_batch`` on ``threads`` worker threads. A large request is cut into batches that take turns with
other requests' (the least-served request goes first, the smaller on a tie), holds one thread at a
time, and never the last free one, so a one-sentence request does not wait behind it. A batch that
fails is scored again request by request, then input by input, so only the input that fails gets a 422.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import itertools
import json
import logging
import math
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request  # module level: FastAPI resolves the endpoint's annotations here

from graft.config import AT_LEAST_1
from graft.data.dataset import text_problem
from graft.errors import ConfigError, GraftError

if TYPE_CHECKING:
    from graft.api import Model

MiB = 1024 * 1024
_SUFFIX = re.compile(r"\.[a-z0-9]{1,8}")  # an upload's extension, kept in its server-side name
_log = logging.getLogger("graft.serve")


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of the server; anything larger is refused with 413 before it costs.

    The defaults keep a laptop responsive: the largest text request (16 MiB of JSON) decodes to a few
    tens of MB, and the queue holds four of them. Each has the ``graft serve`` option of its name.

    Attributes:
        max_body: request body bytes (``None``: 16 MiB for a text model's JSON, 256 MiB for uploads).
        max_file: bytes per uploaded file.
        max_inputs: texts or files per request.
        max_text_chars: characters per text.
        max_queue: inputs admitted and not yet scored, beyond which requests get 503.
    """

    max_body: int | None = None
    max_file: int = 32 * MiB
    max_inputs: int = 1024
    max_text_chars: int = 100_000
    max_queue: int = 4096

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None or name != "max_body":
                AT_LEAST_1.check(f"--{name.replace('_', '-')}", value)
        if self.max_queue < self.max_inputs:
            raise ConfigError(
                f"--max-queue ({self.max_queue}) is smaller than --max-inputs ({self.max_inputs}): a "
                "request of the largest size could never be queued; raise --max-queue"
            )

    def body_limit(self, modality: str) -> int:
        if self.max_body is not None:
            return self.max_body
        return 16 * MiB if modality == "text" else 256 * MiB


class RequestError(Exception):
    """A request answered with ``status`` (413, 422, 503) and ``detail`` rather than predictions."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


@dataclass(eq=False)
class _Job:
    """One request in the queue: its inputs, how far they have been handed out and answered."""

    examples: list[Any]
    future: asyncio.Future
    order: int
    arrived: float
    answers: list[Any]  # one slot per input, filled as its batches come back
    handed: int = 0  # inputs given to a worker so far
    scored: int = 0
    in_flight: bool = False


@dataclass
class _Failed:
    """The inputs of one request's part of a batch that cannot be scored: ``(index in part, why)``."""

    problems: list[tuple[int, str]]


class Scheduler:
    """Scores queued requests in batches on worker threads; see the module docstring for the order.

    Args:
        model: the loaded bundle.
        max_batch: inputs per forward pass at most.
        max_wait_ms: how long the first input of a batch waits for others to join it.
        threads: batches scored at once (a model's forward pass is read-only, so threads may share it).
        max_queue: inputs admitted and not yet scored, beyond which requests are refused.
    """

    def __init__(
        self, model: Model, *, max_batch: int = 64, max_wait_ms: float = 5.0, threads: int = 2,
        max_queue: int = 4096,
    ) -> None:  # fmt: skip
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait_ms / 1000
        self.threads, self.max_queue = threads, max_queue
        self.jobs: list[_Job] = []
        self.busy = 0
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="graft-score")
        self._wake = asyncio.Event()
        self._order = itertools.count()
        self._tasks: set[asyncio.Task] = set()
        self._spent, self._done = 0.0, 0  # worker seconds and inputs scored: the Retry-After estimate
        self._trim = False

    @property
    def backlog(self) -> int:
        """Inputs admitted and not yet scored."""
        return sum(len(job.examples) - job.scored for job in self.jobs)

    def admit(self, n: int) -> None:
        """Refuse (503) a request of ``n`` inputs that would take the backlog past ``max_queue``."""
        backlog = self.backlog
        if backlog + n <= self.max_queue:
            return
        per_input = self._spent / self._done if self._done else 0.1
        wait = min(600, max(1, math.ceil((backlog + n - self.max_queue) * per_input / self.threads)))
        raise RequestError(
            503,
            f"the server is busy: {backlog} inputs are waiting to be scored and this request adds {n} "
            f"(at most {self.max_queue} wait, --max-queue); retry in {wait} s",
            {"Retry-After": str(wait)},
        )

    async def score(self, examples: list[Any]) -> list[dict[str, Any]]:
        """The answers for ``examples`` (already checked against the contract), in their order."""
        self.admit(len(examples))
        loop = asyncio.get_running_loop()
        job = _Job(examples, loop.create_future(), next(self._order), loop.time(), [None] * len(examples))
        self.jobs.append(job)
        self._wake.set()
        try:
            return await job.future
        finally:
            self._forget(job)  # answered, failed, or its client went away

    async def run(self) -> None:
        """Hand batches to free threads, forever (the app's lifespan cancels it)."""
        loop = asyncio.get_running_loop()
        while True:
            parts, wait = self._pick(loop.time())
            if parts:
                self.busy += 1
                task = loop.create_task(self._dispatch(parts))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                continue
            if self._trim and not self.jobs and not self.busy:
                self._trim = False
                loop.run_in_executor(self.pool, _release_memory)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _pick(self, now: float) -> tuple[list[tuple[_Job, int, int]], float | None]:
        """The next batch as ``(job, start, stop)`` parts, or none and how long to wait before looking
        again (``None``: until something changes)."""
        if self.busy >= self.threads:
            return [], None
        last_thread = self.threads > 1 and self.busy == self.threads - 1
        ready = [
            job for job in self.jobs
            if not job.in_flight and job.handed < len(job.examples)
            and not (last_thread and len(job.examples) > self.max_batch)
        ]  # fmt: skip
        if not ready:
            return [], None
        deadline = min(job.arrived for job in ready) + self.max_wait
        if sum(len(job.examples) - job.handed for job in ready) < self.max_batch and now < deadline:
            return [], deadline - now
        parts, room = [], self.max_batch
        for job in sorted(ready, key=lambda j: (j.handed, len(j.examples), j.order)):
            take = min(room, len(job.examples) - job.handed)
            parts.append((job, job.handed, job.handed + take))
            job.handed += take
            job.in_flight = True
            room -= take
            if not room:
                break
        return parts, None

    async def _dispatch(self, parts: list[tuple[_Job, int, int]]) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            chunks = [job.examples[a:b] for job, a, b in parts]
            results = await loop.run_in_executor(self.pool, self._score_parts, chunks)
        finally:
            self.busy -= 1
            self._wake.set()
        self._spent += time.perf_counter() - start
        self._done += sum(b - a for _, a, b in parts)
        for (job, a, b), result in zip(parts, results, strict=True):
            job.in_flight = False
            if job.future.done():
                continue
            if isinstance(result, _Failed):
                problems = [f"input {a + k} cannot be scored: {why}" for k, why in result.problems]
                job.future.set_exception(RequestError(422, "; ".join(problems)))
                self._forget(job)
                continue
            job.answers[a:b] = result
            job.scored += b - a
            if job.scored == len(job.examples):
                job.future.set_result(job.answers)
                self._forget(job)

    def _forget(self, job: _Job) -> None:
        if job in self.jobs:
            self.jobs.remove(job)
            # glibc keeps the worker threads' freed arenas; a large request's are handed back once idle
            self._trim = self._trim or len(job.examples) > self.max_batch

    def _score_parts(self, parts: list[list[Any]]) -> list[list[dict[str, Any]] | _Failed]:
        """Answers per part (one part per request in the batch). When the batch fails, each part is
        scored alone, and a part that fails alone input by input, so one bad input fails only its own
        request, with its index."""
        try:
            answers = self._answer([x for part in parts for x in part])
        except Exception:
            return [self._isolate(part) for part in parts]
        out, start = [], 0
        for part in parts:
            out.append(answers[start : start + len(part)])
            start += len(part)
        return out

    def _isolate(self, part: list[Any]) -> list[dict[str, Any]] | _Failed:
        if len(part) > 1:
            with contextlib.suppress(Exception):
                return self._answer(part)
        answers, problems = [], []
        for k, example in enumerate(part):
            try:
                answers += self._answer([example])
            except Exception as exc:
                _log.warning("graft serve: an input could not be scored", exc_info=True)
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                problems.append((k, f"{type(exc).__name__}: {first}" if first else type(exc).__name__))
        return _Failed(problems) if problems else answers

    def _answer(self, examples: list[Any]) -> list[dict[str, Any]]:
        activated = self.model.activated(examples)
        labels = self.model.decide(activated)
        if self.model.task == "regression":
            return [{"prediction": float(v)} for v in activated.ravel()]
        names = [str(label) for label in self.model.label_space]
        return [
            {
                "prediction": label,
                "probabilities": {n: round(float(p), 6) for n, p in zip(names, row, strict=True)},
            }
            for label, row in zip(labels, activated, strict=True)
        ]


def _release_memory() -> None:
    """Return freed heap memory to the system (glibc's ``malloc_trim``; a no-op elsewhere)."""
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).malloc_trim(0)


def check_scoring(max_batch: int, threads: int) -> None:
    """Refuse scoring options that cannot work (ConfigError naming the option)."""
    AT_LEAST_1.check("--max-batch", max_batch)
    AT_LEAST_1.check("--threads", threads)


def create_app(
    model: Model, *, max_batch: int = 64, max_wait_ms: float = 5.0, threads: int = 2,
    limits: ServeLimits | None = None,
) -> Any:  # fmt: skip
    """The FastAPI application serving ``model`` (see the module docstring)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from graft.export import contract_record

    check_scoring(max_batch, threads)
    limits = limits or ServeLimits()
    scheduler = Scheduler(model, max_batch=max_batch, max_wait_ms=max_wait_ms, threads=threads,
                          max_queue=limits.max_queue)  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(scheduler.run())
        yield
        worker.cancel()
        scheduler.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="graft", summary=f"{model.task} model: {len(model.label_space)} labels", lifespan=lifespan
    )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "task": model.task,
            "modality": model.modality,
            "labels": len(model.label_space),
            "queued": scheduler.backlog,
            "limits": asdict(limits) | {"max_body": limits.body_limit(model.modality)},
        }

    @app.get("/contract")
    async def contract() -> dict[str, Any]:
        return contract_record(model)

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        try:
            scheduler.admit(1)  # a full queue refuses before the body is read
            if model.modality == "text":
                texts = await _read_texts(request, model, limits)
                return {"predictions": await scheduler.score(texts)}
            with tempfile.TemporaryDirectory(prefix="graft-serve-") as scratch:
                paths = await _read_uploads(request, model, limits, Path(scratch))
                return {"predictions": await scheduler.score(paths)}
        except RequestError as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    return app


async def _read_body(request: Any, limit: int) -> bytearray:
    """The request body, refused (413) as soon as it is known to exceed ``limit`` bytes: from its
    declared length before reading, else while it streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(None, limit)
    return body


def _too_large(size: int | None, limit: int) -> RequestError:
    got = f"{size:,} bytes" if size is not None else "more"
    return RequestError(
        413, f"the request body is {got}; at most {limit:,} bytes are read (--max-body): split the request"
    )


async def _read_texts(request: Any, model: Model, limits: ServeLimits) -> list[str]:
    """A text model's request: its texts, checked alone and against the contract."""
    from starlette.concurrency import run_in_threadpool

    if not request.headers.get("content-type", "").startswith("application/json"):
        raise RequestError(422, 'this model takes text: send JSON {"inputs": ["a text", ...]}')
    body = await _read_body(request, limits.body_limit("text"))
    # Off the event loop: decoding megabytes of JSON would hold up every other request.
    return await run_in_threadpool(_parse_texts, body, model, limits)


def _parse_texts(body: bytearray, model: Model, limits: ServeLimits) -> list[str]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        raise RequestError(422, "the body is not valid JSON") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise RequestError(422, 'missing field \'inputs\': send JSON {"inputs": ["a text", ...]}')
    texts = payload["inputs"]
    if not isinstance(texts, list) or not texts or not all(isinstance(x, str) for x in texts):
        raise RequestError(422, "'inputs' must be a non-empty list of texts")
    if len(texts) > limits.max_inputs:
        raise RequestError(
            413, f"{len(texts)} inputs in one request; at most {limits.max_inputs} (--max-inputs): split it"
        )
    long = [i for i, t in enumerate(texts) if len(t) > limits.max_text_chars]
    if long:
        raise RequestError(413, _listed(
            [f"input {i}: {len(texts[i]):,} characters" for i in long],
            f"at most {limits.max_text_chars:,} characters per text (--max-text-chars); a model reads "
            "only the start of a text, so send the part it should judge",
        ))  # fmt: skip
    problems = [p for i, t in enumerate(texts) if (p := _text_problem(i, t))]
    if problems:
        raise RequestError(422, _listed(problems, "send UTF-8 text"))
    try:
        return model.inputs(texts)  # the contract: e.g. file names sent to a text model
    except (GraftError, ValueError) as exc:
        raise RequestError(422, str(exc)) from None


def _text_problem(i: int, text: str) -> str | None:
    problem = text_problem(text)
    return None if problem is None else f"input {i} is {problem}"


def _listed(problems: list[str], advice: str, shown: int = 10) -> str:
    more = f"; and {len(problems) - shown} more" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more + f" ({advice})"


async def _read_uploads(request: Any, model: Model, limits: ServeLimits, folder: Path) -> list[str]:
    """An image/audio model's request: the uploads written to ``folder`` under names graft chooses
    (index + extension), checked against the contract; problems name the client's file names."""
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise RequestError(
            422, f"this model takes {model.modality} files: upload them as multipart form field 'files'"
        )
    limit = limits.body_limit(model.modality)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    counted = Request(request.scope, _counting(request.receive, limit))
    try:
        form = await counted.form(max_files=limits.max_inputs, max_fields=limits.max_inputs)
    except HTTPException as exc:  # starlette's answer to a malformed or over-long form
        if "Too many files" in str(exc.detail):
            raise RequestError(413, f"at most {limits.max_inputs} files per request (--max-inputs)") from None
        raise RequestError(422, f"the upload cannot be read: {exc.detail}") from None
    try:
        uploads = form.getlist("files")
        if not uploads or any(isinstance(u, str) for u in uploads):
            raise RequestError(422, f"missing field 'files': upload one or more {model.modality} files")
        names = [_client_name(u.filename, i) for i, u in enumerate(uploads)]
        big = [
            f"{names[i]} is {u.size:,} bytes"
            for i, u in enumerate(uploads)
            if (u.size or 0) > limits.max_file
        ]
        if big:
            raise RequestError(413, _listed(big, f"at most {limits.max_file:,} bytes per file, --max-file"))
        paths = await run_in_threadpool(_save_uploads, uploads, folder)
    finally:
        await form.close()
    try:
        return await run_in_threadpool(model.inputs, [str(p) for p in paths])
    except (GraftError, ValueError) as exc:
        raise RequestError(422, _hide_paths(str(exc), paths, names, folder)) from None


def _counting(receive: Any, limit: int) -> Any:
    """``receive`` that refuses (413) a body growing past ``limit`` while the form parser reads it."""
    seen = 0

    async def counted() -> dict[str, Any]:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise _too_large(None, limit)
        return message

    return counted


def _save_uploads(uploads: list[Any], folder: Path) -> list[Path]:
    """Each upload copied to ``folder/<index><extension>``: the client's name never becomes a path (it
    may be 300 characters, or hold ``../``); the extension is what decoding needs."""
    import shutil

    paths = []
    for i, upload in enumerate(uploads):
        suffix = Path(_client_name(upload.filename, i)).suffix.lower()
        path = folder / (f"{i}{suffix}" if _SUFFIX.fullmatch(suffix) else str(i))
        with path.open("wb") as out:
            shutil.copyfileobj(upload.file, out)
        paths.append(path)
    return paths


def _client_name(raw: str | None, i: int) -> str:
    """An upload's file name as the client gave it, fit for a message: the last path component,
    printable characters, at most 100 of them."""
    name = re.split(r"[\\/]", raw or "")[-1]
    name = "".join(c if c.isprintable() else "?" for c in name) or f"upload {i}"
    return name if len(name) <= 100 else f"{name[:60]}...{name[-37:]}"


def _hide_paths(message: str, paths: list[Path], names: list[str], folder: Path) -> str:
    """``message`` with each server-side upload path replaced by the client's file name (quoted)."""
    pairs = [(str(p), n) for p, n in zip(paths, names, strict=True)]
    pairs += [(str(p.resolve()), n) for p, n in zip(paths, names, strict=True)]
    for path, name in sorted(pairs, key=lambda pair: -len(pair[0])):
        message = message.replace(f"'{path}'", repr(name)).replace(path, repr(name))
    for prefix in {str(folder.resolve()), str(folder)}:
        message = message.replace(prefix, "<upload>")
    return message


def serve(
    model: Model,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 64,
    threads: int = 2,
    limits: ServeLimits | None = None,
    ready: Any = None,
) -> None:
    """Serve ``model`` until interrupted. The socket is bound and listening before ``ready(url)`` is
    called (``port`` 0: the system picks one, and the url says which), so a client that connects after
    it is queued even while the server is still starting."""
    import socket

    import uvicorn

    app = create_app(model, max_batch=max_batch, threads=threads, limits=limits)  # options checked first
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port") from None
    sock.listen(2048)
    if ready is not None:
        ready(f"http://{host}:{sock.getsockname()[1]}")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
