"""One worker, killed with SIGKILL under three requests at once: each waits for the restarted worker and
continues from what it had committed, streamed or not, vanilla or RAIN, and a request sent while the
worker restarts waits for it instead of being refused. After MAX_RESUBMISSIONS resubmissions a further
death is the 503 it used to be at once.

One kill serves the first tests: a worker's start is the slow part (on vLLM three processes import the
engine, over a minute on two cores), so the requests it interrupts share it."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import httpx
import pytest

from serve_helpers import (LONG, TINY_RAIN, VANILLA, Stream, busy, chat_body, finish_chunks,
                           kill_the_worker_running_it, kill_until_it_fails, long_stream, reference_text, streamed_text)

ANSWER_TOKENS = 150  # vanilla answers long enough to be running still when the search has committed two sets
SEARCH_TOKENS = 40


@pytest.fixture(scope="module")
def single(launch_server, backend):
    with launch_server("--backend", backend, "--workers", "1", "--threads", "1", "--max-running-per-worker", "3",
                       "--default-mode", "vanilla") as server:
        yield server


@dataclass
class Interrupted:
    """What one kill of the only worker did to the requests it was running, and to one sent after it."""
    reference: str  # the uninterrupted greedy answer
    search: Stream
    stream: Stream
    answer: dict  # the non-streamed answer's {"response": ...}
    sent_while_restarting: dict  # {"response": ...}
    waited: bool  # that request was queued while no worker was alive


def post_in_background(server, body: dict, into: dict) -> threading.Thread:
    thread = threading.Thread(target=lambda: into.update(response=httpx.post(
        server.base_url + "/v1/chat/completions", json=body, timeout=900)), daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def interrupted(single) -> Interrupted:
    reference = reference_text(single, ANSWER_TOKENS)
    search = long_stream(single, max_tokens=SEARCH_TOKENS, **TINY_RAIN)
    search.wait_for_payloads(1 + 2)  # the sets of 1 and 2 tokens
    stream = long_stream(single, max_tokens=ANSWER_TOKENS)
    answer: dict = {}
    call = post_in_background(single, chat_body(LONG, max_tokens=ANSWER_TOKENS), answer)
    stream.wait_for_payloads(1 + 10)
    single.wait_for(lambda h: busy(h) and busy(h)[0]["running"] == 3, what="the three requests to run")
    assert search.is_alive() and stream.is_alive() and call.is_alive(), "a request ended before the kill"

    kill_the_worker_running_it(single)
    single.wait_for(lambda h: h["workers"][0]["state"] == "restarting", what="the death noticed")
    assert single.health()[0] == 200  # it still takes requests
    sent: dict = {}
    sender = post_in_background(single, chat_body(max_tokens=4, **VANILLA), sent)
    # queued behind the three resumed requests, not refused: a start takes seconds to minutes, admission milliseconds
    single.wait_for(lambda h: h["waiting"] == 4 or not sender.is_alive(), what="the request to queue")
    waited = not single.health()[1]["workers"][0]["alive"] and sender.is_alive()
    for thread in (search, stream, call, sender):
        thread.join()
    return Interrupted(reference, search, stream, answer, sent, waited)


def test_a_stream_waits_for_the_restarted_worker_and_goes_on(interrupted):
    chunks = interrupted.stream.chunks
    assert streamed_text(chunks) == interrupted.reference and len(chunks) == 1 + ANSWER_TOKENS + 1
    (last,) = finish_chunks(chunks)
    assert last["choices"][0]["finish_reason"] == "length" and last["rain"]["summary"]["resubmissions"] == 1
    assert chunks[-1]["usage"]["completion_tokens"] == ANSWER_TOKENS


def test_a_resumed_search_keeps_the_answer_depth(interrupted):
    chunks = interrupted.search.chunks
    contents = [c for c in chunks if c.get("choices")][1:]
    sizes = [c["rain"]["tokens"] for c in contents]
    assert sizes[:4] == [1, 2, 4, 10], "the resumed search restarted at the answer's first set size"
    summary = finish_chunks(chunks)[0]["rain"]["summary"]
    assert summary["resubmissions"] == 1 and summary["commits"] == len(contents)
    assert chunks[-1]["usage"]["completion_tokens"] == sum(sizes) == summary["completion_tokens"]


def test_a_non_streamed_answer_survives_its_worker(interrupted):
    response = interrupted.answer["response"]
    assert response.status_code == 200, response.text[:500]
    answer = response.json()
    assert answer["choices"][0]["message"]["content"] == interrupted.reference
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == ANSWER_TOKENS and answer["rain"]["resubmissions"] == 1


def test_a_request_sent_while_the_only_worker_restarts_waits_and_completes(interrupted):
    assert interrupted.waited, "the request was not queued while the worker restarted (or the worker was back too soon)"
    response = interrupted.sent_while_restarting["response"]
    assert response.status_code == 200, response.text[:500]
    assert response.json()["choices"][0]["message"]["content"]


# The resubmission limit is the pool's, the same for both backends; on vLLM its four worker restarts would
# cost minutes of engine start-up.
@pytest.mark.parametrize("backend", ["transformers"], indirect=True)
def test_a_request_that_keeps_killing_workers_ends_in_a_503(single):
    stream = long_stream(single, max_tokens=1000)
    kill_until_it_fails(single)

    chunks = stream.chunks
    error = chunks[-1]["error"]
    assert error["code"] == "worker_died" and error["type"] == "service_unavailable_error"
    assert not finish_chunks(chunks)
