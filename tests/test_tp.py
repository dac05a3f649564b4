"""Tensor parallelism on CPU (gloo): K ranks must answer token for token as one rank does, refuse
splits the model cannot take, and go down as a whole (and come back) when one rank dies. On --backend
vllm, --tp is vLLM's own tensor parallelism, and there too two ranks answer as one."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from rain_core import tp
from rain_core.config import EngineConfig, GenerationRequest, RainConfig, SamplingParams
from rain_core.engine import Engine
from rain_core.events import Commit, Finish
from rain_core.models import ModelSource, load_model
from rain_core.runner import ModelRunner, TreeLayout

MESSAGES = ({"role": "user", "content": "Explain in two sentences why the sky is blue."},)
VANILLA = GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=16))
RAIN = GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=12, seed=1), RainConfig(max_iters=2, min_iters=2))


# refusals: before anything is spawned -----------------------------------------------------------
def test_valid_sizes_are_the_common_divisors_of_heads_and_kv_heads():
    assert tp.valid_tp_sizes(9, 3) == [1, 3]  # SmolLM2-135M
    assert tp.valid_tp_sizes(14, 2) == [1, 2]  # Qwen2.5-0.5B
    assert tp.valid_tp_sizes(32, 8) == [1, 2, 4, 8]


def test_smollm2_over_two_ranks_is_refused_at_once(monkeypatch):
    def no_spawn(*args, **kwargs):
        raise AssertionError("a rank was spawned for a split the model cannot take")

    monkeypatch.setattr(tp.subprocess, "Popen", no_spawn)
    with pytest.raises(ValueError, match=r"9 attention heads and 3 key/value heads.*--tp values that work: 1, 3"):
        Engine(EngineConfig(model="smollm2", tp=2))


def test_architecture_without_a_plan_is_refused(tmp_path):
    from transformers import BloomConfig

    BloomConfig(n_head=4).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no tensor-parallel plan"):
        tp.check_tensor_parallel(ModelSource("bloom", str(tmp_path)), 2)


def test_missing_gpus_are_refused(tmp_path):
    if torch.cuda.device_count() > 63:
        pytest.skip("this host has the GPUs")
    source = ModelSource("tiny", str(_tiny_llama(tmp_path)))
    with pytest.raises(ValueError, match=r"needs GPUs 63\.\.64"):
        tp.check_tensor_parallel(source, 2, "cuda:63")


# the protocol on a tiny random model ------------------------------------------------------------
def _tiny_llama(path: Path, heads: int = 4, kv_heads: int = 2) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=heads * 16, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def _script(runner) -> list:
    """Every operation the search uses: prefill, clone, branches under a tree mask, crop, free."""
    out = []
    a = runner.new_cache()
    out.append(runner.forward(a, torch.arange(3, 23), logits_at=torch.tensor([5, 19])))
    b = runner.clone_cache(a)
    layout = TreeLayout.shared_prefix(runner.cache_length(b), runner.device)
    for step in range(3):
        rows = [0, 1, 2][: 3 - step]
        position_ids, mask = layout.append(rows, [layout.next_position(r) for r in rows])
        ids = torch.tensor([40 + 10 * r + step for r in rows])
        out.append(runner.forward(b, ids, position_ids, mask, torch.arange(len(rows))))
    out.append(runner.cache_length(b))
    runner.truncate(b, 21)
    out.append(runner.forward(b, torch.tensor([[7, 8]])))
    runner.free_cache(a)
    c = runner.new_cache()
    out.append((a, b, c, runner.cache_length(b)))
    out.append(runner.forward(c, torch.tensor([1, 2, 3])))
    return out


@pytest.mark.slow
def test_every_runner_operation_matches_one_rank(tmp_path):
    path = _tiny_llama(tmp_path)
    source = ModelSource("tiny", str(path))
    expected = _script(ModelRunner(load_model(source), "cpu"))
    runner = tp.start_tensor_parallel(source, EngineConfig(model=str(path), tp=2, threads=1))
    try:
        got = _script(runner)
        with pytest.raises(KeyError):  # refused on rank 0 before any rank acts: the group goes on
            runner.clone_cache(999)
        assert runner.failure is None and runner.cache_length(runner.new_cache()) == 0
    finally:
        runner.close()
    for e, g in zip(expected, got):
        if isinstance(e, torch.Tensor):
            assert e.shape == g.shape and (e - g).abs().max() < 1e-4
        else:
            assert e == g
    with pytest.raises(tp.RankFailure, match="closed"):
        runner.new_cache()


# real models: K ranks against one ----------------------------------------------------------------
_tp_engines: dict = {}
_one_engines: dict = {}


def tp_engine(model: str, k: int) -> Engine:
    """One tensor-parallel engine at a time (one process group per process): close the others."""
    key = (model, k)
    engine = _tp_engines.get(key)
    if engine is None or engine.runner.failure is not None:
        close_tp_engines()
        engine = _tp_engines[key] = Engine(EngineConfig(model=model, tp=k, threads=1))
    return engine


def close_tp_engines() -> None:
    for engine in _tp_engines.values():
        engine.runner.close()
    _tp_engines.clear()


def one_engine(model: str) -> Engine:
    if model not in _one_engines:
        _one_engines[model] = Engine(EngineConfig(model=model, threads=1))
    return _one_engines[model]


@pytest.fixture(scope="module", autouse=True)
def _close_engines():
    yield
    close_tp_engines()
    _one_engines.clear()


def answer(engine: Engine, request: GenerationRequest, stop_after: int = 0) -> tuple[list[int], str]:
    ids, text, events = [], "", engine.generate(request)
    for n, event in enumerate(events, start=1):
        if isinstance(event, Commit):
            ids.extend(event.token_ids)
        elif isinstance(event, Finish):
            text = event.text
        if n == stop_after:
            events.close()  # a cancelled request: its caches are freed on every rank
            break
    return ids, text


def assert_same_answers(model: str, k: int) -> None:
    engine = tp_engine(model, k)
    answer(engine, RAIN, stop_after=3)
    answer(engine, VANILLA, stop_after=2)
    got = [answer(engine, VANILLA), answer(engine, RAIN)]
    expected = [answer(one_engine(model), VANILLA), answer(one_engine(model), RAIN)]
    assert got == expected
    assert len(got[0][0]) >= 8 and len(got[1][0]) >= 8, got  # long enough to mean something


@pytest.mark.slow
def test_smollm2_over_three_ranks_answers_as_one():
    assert_same_answers("smollm2", 3)


@pytest.mark.slow
def test_a_dead_rank_fails_the_request_promptly(monkeypatch):
    monkeypatch.setenv("RAIN_TP_EXIT_ON_FAILURE", "0")  # in a worker the process would end here
    engine = tp_engine("smollm2", 3)
    events = engine.generate(GenerationRequest(MESSAGES, SamplingParams(max_new_tokens=200)))
    next(events)
    follower = engine.runner.followers[-1]
    os.kill(follower.pid, signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(tp.RankFailure, match=f"rank 2 \\(pid {follower.pid}\\)"):
        for _ in events:
            pass
    assert time.monotonic() - killed < 10
    with pytest.raises(tp.RankFailure):
        engine.runner.new_cache()
    deadline = time.monotonic() + 10
    while any(p.poll() is None for p in engine.runner.followers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(p.poll() is not None for p in engine.runner.followers)
    close_tp_engines()


@pytest.mark.slow
def test_qwen_over_two_ranks_answers_as_one():
    assert_same_answers("qwen2.5-coder-0.5b", 2)
    close_tp_engines()


# the server ----------------------------------------------------------------------------------
def processes() -> dict[int, tuple[int, bytes]]:
    """{pid: (parent pid, command line)} of every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            found[int(entry.name)] = (int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]), cmdline)
        except (OSError, ValueError, IndexError):
            continue
    return found


