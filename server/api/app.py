"""HTTP routes: the OpenAI chat-completions, completions, responses and models endpoints, /health,
/metrics and the playground (/).

The API process never runs the model: it validates, queues and relays, so its event loop stays free
to answer /health and /metrics while the workers search.
"""
from __future__ import annotations

import hmac
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse

from rain_core.chat.prompt import RequestError
from rain_core.models import resolve

from server.api import openapi
from server.api.bodies import Health, ModelCard, ModelList
from server.api.chat import ChatCompletionRequest, ChatRender
from server.api.completions import CompletionRender, CompletionRequest
from server.api.errors import CLIENT_CLOSED, ApiError, echo, install_handlers
from server.api.limits import read_body
from server.api.metrics import Metrics
from server.api.playground import router as playground
from server.api.prompts import Prompts
from server.api.responses import ResponseRender, ResponsesRequest
from server.api.run import Run, interleaved, outcomes, unless_disconnected
from server.api.schemas import Body, choice_requests, parse_request
from server.config import ServerConfig
from server.workers.pool import Job, Pool

log = logging.getLogger("rain_serve")

KEEPALIVE_S = 10  # SSE comment lines while a long search has nothing to commit yet


@dataclass
class Admitted:
    """A validated request whose choices are queued: one Run per choice."""

    body: Body
    id: str
    runs: list[Run]

    @property
    def created(self) -> int:
        return self.runs[0].job.created


def health_status(pool: Pool, started: bool) -> str:
    """ok: a worker is ready; restarting: none is, but requests wait in the queue for one (200 too, as the
    server still takes them); unavailable (503): still starting, or every worker is crash-looping."""
    if not started or pool.crash_looping():
        return "unavailable"
    return "ok" if pool.alive() else "restarting"


