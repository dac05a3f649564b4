"""Hostile and careless input: bounded bodies (413), prompt work off the event loop, and a 400 naming the
problem for every malformed request (a bounded fuzz, lone surrogates in every text field), never a 5xx;
errors that quote a huge input only in part; a client gone mid-body noted in one quiet line."""
from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_helpers import VANILLA, chat_body

MAX_BYTES = 2 * 1024 * 1024  # the --max-request-bytes default
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")


def post_raw(server, path: str, content, headers=None) -> httpx.Response:
    return httpx.post(server.base_url + path, content=content, timeout=60,
                      headers={"Content-Type": "application/json", **(headers or {})})


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "Traceback" not in error["message"]
    return error


@pytest.mark.parametrize("path", ENDPOINTS)
def test_oversize_bodies_are_413s(rain_server, path):
    body = json.dumps(chat_body("x" * (MAX_BYTES + 10))).encode()
    error = assert_openai_error(post_raw(rain_server, path, body), 413)
    assert error["code"] == "request_too_large" and "--max-request-bytes" in error["message"]

    def chunked():  # no Content-Length: refused while it arrives
        for _ in range(3):
            yield b" " * (MAX_BYTES // 2)
        yield body

    assert assert_openai_error(post_raw(rain_server, path, chunked()), 413)["code"] == "request_too_large"


def test_health_answers_while_a_huge_prompt_is_checked(rain_server):
    """The largest prompt that must be tokenised (the precheck refuses anything longer at once): its
    templating and tokenising take about a second here, all of it off the event loop, so /health answers
    again and again before the prompt's 400 comes back."""
    prompt = "a b c d e f g h " * 40_000  # 640k characters: under the length precheck, over the context
    body = json.dumps({**chat_body(prompt), **VANILLA}).encode()
    answer: dict = {}
    sender = threading.Thread(target=lambda: answer.update(r=post_raw(rain_server, "/v1/chat/completions", body)))
    answered_before_the_400 = 0
    with httpx.Client(base_url=rain_server.base_url, timeout=10) as client:
        client.get("/health")
        sender.start()
        while sender.is_alive():
            assert client.get("/health").status_code == 200
            answered_before_the_400 += "r" not in answer
            time.sleep(0.02)
    sender.join()
    error = assert_openai_error(answer["r"], 400)
    assert error["param"] == "messages" and "context" in error["message"]  # it was tokenised and measured
    assert answered_before_the_400 >= 5, "the event loop did not answer /health while the prompt was checked"


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "seed": 1180591620717411303424}',
    b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    b'{"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "top_p": -Infinity}',
    b'{"model": "smollm2", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    b'{"model": "smollm2", "messages": [{"role": "user", "content": {"nested": ' + b"[" * 50 + b"]" * 50 + b"}}]}",
])
@pytest.mark.parametrize("path", ENDPOINTS)
def test_malformed_bodies_are_400s(rain_server, path, raw):
    assert_openai_error(post_raw(rain_server, path, raw), 400)


LONE = "\\ud800"  # a JSON escape that decodes to half of a UTF-16 pair: no text
SURROGATE_FIELDS = [  # (endpoint, body with LONE in one text field, the param the 400 must name)
    ("/v1/chat/completions", chat_body(f"hi {LONE}"), "messages[0].content"),
    ("/v1/chat/completions", {"model": "smollm2", "messages": [{"role": "user", "content": [
        {"type": "text", "text": LONE}]}]}, "messages[0].content[0].text"),
    ("/v1/chat/completions", chat_body(stop=["x", LONE]), "stop[1]"),
    ("/v1/chat/completions", chat_body(rain={"principle": f"Be kind {LONE}"}), "rain.principle"),
    ("/v1/completions", {"model": "smollm2", "prompt": LONE}, "prompt"),
    ("/v1/completions", {"model": "smollm2", "prompt": "hi", "stop": LONE}, "stop"),
    ("/v1/responses", {"model": "smollm2", "input": LONE}, "input"),
    ("/v1/responses", {"model": "smollm2", "input": "hi", "instructions": LONE}, "instructions"),
    ("/v1/responses", {"model": "smollm2", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": LONE}]}]}, "input[0].content[0].text"),
    ("/v1/responses", {"model": "smollm2", "input": "hi", "user": LONE}, "user"),
]


@pytest.mark.parametrize("path, body, param", SURROGATE_FIELDS, ids=[f"{p}:{n}" for p, _, n in SURROGATE_FIELDS])
def test_a_lone_surrogate_is_a_400_naming_its_field(rain_server, path, body, param):
    raw = json.dumps(body).replace("\\\\ud800", "\\ud800")  # json.dumps escaped the escape
    assert "\\ud800" in raw and "\\\\ud800" not in raw
    error = assert_openai_error(post_raw(rain_server, path, raw), 400)
    assert error["param"] == param and "surrogate" in error["message"]


def test_an_error_quotes_a_huge_input_only_in_part(rain_server):
    name = "m" * 1_000_000
    response = post_raw(rain_server, "/v1/chat/completions", json.dumps({**chat_body(), "model": name}))
    error = assert_openai_error(response, 404)
    assert error["param"] == "model" and "more characters" in error["message"]
    assert len(response.content) < 1000
    unknown = post_raw(rain_server, "/v1/chat/completions", json.dumps({**chat_body(), "k" * 100_000: 1}))
    assert len(assert_openai_error(unknown, 400)["param"]) < 1000 and len(unknown.content) < 4000


def test_a_client_gone_mid_body_is_one_quiet_line(rain_server):
    logged = len(rain_server.log_tail(10**9))
    with socket.create_connection(("127.0.0.1", rain_server.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"model\": \"smol")  # and gone, 985 bytes short
    line = "disconnected while sending its body"
    rain_server.wait_for(lambda _: line in rain_server.log_tail(10**9)[logged:], what="the disconnect to be noted")
    assert httpx.get(rain_server.base_url + "/health", timeout=10).status_code == 200
    new = rain_server.log_tail(10**9)[logged:]
    noted = [entry for entry in new.splitlines() if line in entry]
    assert len(noted) == 1 and "INFO" in noted[0], noted
    assert "Traceback" not in new and "ClientDisconnect" not in new, new[-3000:]


# A bounded fuzz: valid-looking bodies with one field made wrong in a random way. Each must be a 400 that
# names a parameter (or no parameter, for a body that is no JSON object at all); none may be a 5xx.
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(allow_nan=False),
                         st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                  st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=10)
OUT_OF_INT64 = st.one_of(st.integers(max_value=-(2**63) - 1), st.integers(min_value=2**63))
WRONG = {
    "seed": st.one_of(OUT_OF_INT64, st.floats(), st.text(), st.booleans(), st.lists(st.integers())),
    "temperature": st.one_of(st.floats(max_value=-0.001), st.floats(min_value=2.001), st.text(), st.lists(st.none())),
    "top_p": st.one_of(st.floats(max_value=0), st.floats(min_value=1.001), st.text()),
    "n": st.one_of(st.integers(max_value=0), st.integers(min_value=9), st.text(), st.floats()),
    "max_tokens": st.one_of(st.integers(max_value=0), st.integers(min_value=10_000), OUT_OF_INT64, st.text()),
    "stop": st.one_of(st.lists(st.text(min_size=1), min_size=5, max_size=6), st.just(""), st.integers(),
                      st.lists(st.integers(), min_size=1)),
    "stream": st.one_of(st.text(), st.integers(), st.dictionaries(st.text(), st.none(), min_size=1)),
    "rain": st.one_of(st.text(), st.integers(), st.fixed_dictionaries({"max_iters": st.one_of(
        st.integers(max_value=0), st.integers(min_value=10_001), st.text())}),
        st.fixed_dictionaries({"enabled": st.text()}), st.fixed_dictionaries({"bogus": JSON_VALUES})),
    "messages": st.one_of(st.just([]), st.text(), st.lists(st.fixed_dictionaries({
        "role": st.text().filter(lambda r: r not in ("system", "developer", "user", "assistant")),
        "content": st.text()}), min_size=1, max_size=2), st.lists(st.fixed_dictionaries({
            "role": st.just("user"), "content": st.one_of(st.integers(), st.lists(JSON_VALUES, min_size=1),
                                                          st.dictionaries(st.text(), JSON_VALUES))}), min_size=1)),
    "model": st.one_of(st.integers(), st.none(), st.lists(st.text())),
}
UNKNOWN_FIELD = st.text(min_size=1, max_size=12).filter(lambda k: k not in WRONG)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.sampled_from(sorted(WRONG)).flatmap(lambda field: st.tuples(st.just(field), WRONG[field])),
    st.tuples(UNKNOWN_FIELD, JSON_VALUES),
))
def test_fuzz_one_wrong_field_is_a_400(rain_server, mutation):
    field, value = mutation
    body = {**chat_body(max_tokens=1), **VANILLA, field: value}
    response = post_raw(rain_server, "/v1/chat/completions", json.dumps(body))
    assert response.status_code in (400, 404, 413), (body, response.text[:300])  # 404: a `model` that is a string
    assert_openai_error(response, response.status_code)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(ENDPOINTS), st.one_of(JSON_VALUES, st.binary(max_size=64)))
def test_fuzz_any_body_is_never_a_5xx(rain_server, path, value):
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    response = post_raw(rain_server, path, raw)
    assert response.status_code < 500, (raw, response.text[:300])
    assert_openai_error(response, response.status_code)
