"""``graft serve``: a bundle behind HTTP (FastAPI + uvicorn), its contract enforced on every request.

Endpoints:

* ``GET /health``: ``{"status": "ok", ...}``.
* ``GET /contract``: task, label space, input contract and decision rules (what ``graft export`` writes).
* ``POST /predict``: text models take JSON ``{"inputs": ["a text", ...]}``; image and audio models take
  the files as multipart uploads named ``files``. The answer: one ``{"prediction", "probabilities"}``
  per input, exactly what ``graft predict`` answers (abstaining, cost rule and label thresholds of the
  bundle included). A request that breaks the contract (wrong modality, missing field, empty text,
  undecodable file) gets HTTP 422 naming the problem; the server keeps serving.

Concurrent requests are batched: inputs that arrive within ``max_wait_ms`` of each other are scored
together, up to ``max_batch`` inputs, in one worker thread (the model is not thread-safe; one forward
pass at a time also keeps memory flat).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request  # module level: FastAPI resolves the endpoint's annotations here

from graft.errors import GraftError

if TYPE_CHECKING:
    from graft.api import Model

MAX_INPUTS_PER_REQUEST = 1024


class Batcher:
    """Collects validated inputs from concurrent requests and scores them in batches."""

    def __init__(self, model: Model, max_batch: int = 64, max_wait_ms: float = 5.0) -> None:
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue[tuple[list[Any], asyncio.Future]] = asyncio.Queue()

    async def score(self, examples: list[Any]) -> list[dict[str, Any]]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((examples, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            size, deadline = len(items[0][0]), loop.time() + self.max_wait
            while size < self.max_batch:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
                items.append(item)
                size += len(item[0])
            examples = [x for chunk, _ in items for x in chunk]
            try:
                answers = await loop.run_in_executor(None, self._answer, examples)
            except Exception as exc:  # a failure of the batch: every request in it learns of it
                for _, future in items:
                    future.set_exception(exc)
                continue
            start = 0
            for chunk, future in items:
                future.set_result(answers[start : start + len(chunk)])
                start += len(chunk)

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


def create_app(model: Model, *, max_batch: int = 64, max_wait_ms: float = 5.0) -> Any:
    """The FastAPI application serving ``model`` (see the module docstring)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException

    from graft.export import contract_record

    batcher = Batcher(model, max_batch, max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

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
        }

    @app.get("/contract")
    async def contract() -> dict[str, Any]:
        return contract_record(model)

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as scratch:
            try:
                examples = await _read_request(request, model, Path(scratch))
                examples = model.inputs(examples)  # the contract: modality, decodable files, non-empty texts
            except (GraftError, ValueError) as exc:
                raise HTTPException(status_code=422, detail=str(exc)) from None
            return {"predictions": await batcher.score(examples)}

    return app


async def _read_request(request: Any, model: Model, folder: Path) -> list[Any]:
    """The inputs of a request, or a ValueError saying what is wrong with it."""
    kind = request.headers.get("content-type", "")
    if model.modality == "text":
        if not kind.startswith("application/json"):
            raise ValueError('this model takes text: send JSON {"inputs": ["a text", ...]}')
        try:
            body = await request.json()
        except Exception:
            raise ValueError("the body is not valid JSON") from None
        if not isinstance(body, dict) or "inputs" not in body:
            raise ValueError('missing field \'inputs\': send JSON {"inputs": ["a text", ...]}')
        inputs = body["inputs"]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
            raise ValueError("'inputs' must be a non-empty list of texts")
        if len(inputs) > MAX_INPUTS_PER_REQUEST:
            raise ValueError(f"at most {MAX_INPUTS_PER_REQUEST} inputs per request, got {len(inputs)}")
        if any(not x.strip() for x in inputs):
            raise ValueError("an input text is empty")
        return inputs
    if not kind.startswith("multipart/form-data"):
        raise ValueError(
            f"this model takes {model.modality} files: upload them as multipart form field 'files'"
        )
    form = await request.form()
    uploads = form.getlist("files")
    if not uploads or any(isinstance(u, str) for u in uploads):
        raise ValueError(f"missing field 'files': upload one or more {model.modality} files")
    paths = []
    for i, upload in enumerate(uploads):
        name = Path(upload.filename or f"upload_{i}").name
        path = folder / f"{i}_{name}"
        path.write_bytes(await upload.read())
        paths.append(str(path))
    return paths


def serve(
    model: Model,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 64,
    ready: Any = None,
) -> None:
    """Serve ``model`` until interrupted. The socket is bound and listening before ``ready(url)`` is
    called (``port`` 0: the system picks one, and the url says which), so a client that connects after
    it is queued even while the server is still starting."""
    import socket

    import uvicorn

    from graft.errors import ConfigError

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
    server = uvicorn.Server(uvicorn.Config(create_app(model, max_batch=max_batch), log_level="warning"))
    server.run(sockets=[sock])
