"""Faults the pool handles the same way on every backend, so tested on the one that restarts in seconds:
only a crash-looping worker gets a request refused, and a hung worker is killed and its stream resumed.
(A killed worker's requests: test_resume.py, on both backends; an engine's death: test_backends.py.)"""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import httpx
import pytest

from serve_helpers import LONG, VANILLA, chat_body, finish_chunks, long_stream, streamed_text

pytestmark = pytest.mark.slow
RESTART_TIMEOUT_S = 900  # a bound on a hang, not a measurement


def only_worker(server) -> dict:
    (worker,) = server.health()[1]["workers"]
    return worker


def ready_again(server, dead_pid: int) -> dict:
    return server.wait_for(lambda h: h["workers"][0]["alive"] and h["workers"][0]["pid"] != dead_pid,
                           timeout_s=RESTART_TIMEOUT_S, what="the restarted worker")


def test_only_a_crash_loop_is_a_503_and_it_ends_when_a_start_succeeds(launch_server, tmp_path):
    """The pool's own logic, the same on both backends (so on the one that restarts in seconds): a worker
    whose restarts keep failing (its model file gone) is crash-looping after CRASH_LOOP_DEATHS deaths in a
    row; then, and only then, a request is refused with 503 no_worker and a Retry-After."""
    from rain_core.models import resolve
    from server.workers.supervisor import CRASH_LOOP_DEATHS

    source = resolve("smollm2")
    model = tmp_path / source.gguf_file  # the same name and size: the converted model cached for it serves
    shutil.copyfile(Path(source.path) / source.gguf_file, model)
    with launch_server("--backend", "transformers", "--model", str(model), "--threads", "1",
                       "--default-mode", "vanilla") as server:
        body = {"model": str(model), "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        hidden = model.rename(tmp_path / "elsewhere")
        os.kill(only_worker(server)["pid"], signal.SIGKILL)
        looping = server.wait_for(lambda h: h["workers"][0]["state"] == "crash_loop", timeout_s=RESTART_TIMEOUT_S,
                                  what="the worker to crash-loop")
        assert looping["status"] == "unavailable" and server.health()[0] == 503
        refused = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=60)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_worker", refused.text
        assert int(refused.headers["retry-after"]) >= 1 and f"{CRASH_LOOP_DEATHS} times" in refused.json()["error"]["message"]

        hidden.rename(model)
        server.wait_for(lambda h: h["status"] == "ok", timeout_s=RESTART_TIMEOUT_S, what="a start that succeeds")
        answer = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=RESTART_TIMEOUT_S)
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]


def test_a_hung_worker_is_restarted_and_its_stream_resumes(launch_server):
    """A worker that stops answering (SIGSTOP: its process alive, its heartbeats gone) is killed after
    --worker-hang-timeout and restarted; the stream it held resumes there, unchanged. The pool's logic,
    the same on both backends, so on the one that restarts in seconds."""
    with launch_server("--backend", "transformers", "--threads", "1", "--default-mode", "vanilla",
                       "--worker-hang-timeout", "5") as server:
        reference = httpx.post(server.base_url + "/v1/chat/completions", json=chat_body(LONG, max_tokens=40, **VANILLA),
                               timeout=600).json()["choices"][0]["message"]["content"]
        worker = only_worker(server)["pid"]
        stream = long_stream(server, 40, **VANILLA)
        stream.wait_for_payloads(1 + 5)
        os.kill(worker, signal.SIGSTOP)
        try:
            assert len(stream.data) < 1 + 40, "the stream ended before its worker was stopped"
            assert ready_again(server, worker)["workers"][0]["restarts"] == 1
        finally:
            try:
                os.kill(worker, signal.SIGCONT)  # if the pool has not killed it yet, let it be killed cleanly
            except ProcessLookupError:
                pass
        chunks = stream.chunks
        assert streamed_text(chunks) == reference
        (last,) = finish_chunks(chunks)
        assert last["choices"][0]["finish_reason"] == "length" and last["rain"]["summary"]["resubmissions"] == 1
        assert "sent nothing for" in server.log_tail(200_000)
