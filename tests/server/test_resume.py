"""One worker, killed with SIGKILL under a request: the request waits for the restarted worker and
continues from what it had committed, streamed or not, vanilla or RAIN; after MAX_RESUBMISSIONS
resubmissions a further death is the 503 it used to be at once. The tests run in order on one server."""
from __future__ import annotations

import threading
import time

import pytest

from serve_helpers import (LONG, MODEL, TINY_RAIN, busy, finish_chunks, kill_the_worker_running_it, kill_until_it_fails,
                           long_stream, reference_text, streamed_text)


@pytest.fixture(scope="module")
def single(launch_server, backend):
    with launch_server("--backend", backend, "--workers", "1", "--threads", "1", "--max-running-per-worker", "1",
                       "--default-mode", "vanilla") as server:
        yield server


def test_a_stream_waits_for_the_restarted_worker_and_goes_on(single):
    expected = reference_text(single, 120)
    stream = long_stream(single, max_tokens=120)
    stream.wait_for_payloads(1 + 10)
    kill_the_worker_running_it(single)
    assert len(stream.data) < 1 + 120, "the stream ended before its worker was killed"

    chunks = stream.chunks
    assert streamed_text(chunks) == expected and len(chunks) == 1 + 120 + 1
    (last,) = finish_chunks(chunks)
    assert last["choices"][0]["finish_reason"] == "length" and last["rain"]["summary"]["resubmissions"] == 1
    assert chunks[-1]["usage"]["completion_tokens"] == 120


def test_a_resumed_search_keeps_the_answer_depth(single):
    stream = long_stream(single, max_tokens=40, **TINY_RAIN)
    stream.wait_for_payloads(1 + 2)  # the sets of 1 and 2 tokens
    kill_the_worker_running_it(single)

    chunks = stream.chunks
    contents = [c for c in chunks if c.get("choices")][1:]
    sizes = [c["rain"]["tokens"] for c in contents]
    assert sizes[:4] == [1, 2, 4, 10], "the resumed search restarted at the answer's first set size"
    summary = finish_chunks(chunks)[0]["rain"]["summary"]
    assert summary["resubmissions"] == 1 and summary["commits"] == len(contents)
    assert chunks[-1]["usage"]["completion_tokens"] == sum(sizes) == summary["completion_tokens"]


def test_a_non_streamed_answer_survives_its_worker(single):
    expected = reference_text(single, 150)
    result = {}
    call = threading.Thread(target=lambda: result.update(answer=single.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": LONG}], max_tokens=150)))
    call.start()
    single.wait_for(lambda h: busy(h), what="the request to run")
    time.sleep(1.0)  # some tokens in
    kill_the_worker_running_it(single)
    call.join(timeout=300)

    answer = result["answer"]
    assert answer.choices[0].message.content == expected and answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 150 and answer.model_extra["rain"]["resubmissions"] == 1


# The resubmission limit is the pool's, the same for both backends; on vLLM its four worker restarts would
# cost minutes of engine start-up that the tests above (and test_faults.py) already spend on vLLM's restarts.
@pytest.mark.parametrize("backend", ["transformers"], indirect=True)
def test_a_request_that_keeps_killing_workers_ends_in_a_503(single):
    stream = long_stream(single, max_tokens=1000)
    kill_until_it_fails(single)

    chunks = stream.chunks
    error = chunks[-1]["error"]
    assert error["code"] == "worker_died" and error["type"] == "service_unavailable_error"
    assert not finish_chunks(chunks)
