"""The baseline strategies (rain_core/search/baselines.py) and the separate judge, on tiny random Llamas:
self_check replaces an answer its judge values at or below the threshold, judges streamed answers
sentence by sentence; best_of_n returns the judge's best-scored candidate; a served judge judges."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from rain_core.chat.prompt import RequestError
from rain_core.config import REFUSAL_TEXT, EngineConfig, EvaluatorConfig, GenerationRequest, RainConfig, SamplingParams
from rain_core.engine import Engine
from rain_core.events import Commit, Finish
from rain_core.search.baselines import SENTENCE_ENDS

JUDGE_FORMAT = dict(prompt="yesno", score="continuous")  # a continuous value, so thresholds can fall between answers
EVALUATOR = EvaluatorConfig(**JUDGE_FORMAT)
QUESTION = ({"role": "user", "content": "What is 2+2?"},)


def generate(engine, rain, seed=0, streamed=False, max_new_tokens=48, temperature=None, messages=QUESTION):
    request = GenerationRequest(messages, SamplingParams(max_new_tokens=max_new_tokens, seed=seed, temperature=temperature),
                                rain, streamed=streamed)
    events = list(engine.events(request))
    assert isinstance(events[-1], Finish)
    return [e for e in events if isinstance(e, Commit)], events[-1]


def strategy(name, **overrides) -> RainConfig:
    return RainConfig().with_overrides(strategy=name, **JUDGE_FORMAT, **overrides)


def test_self_check_replaces_an_answer_valued_at_or_below_the_threshold(tiny_engine):
    _, vanilla = generate(tiny_engine, None)
    value = tiny_engine.backend.self_evaluate(QUESTION, vanilla.text, EVALUATOR).value
    commits, kept = generate(tiny_engine, strategy("self_check", judge_threshold=value - 1e-3))
    assert kept.text == vanilla.text and len(commits) == 1  # nothing leaves before the one judgment
    assert kept.judgment.values == [pytest.approx(value, abs=1e-4)] and kept.judgment.replaced is False
    assert kept.totals.self_evaluations == 1 and kept.judgment.threshold == pytest.approx(value - 1e-3)
    _, replaced = generate(tiny_engine, strategy("self_check", judge_threshold=value + 1e-3))
    assert replaced.text == REFUSAL_TEXT and replaced.finish_reason == "stop" and replaced.judgment.replaced is True
    assert replaced.judgment.strategy == "self_check" and replaced.judgment.judge == "self"


def test_self_check_takes_the_engines_threshold_unless_the_request_sets_one(tiny_engine):
    _, finish = generate(tiny_engine, strategy("self_check"), max_new_tokens=4)
    assert finish.judgment.threshold == tiny_engine.config.judge_threshold


def two_sentence_answers(engine, seeds=range(32)):
    """The seeds whose sampled answer holds at least two sentences (the tiny model rarely ends one)."""
    for seed in seeds:
        commits, finish = generate(engine, strategy("self_check", judge_threshold=-1.0), seed, True, 64, 1.0)
        if len(commits) >= 2:
            yield seed, commits, finish


def two_sentence_answer(engine):
    for found in two_sentence_answers(engine):
        return found
    pytest.fail("no seed gave the tiny model a second sentence")


def test_streamed_self_check_commits_each_sentence_after_judging_the_answer_so_far(tiny_engine):
    seed, commits, finish = two_sentence_answer(tiny_engine)
    assert all(c.text[-1] in SENTENCE_ENDS for c in commits[:-1])
    assert len(finish.judgment.values) == len(commits) == finish.totals.self_evaluations
    so_far = ""
    for commit, value in zip(commits, finish.judgment.values):
        so_far += commit.text
        assert tiny_engine.backend.self_evaluate(QUESTION, so_far, EVALUATOR).value == pytest.approx(value, abs=1e-4)
    whole, unstreamed = generate(tiny_engine, strategy("self_check", judge_threshold=-1.0), seed, False, 64, 1.0)
    assert unstreamed.text == finish.text and len(whole) == 1 and len(unstreamed.judgment.values) == 1


def test_streamed_self_check_replaces_the_first_sentence_that_fails(tiny_engine):
    """A later sentence fails where the first passed: what was sent stays, the failing one is the refusal."""
    found = [(seed, commits, finish) for seed, commits, finish in two_sentence_answers(tiny_engine)
             if finish.judgment.values[0] > min(finish.judgment.values[1:])]
    assert found, "no seed gave an answer whose first sentence is valued above a later one"
    seed, commits, finish = found[0]
    rest = finish.judgment.values[1:]
    fails = rest.index(min(rest)) + 1  # the first judgment at or below min(rest)
    sent, replaced = generate(tiny_engine, strategy("self_check", judge_threshold=min(rest)), seed, True, 64, 1.0)
    assert [c.text for c in sent[:fails]] == [c.text for c in commits[:fails]]
    assert sent[fails].text == " " + REFUSAL_TEXT and len(sent) == fails + 1
    assert replaced.judgment.replaced is True and len(replaced.judgment.values) == fails + 1


def test_best_of_n_returns_the_judges_best_scored_candidate(tiny_engine):
    commits, finish = generate(tiny_engine, strategy("best_of_n", best_of=4), seed=1)
    values = finish.judgment.values
    assert len(values) == 4 and len(set(values)) > 1 and len(commits) == 1  # nothing leaves before the pick
    assert finish.judgment.chosen == values.index(max(values)) and finish.judgment.threshold is None
    assert tiny_engine.backend.self_evaluate(QUESTION, finish.text, EVALUATOR).value == pytest.approx(max(values), abs=1e-4)
    assert finish.totals.self_evaluations == len(set(values))
    _, again = generate(tiny_engine, strategy("best_of_n", best_of=4), seed=1)
    assert again.text == finish.text and again.judgment.values == values  # seeded


def test_best_of_n_reports_logprobs_of_the_answer_under_the_model(tiny_engine):
    request = GenerationRequest(QUESTION, SamplingParams(max_new_tokens=6, seed=2, logprobs=0), strategy("best_of_n", best_of=2))
    (commit,) = [e for e in tiny_engine.events(request) if isinstance(e, Commit)]
    expected = tiny_engine.backend.answer_logprob(QUESTION, tiny_engine.tokenizer.decode(commit.token_ids))
    assert sum(lp.logprob for lp in commit.logprobs) == pytest.approx(expected, abs=1e-3)


def test_served_judge_needs_a_judge_model(tiny_engine):
    with pytest.raises(RequestError) as error:
        generate(tiny_engine, strategy("self_check", judge="served"))
    assert error.value.param == "rain.judge"


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory, smol_tokenizer):
    """Another random tiny Llama: a judge whose values differ from the generator's own."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         eos_token_id=smol_tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tiny-judge")
    LlamaForCausalLM(config).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