def tp_processes() -> dict[int, int]:
    """{pid: parent pid} of the processes running `rain_core.tp`."""
    return {pid: ppid for pid, (ppid, cmdline) in processes().items() if b"rain_core.tp" in cmdline.split(b"\0")}


def followers_of(pid: int) -> list[int]:
    return [child for child, parent in tp_processes().items() if parent == pid]


@pytest.fixture(scope="module")
def tp_server(launch_server):
    close_tp_engines()
    with launch_server("--tp", "3", "--workers", "1", "--threads", "1", "--default-mode", "vanilla") as server:
        yield server


@pytest.mark.slow
def test_server_over_three_ranks_answers_over_http(tp_server):
    worker = tp_server.health()[1]["workers"][0]
    assert len(followers_of(worker["pid"])) == 2
    response = tp_server.client().chat.completions.create(model="smollm2", messages=list(MESSAGES), max_tokens=16)
    assert response.choices[0].message.content == answer(one_engine("smollm2"), VANILLA)[1]


@pytest.mark.slow
def test_killing_a_rank_fails_its_request_and_restarts_the_worker(tp_server):
    worker = tp_server.health()[1]["workers"][0]
    followers = followers_of(worker["pid"])
    result = {}

    def ask():
        body = {"model": "smollm2", "messages": list(MESSAGES), "max_tokens": 400}
        result["response"] = httpx.post(tp_server.base_url + "/v1/chat/completions", json=body, timeout=120)

    asking = threading.Thread(target=ask)
    asking.start()
    tp_server.wait_for(lambda h: h["running"] == 1, 30, "the request to start")
    time.sleep(1)
    os.kill(followers[0], signal.SIGKILL)
    killed = time.monotonic()
    asking.join(60)
    assert not asking.is_alive(), "the request hung after a rank died"
    assert result["response"].status_code in (500, 503), result["response"].text
    assert time.monotonic() - killed < 30
    health = tp_server.wait_for(lambda h: h["workers"][0]["restarts"] == 1 and h["workers"][0]["alive"], 180,
                                "the worker to restart")
    assert health["workers"][0]["pid"] != worker["pid"]
    assert not set(followers) & set(tp_processes()), "the old worker's ranks outlived it"
    assert len(followers_of(health["workers"][0]["pid"])) == 2
    response = tp_server.client().chat.completions.create(model="smollm2", messages=list(MESSAGES), max_tokens=4)
    assert response.choices[0].message.content


