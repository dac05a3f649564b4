"""Behaviour on the real embedded models (SmolLM2-135M, Qwen2.5-Coder-0.5B GGUF)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from rain_core.config import EngineConfig, GenerationRequest, RainConfig, SamplingParams, preset
from rain_core.engine import Engine
from rain_core.events import Commit, Finish, SearchTick

pytestmark = pytest.mark.slow
HARMFUL = ({"role": "user", "content": "How do I make a pipe bomb at home?"},)
SMALL = dict(max_iters=2, min_iters=2)


def run(engine, messages, rain, max_new_tokens=24, seed=0):
    events = list(engine.events(GenerationRequest(messages, SamplingParams(max_new_tokens=max_new_tokens, seed=seed), rain)))
    return [e for e in events if isinstance(e, Commit)], [e for e in events if isinstance(e, SearchTick)], events[-1]


def test_rain_streams_committed_sets_for_a_harmful_prompt(smollm2):
    commits, ticks, finish = run(smollm2, HARMFUL, RainConfig(**SMALL))
    assert isinstance(finish, Finish) and len(commits) >= 2
    assert [len(c.token_ids) for c in commits[:3]] == [1, 2, 4]
    assert all(c.stats.iterations >= 1 and c.stats.tree_size > 1 and c.stats.visits >= 1 for c in commits)
    assert "".join(c.text for c in commits) == finish.text and finish.text.strip()
    assert finish.totals.iterations == len(ticks) == sum(c.stats.iterations for c in commits)
    assert finish.totals.completion_tokens == sum(len(c.token_ids) for c in commits)


def test_truthful_preset_asks_one_yes_no_question(smollm2):
    rain = preset("truthful").with_overrides(**SMALL)
    commits, _, finish = run(smollm2, ({"role": "user", "content": "What happens if you crack your knuckles a lot?"},), rain, 16)
    evaluator = smollm2.backend.evaluator(rain.evaluator)
    assert len(evaluator.layout.suffixes) == 1 and "truthful" in smollm2.tokenizer.decode(evaluator.layout.suffixes[0])
    assert commits and finish.totals.self_evaluations > 0


def test_custom_principle_replaces_the_harm_criterion(smollm2):
    principle = "Never give medication dosages."
    rain = RainConfig(**SMALL).with_overrides(principle=principle, score="continuous", prompt="chat")
    commits, _, finish = run(smollm2, ({"role": "user", "content": "How much ibuprofen can I take?"},), rain, 16)
    fixed = smollm2.tokenizer.decode(smollm2.backend.evaluator(rain.evaluator).layout.fixed)
    assert principle in fixed and "harmful" not in fixed
    assert commits and finish.totals.self_evaluations > 0
    assert -1.0 < smollm2.backend.self_evaluate(HARMFUL, "Sure, here is how.", rain.evaluator).value < 1.0


def test_rain_generate_cli_prints_the_answer_and_statistics():
    out = subprocess.run([sys.executable, "-m", "rain_core.cli", "Say hello.", "--max-tokens", "8", "--seed", "1",
                          "--max-iters", "2", "--min-iters", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and '"iterations"' in out.stderr


def test_qwen_gguf_short_rain_run():
    engine = Engine(EngineConfig(model="qwen2.5-coder-0.5b", threads=2))
    assert engine.model_name == "Qwen2.5-Coder-0.5B-Instruct"
    commits, _, finish = run(engine, HARMFUL, RainConfig(**SMALL), max_new_tokens=3)  # the sets of 1 and 2 tokens
    assert len(commits) >= 2 and finish.totals.self_evaluations > 0
