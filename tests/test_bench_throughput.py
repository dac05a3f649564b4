"""bench.throughput's statistics, request bodies and tables on hand-made numbers (no server, nothing timed)."""
from __future__ import annotations

import re
from dataclasses import asdict

from bench.throughput import Sample, body, level_salt, level_stats, ratios, refused, step_table, table
from server.api.schemas import CACHE_SALT, MAX_CACHE_SALT


def test_level_counts_only_answered_requests_and_divides_by_the_wall_time():
    samples = [Sample(True, 1.0, 0.2, 16), Sample(True, 3.0, 0.4, 16), Sample(True, 2.0, 0.3, 8),
               Sample(False, 0.1, status=503, error="503 no_worker: busy")]
    level = level_stats("rain-serve/transformers", "vanilla", 4, samples, wall_s=4.0)
    assert (level.requests, level.ok, level.failed, level.completion_tokens) == (4, 3, 1, 40)
    assert level.tokens_per_s == 10.0
    assert (level.ttft_p50_s, level.latency_p50_s) == (0.3, 2.0)
    assert level.latency_p95_s == 2.9  # inclusive quantiles between 2.0 and 3.0
    assert level.failures == {"503 no_worker: busy": 1}
    assert refused(level) is None


def test_a_mode_is_unavailable_only_when_every_request_was_a_400():
    bad = [Sample(False, 0.01, status=400, error="400 unknown_parameter: rain.parallel_leaves")] * 2
    assert refused(level_stats("s", "paper_pl4", 1, bad, 0.02)) == "400 unknown_parameter: rain.parallel_leaves"
    mixed = bad + [Sample(False, 0.01, status=0, error="ReadTimeout")]
    assert refused(level_stats("s", "paper_pl4", 1, mixed, 0.02)) is None
    none_ok = level_stats("s", "vanilla", 1, [], 0.0)
    assert (none_ok.tokens_per_s, none_ok.ttft_p50_s) == (0.0, None) and refused(none_ok) is None


def test_only_the_paper_modes_send_parallel_leaves_and_vanilla_is_greedy():
    vanilla = body("hi", "vanilla", 32, 3, "s")
    assert vanilla["rain"] == {"enabled": False} and vanilla["temperature"] == 0.0 and vanilla["stream"]
    assert body("hi", "budget2", 32, 3, "s")["rain"] == {"max_iters": 2, "min_iters": 2}
    assert "temperature" not in body("hi", "budget2", 32, 3, "s")  # under RAIN it would set the candidates' temperature
    assert body("hi", "paper_pl4", 32, 3, "s")["rain"] == {"parallel_leaves": 4}
    assert all("parallel_leaves" not in str(body("hi", m, 8, 0, "s")) for m in ("vanilla", "budget2"))


def test_no_two_levels_share_cached_prompt_states():
    salts = {level_salt(server, mode, clients) for server in ("rain-serve/vllm", "vllm-peer")
             for mode in ("vanilla", "paper_pl1", "paper_pl4") for clients in (1, 2, 16)}
    assert len(salts) == 18 and all(re.fullmatch(CACHE_SALT, s) and len(s) <= MAX_CACHE_SALT for s in salts)
    assert body("hi", "paper_pl4", 8, 0, "salt")["cache_salt"] == "salt"


def test_tables():
    steps = [{"engine": "transformers", "method": "m", "rows": ratios({1: 20.0, 8: 30.0})},
             {"engine": "vllm", "reason": "the peer did not start"}]
    assert steps[0]["rows"]["8"] == {"ms": 30.0, "ratio_to_1_row": 1.5}
    text = step_table(steps)
    assert "| transformers | 8 | 30.0 | 1.50x |" in text and "unavailable: the peer did not start" in text
    level = level_stats("vllm-peer", "vanilla", 2, [Sample(True, 1.0, 0.25, 32)], 2.0)
    text = table({"levels": [asdict(level)], "unavailable": [{"server": "rain-serve/vllm", "mode": None, "reason": "exit 2"}]})
    assert "| vllm-peer | vanilla | 2 | 1/0 | 32 | 2.0 | **16.0** | 0.25 | 1.00 | 1.00 |" in text
    assert "| rain-serve/vllm | all | unavailable: exit 2 |" in text


def test_search_profile_ratios_pair_each_prompt_s_runs_and_take_the_median():
    from bench.search_profile import Profile, Run, ratios, table as profile_table

    runs = [Run(0, 1, 20.0, 100, 200, 4000, "a"), Run(0, 4, 10.0, 100, 100, 4400, "a"),
            Run(1, 1, 30.0, 120, 100, 5000, "b"), Run(1, 4, 36.0, 132, 80, 5000, "b")]
    assert ratios(runs, 4) == {"wall_s": 0.85, "iterations": 1.05, "forward_calls": 0.65, "tokens_fed": 1.05}
    assert ratios(runs[:1], 4) == {}  # no K=4 run of that prompt: nothing to pair
    text = profile_table(runs, [Profile(4, 12.5, 900, 0, None, [{"op": "aten::mm", "count": 3, "self_cpu_ms": 7.5}])], 4)
    assert "| **K=4 / K=1, median** | | **0.85** | 1.05 | 0.65 | 1.05 |" in text
    assert "| 4 | 12.50 | 900 | 0 | - |" in text and "| aten::mm | 3 | 7.5 | - |" in text