def create_app(config: ServerConfig) -> FastAPI:
    source = resolve(config.model)  # the reported id, known without loading the weights
    model = source.name
    judge_model = resolve(config.judge_model).name if config.judge_model else None
    pool = Pool(config.worker_configs(), config.running_per_worker, config.max_queue, config.worker_hang_timeout)
    prompts = Prompts(source, lambda: pool.context_length)
    metrics = Metrics(model, running=lambda: len(pool.running), waiting=lambda: len(pool.waiting), alive=pool.alive)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        pool.start()
        prompts.start()
        yield
        await pool.close()  # uvicorn has drained the requests by now

    app = FastAPI(title="rain-serve", version="0.1.0", lifespan=lifespan, description=openapi.DESCRIPTION)
    install_handlers(app, metrics.error)

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), config.api_key.encode()):
            raise ApiError(401, "missing or incorrect API key; send it as 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    def model_card() -> ModelCard:
        return ModelCard(id=model, object="model", created=started, owned_by="rain-serve", judge_model=judge_model,
                         judge_threshold=config.judge_threshold)

    def known_model(name: str) -> None:
        if name not in (model, config.model_alias):
            raise ApiError(404, f"the model {echo(name)} does not exist; this server serves {model!r}", "model",
                           "model_not_found")

    async def admit(request: Request, kind: type[Body], prefix: str) -> Admitted:
        """Validate, fit the prompt into the context and queue every choice, or raise the ApiError."""
        raw = await read_body(request, config.max_request_bytes)
        body = await prompts.off_loop(parse_request, kind, raw)
        known_model(body.model)
        if not prompts.ready:
            raise ApiError(503, "the server is starting; no worker is ready yet", code="no_worker")
        mode = body.mode(config.default_mode)
        try:
            generation = await prompts.fit(body.generation(mode, 1), body.token_limit, kind.DEFAULT_MAX_TOKENS,
                                          kind.PROMPT_FIELD)
        except RequestError as exc:
            raise ApiError(400, str(exc), exc.param, "invalid_value") from None
        if generation.rain is not None and generation.rain.judge == "served" and judge_model is None:
            raise ApiError(400, "rain.judge 'served' needs a judge model, and this server has none (--judge-model)",
                           "rain.judge", "invalid_value")
        response_id = f"{prefix}{uuid.uuid4().hex}"
        choices = choice_requests(generation, body.choices)
        jobs = [Job(response_id if len(choices) == 1 else f"{response_id}-{i}", r, mode) for i, r in enumerate(choices)]
        pool.submit(jobs)
        log.info("%s: %s, %d choice(s), %d max tokens%s", response_id, mode, len(jobs),
                 generation.params.max_new_tokens, f", user {echo(body.user)}" if body.user else "")
        return Admitted(body, response_id, [Run(pool, metrics, job, config.request_timeout) for job in jobs])

    def in_band(error: ApiError) -> None:
        metrics.error(error.type)

    async def choices_stream(admitted: Admitted, renderer) -> AsyncIterator[str]:
        """Chat and text completion chunks: every choice's sets as they come, then usage and [DONE]."""
        for opening in renderer.opening(len(admitted.runs)):
            yield opening
        dones = []
        try:
            async for index, run, step in interleaved(admitted.runs):
                yield renderer.step(index, run, step)
                if step.done is not None:
                    dones.append(step.done)
            if admitted.body.include_usage:
                yield renderer.usage(dones)
        except ApiError as error:  # the stream has started: the error goes in-band
            in_band(error)
            yield error.body().dump()
        yield "[DONE]"

    async def choices_response(request: Request, admitted: Admitted, renderer):
        if admitted.body.stream:
            return EventSourceResponse(choices_stream(admitted, renderer), ping=KEEPALIVE_S, sep="\n")
        result = await unless_disconnected(request, outcomes(admitted.runs))
        return Response(status_code=CLIENT_CLOSED) if result is None else renderer.completion(result).as_response()

    @v1.get("/models", **openapi.MODELS)
    async def list_models() -> Response:
        return ModelList(object="list", data=[model_card()]).as_response()

    @v1.get("/models/{name:path}", **openapi.MODEL)
    async def get_model(name: str) -> Response:
        known_model(name)
        return model_card().as_response()

    @v1.post("/chat/completions", **openapi.CHAT)
    async def chat_completions(request: Request):
        admitted = await admit(request, ChatCompletionRequest, "chatcmpl-")
        renderer = ChatRender(admitted.id, admitted.created, model, prompts.texts, admitted.body.include_usage)
        return await choices_response(request, admitted, renderer)

    @v1.post("/completions", **openapi.COMPLETIONS)
    async def completions(request: Request):
        admitted = await admit(request, CompletionRequest, "cmpl-")
        renderer = CompletionRender(admitted.id, admitted.created, model, prompts.texts, admitted.body.include_usage)
        return await choices_response(request, admitted, renderer)

    @v1.post("/responses", **openapi.RESPONSES)
    async def responses(request: Request):
        admitted = await admit(request, ResponsesRequest, "resp_")
        (run,) = admitted.runs
        renderer = ResponseRender(admitted.id, admitted.created, admitted.body, model, run.job.request.params.max_new_tokens)
        if admitted.body.stream:
            return EventSourceResponse(renderer.stream(run, in_band), ping=KEEPALIVE_S, sep="\n")
        result = await unless_disconnected(request, run.outcome())
        return Response(status_code=CLIENT_CLOSED) if result is None else renderer.complete(result).as_response()

    app.include_router(v1)
    app.include_router(playground)

    @app.get("/health", **openapi.HEALTH)
    async def health() -> Response:
        status = health_status(pool, prompts.ready)
        body = Health(status=status, model=model, running=len(pool.running), waiting=len(pool.waiting),
                      workers=pool.describe())
        return body.as_response(503 if status == "unavailable" else 200)

    @app.get("/metrics", **openapi.METRICS)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    openapi.install(app)
    return app
