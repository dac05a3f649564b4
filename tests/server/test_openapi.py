"""/openapi.json describes every endpoint's bodies, and the real server's bodies match that description."""
from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from serve_helpers import TINY_RAIN, VANILLA, chat_body, sse_data


@pytest.fixture(scope="module")
def document(rain_server) -> dict:
    return httpx.get(rain_server.base_url + "/openapi.json", timeout=10).json()


def check(document: dict, name: str, instance) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, timeout=300)


def stream(server, path: str, body: dict) -> list[str]:
    """The payloads of a stream that must have been answered, with content, so the schema loops check something."""
    with httpx.stream("POST", server.base_url + path, json={**body, "stream": True}, timeout=300) as response:
        assert response.status_code == 200, response.read()
        data = sse_data(response)
    assert len(data) >= 3, data  # an opening event, content, and the end
    return data


def test_every_endpoint_names_its_bodies(document, rain_server):
    paths = document["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        operation = paths[path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].startswith("#/components")
        content = operation["responses"]["200"]["content"]
        assert {"application/json", "text/event-stream"} <= set(content)
        assert {"400", "401", "413", "429", "503", "504"} <= set(operation["responses"])
    rain = document["components"]["schemas"]["RainOptions"]["properties"]
    max_iters = next(s for s in rain["max_iters"]["anyOf"] if s.get("type") == "integer")
    assert (max_iters["minimum"], max_iters["maximum"]) == (1, 10_000)
    parallel_leaves = next(s for s in rain["parallel_leaves"]["anyOf"] if s.get("type") == "integer")
    assert (parallel_leaves["minimum"], parallel_leaves["maximum"]) == (1, 16)
    chat = document["components"]["schemas"]["ChatCompletionRequest"]
    assert chat["additionalProperties"] is False and "messages" in chat["required"]
    assert "overhead_ratio" in document["components"]["schemas"]["RainSummary"]["properties"]
    assert httpx.get(rain_server.base_url + "/docs", timeout=10).status_code == 200


def test_requests_the_server_takes_fit_the_schema(document):
    check(document, "ChatCompletionRequest", chat_body(max_tokens=4, logprobs=True, top_logprobs=2, n=2, **TINY_RAIN))
    check(document, "CompletionRequest", {"model": "m", "prompt": "Hi", "logprobs": 3, "rain": {"max_iters": 2}})
    check(document, "ResponsesRequest", {"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "Hi"}]}], "instructions": "Be brief."})
    with pytest.raises(jsonschema.ValidationError):
        check(document, "ChatCompletionRequest", chat_body(frobnicate=1))
    with pytest.raises(jsonschema.ValidationError):
        check(document, "ChatCompletionRequest", chat_body(rain={"max_iters": 0}))


@pytest.mark.parametrize("extra", [VANILLA, TINY_RAIN], ids=["vanilla", "rain"])
def test_bodies_match_the_document(document, rain_server, extra):
    chat = chat_body(max_tokens=3, logprobs=True, top_logprobs=2, stream_options={"include_usage": True}, **extra)
    check(document, "ChatCompletion", post(rain_server, "/v1/chat/completions", {**chat, "stream_options": None}).json())
    for data in stream(rain_server, "/v1/chat/completions", chat)[:-1]:
        check(document, "ChatCompletionChunk", json.loads(data))
    text = {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 3, "logprobs": 2, **extra}
    check(document, "TextCompletion", post(rain_server, "/v1/completions", text).json())
    for data in stream(rain_server, "/v1/completions", text)[:-1]:
        check(document, "TextCompletion", json.loads(data))
    response = {"model": "smollm2", "input": "Hi", "max_output_tokens": 3, **extra}
    check(document, "ResponseObject", post(rain_server, "/v1/responses", response).json())
    for data in stream(rain_server, "/v1/responses", response):
        check(document, "ResponseStreamEvent", json.loads(data))


def test_errors_models_and_health_match_the_document(document, rain_server):
    check(document, "ErrorBody", post(rain_server, "/v1/chat/completions", chat_body(n=99)).json())
    check(document, "ModelList", httpx.get(rain_server.base_url + "/v1/models", timeout=10).json())
    check(document, "ModelCard", httpx.get(rain_server.base_url + "/v1/models/smollm2", timeout=10).json())
    check(document, "Health", httpx.get(rain_server.base_url + "/health", timeout=10).json())