def test_a_served_judge_judges_with_its_own_model(tiny_model_dir, judge_dir):
    engine = Engine(EngineConfig(model=str(tiny_model_dir), judge_model=str(judge_dir)))
    judge = Engine(EngineConfig(model=str(judge_dir)))
    _, served = generate(engine, strategy("self_check", judge="served", judge_threshold=-1.0))
    assert served.judgment.judge == str(judge_dir)
    assert served.judgment.values == [pytest.approx(judge.backend.self_evaluate(QUESTION, served.text, EVALUATOR).value, abs=1e-4)]
    assert served.judgment.values != [pytest.approx(engine.backend.self_evaluate(QUESTION, served.text, EVALUATOR).value, abs=1e-4)]
    # continuous scores: two random tiny judges' votes are both 0 alike, their log-odds are not
    searched = RainConfig(max_iters=2, min_iters=2).with_overrides(score="continuous")
    served_commits, rain = generate(engine, replace(searched, judge="served"), max_new_tokens=3)
    assert rain.judgment.strategy == "rain" and rain.judgment.judge == str(judge_dir) and rain.totals.self_evaluations > 0
    # the same seeded search judged by the model itself values its sets otherwise: the judge's values drove it
    own_commits, own = generate(engine, searched, max_new_tokens=3)
    assert own.judgment.judge == "self"
    assert [c.stats.value for c in served_commits] != [c.stats.value for c in own_commits]