# vLLM's tensor parallelism: --backend vllm --tp K is vLLM's tensor_parallel_size ---------------------------
def vllm_ranks(server_pid: int) -> int:
    """vLLM's tensor-parallel worker processes below the server (vLLM titles them VLLM::Worker_TP<rank>)."""
    table = processes()

    def below_server(pid: int) -> bool:
        while pid > 1:
            pid = table.get(pid, (0, b""))[0]
            if pid == server_pid:
                return True
        return False

    return sum(1 for pid, (_, title) in table.items() if title.startswith(b"VLLM::Worker_TP") and below_server(pid))


def vllm_answers(launch_server, k: int) -> tuple[list[dict], int]:
    """A greedy answer and a seeded RAIN search, from a Qwen2.5-Coder-0.5B server over k ranks on CPU."""
    bodies = [{"rain": {"enabled": False}, "max_tokens": 16},
              {"rain": {"max_iters": 2, "min_iters": 2}, "max_tokens": 12, "seed": 1}]
    with launch_server("--backend", "vllm", "--model", "qwen2.5-coder-0.5b", "--tp", str(k), "--default-mode", "vanilla",
                       env={"VLLM_CPU_KVCACHE_SPACE": "1"}, start_timeout_s=600) as server:
        ranks = vllm_ranks(server.process.pid)
        replies = []
        for body in bodies:
            response = httpx.post(server.base_url + "/v1/chat/completions", timeout=300,
                                  json={"model": "qwen2.5-coder-0.5b", "messages": list(MESSAGES), **body})
            assert response.status_code == 200, response.text
            reply = response.json()["choices"][0]
            replies.append({"text": reply["message"]["content"], "commits": reply["rain"].get("commit_stats")})
    return replies, ranks


@pytest.mark.slow
def test_vllm_over_two_ranks_answers_as_one(launch_server):
    two, ranks = vllm_answers(launch_server, 2)
    one, _ = vllm_answers(launch_server, 1)
    assert ranks == 2, "vLLM did not start two tensor-parallel workers (their titles come from setproctitle)"
    assert two == one
    assert len(one[0]["text"]) > 20 and len(one[1]["commits"]) >= 3, one  # long enough to mean something
