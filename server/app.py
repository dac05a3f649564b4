"""HTTP routes: the OpenAI chat-completions and models endpoints, /health, /metrics and the playground (/).

The API process never runs the model: it validates, queues and relays, so its event loop stays free
to answer /health and /metrics while the workers search.
"""
from __future__ import annotations

import hmac
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse

from rain_core.engine import RequestError
from rain_core.models import resolve

from .chat import ChatRun, unless_disconnected
from .config import ServerConfig
from .errors import ApiError, install_handlers
from .metrics import Metrics
from .playground import router as playground
from .pool import Job, Pool
from .prompts import Prompts
from .schemas import parse_chat_request

log = logging.getLogger("rain_serve")

KEEPALIVE_S = 10  # SSE comment lines while a long search has nothing to commit yet
CLIENT_CLOSED = 499  # nginx's status for "the client closed the request"; nobody reads it


def create_app(config: ServerConfig) -> FastAPI:
    source = resolve(config.model)  # the reported id, known without loading the weights
    model = source.name
    pool = Pool(config.worker_configs(), config.max_running_per_worker, config.max_queue)
    prompts = Prompts(source, lambda: pool.context_length)
    metrics = Metrics(model, running=lambda: len(pool.running), waiting=lambda: len(pool.waiting), alive=pool.alive)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        pool.start()
        prompts.start()
        yield
        await pool.close()  # uvicorn has drained the requests by now

    app = FastAPI(title="rain-serve", lifespan=lifespan)
    install_handlers(app, metrics.error)

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), config.api_key.encode()):
            raise ApiError(401, "missing or incorrect API key; send it as 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    def model_card() -> dict:
        return {"id": model, "object": "model", "created": started, "owned_by": "rain-serve"}

    def known_model(name: str) -> None:
        if name not in (model, config.model_alias):
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {model!r}", "model",
                           "model_not_found")

    @v1.get("/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @v1.get("/models/{name:path}")
    async def get_model(name: str) -> dict:
        known_model(name)
        return model_card()

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        body = parse_chat_request(await request.body())
        known_model(body.model)
        if not prompts.ready:
            raise ApiError(503, "the server is starting; no worker is ready yet", code="no_worker")
        mode = body.mode(config.default_mode)
        try:
            max_new_tokens = prompts.max_new_tokens(body.chat_messages(), body.token_limit)
        except RequestError as exc:
            raise ApiError(400, str(exc), exc.param, "invalid_value") from None
        job = Job(f"chatcmpl-{uuid.uuid4().hex}", body.generation(mode, max_new_tokens), mode)
        pool.submit(job)
        log.info("%s: %s, %d max tokens%s", job.id, mode, max_new_tokens, f", user {body.user!r}" if body.user else "")
        run = ChatRun(pool, metrics, job, model, config.request_timeout)
        if body.stream:
            return EventSourceResponse(run.stream(body.include_usage), ping=KEEPALIVE_S, sep="\n")
        result = await unless_disconnected(request, run.complete())
        return Response(status_code=CLIENT_CLOSED) if result is None else JSONResponse(result)

    app.include_router(v1)
    app.include_router(playground)

    @app.get("/health")
    async def health() -> JSONResponse:
        ready = pool.alive() > 0 and prompts.ready
        body = {"status": "ok" if ready else "unavailable", "model": model, "running": len(pool.running),
                "waiting": len(pool.waiting), "workers": pool.describe()}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
