"""/v1/completions, /v1/responses, logprobs and n through the unmodified OpenAI SDK, on the real server."""
from __future__ import annotations

import math

import openai
import pytest

from serve_helpers import MODEL, TINY_RAIN, VANILLA, chat_body, chunks_of, prompt_tokens, stream_raw

MESSAGES = [{"role": "user", "content": "Name three colours."}]
PROMPT = "The capital of France is"


def test_text_completion_continues_the_prompt_itself(rain_server, tokenizer):
    client = rain_server.client()
    full = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=6, extra_body=VANILLA)
    assert full.object == "text_completion" and full.model == MODEL
    (choice,) = full.choices
    assert choice.text and choice.finish_reason == "length" and choice.logprobs is None
    assert full.usage.prompt_tokens == len(tokenizer(PROMPT).input_ids)  # no chat template around it
    assert full.usage.completion_tokens == 6
    streamed = list(client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=6, stream=True,
                                              stream_options={"include_usage": True}, extra_body=VANILLA))
    *content, usage = streamed
    assert "".join(c.choices[0].text for c in content) == choice.text
    assert content[-1].choices[0].finish_reason == "length" and usage.usage.model_dump() == full.usage.model_dump()
    default = client.completions.create(model="smollm2", prompt=PROMPT, extra_body=VANILLA)
    assert default.usage.completion_tokens <= 16  # OpenAI's default max_tokens for this endpoint


def test_text_completion_under_rain(rain_server):
    answer = rain_server.client().completions.create(model="smollm2", prompt=PROMPT, max_tokens=5, seed=2,
                                                     extra_body=TINY_RAIN)
    rain = answer.model_extra["rain"]
    assert rain["enabled"] and rain["self_evaluations"] > 0 and rain["commit_stats"]
    assert sum(s["tokens"] for s in rain["commit_stats"]) == answer.usage.completion_tokens
    chunks = list(rain_server.client().completions.create(model="smollm2", prompt=PROMPT, max_tokens=5, seed=2,
                                                          stream=True, extra_body=TINY_RAIN))
    assert "".join(c.choices[0].text for c in chunks) == answer.choices[0].text
    assert [{k: v for k, v in c.model_extra["rain"].items() if k != "summary"} for c in chunks] == rain["commit_stats"]


def test_responses_api(rain_server, tokenizer):
    client = rain_server.client()
    response = client.responses.create(model="smollm2", input="Name a colour.", instructions="Answer in one word.",
                                       max_output_tokens=5, extra_body=VANILLA)
    assert response.object == "response" and response.model == MODEL and response.output_text
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    messages = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a colour."}]
    assert response.usage.input_tokens == prompt_tokens(tokenizer, messages)
    assert response.usage.output_tokens == 5 and response.model_extra["rain"]["enabled"] is False

    # the same conversation as a message list with content parts, streamed: the same greedy answer
    history = [{"role": "system", "content": "Answer in one word."},
               {"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]}]
    with client.responses.stream(model="smollm2", input=history, max_output_tokens=5, extra_body=VANILLA) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 5 and "".join(deltas) == response.output_text == final.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.usage.output_tokens == 5


def test_responses_under_rain_stream_each_set_with_its_search(rain_server):
    client = rain_server.client()
    body = dict(model="smollm2", input="How do I stay safe online?", max_output_tokens=6, extra_body=TINY_RAIN)
    events = list(client.responses.create(stream=True, **body))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and all(e.model_extra["rain"]["iterations"] == 2 for e in deltas)
    final = events[-1].response
    assert final.model_extra["rain"]["enabled"] and final.model_extra["rain"]["commits"] == len(deltas)


def test_responses_refuse_what_they_do_not_implement(rain_server):
    client = rain_server.client()
    cases = [({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools", "unsupported_parameter"),
             ({"previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter"),
             ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input[0]",
              "invalid_value"),
             ({"frobnicate": True}, "frobnicate", "unknown_parameter")]
    for fields, param, code in cases:
        body = {"model": "smollm2", "input": "hi", **fields}
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(**{k: body.pop(k) for k in ("model", "input")}, extra_body=body)
        assert (caught.value.param, caught.value.code) == (param, code), caught.value.message


@pytest.mark.parametrize("extra", [VANILLA, TINY_RAIN], ids=["vanilla", "rain"])
def test_chat_logprobs_are_the_models(rain_server, extra):
    client = rain_server.client()
    answer = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=6, seed=4, logprobs=True,
                                            top_logprobs=3, extra_body=extra)
    entries = answer.choices[0].logprobs.content
    assert len(entries) == answer.usage.completion_tokens
    assert b"".join(bytes(e.bytes) for e in entries).decode() == answer.choices[0].message.content
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0
        assert e.top_logprobs[0].logprob >= e.logprob - 1e-6  # the top entry is the most likely
        assert sum(math.exp(t.logprob) for t in e.top_logprobs) <= 1 + 1e-4
    if extra is VANILLA:  # greedy: every committed token is the most likely one
        assert all(e.token == e.top_logprobs[0].token for e in entries)
    streamed = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=6, seed=4, logprobs=True,
                                              top_logprobs=3, stream=True, extra_body=extra)
    chunks = [c for c in streamed if c.choices and c.choices[0].logprobs]
    assert [e.model_dump() for c in chunks for e in c.choices[0].logprobs.content] == [e.model_dump() for e in entries]


def test_completion_logprobs_have_offsets(rain_server):
    answer = rain_server.client().completions.create(model="smollm2", prompt=PROMPT, max_tokens=5, logprobs=2,
                                                     extra_body=VANILLA)
    lp = answer.choices[0].logprobs
    assert "".join(lp.tokens) == answer.choices[0].text and len(lp.token_logprobs) == 5
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    assert all(len(top) == 2 and max(top.values()) >= lp_ - 1e-6 for top, lp_ in zip(lp.top_logprobs, lp.token_logprobs))


def test_n_choices_are_independent_and_usage_sums(rain_server, tokenizer):
    client = rain_server.client()
    kwargs = dict(model="smollm2", messages=MESSAGES, max_tokens=6, temperature=1.0, seed=21, extra_body=VANILLA)
    answer = client.chat.completions.create(n=3, **kwargs)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    texts = [c.message.content for c in answer.choices]
    assert len(set(texts)) > 1  # distinct seeds sample distinct answers
    assert texts[0] == client.chat.completions.create(n=1, **kwargs).choices[0].message.content  # choice 0 keeps the seed
    assert answer.usage.prompt_tokens == prompt_tokens(tokenizer, MESSAGES)  # the prompt counts once
    assert answer.usage.completion_tokens == sum(c.model_extra["rain"]["completion_tokens"] for c in answer.choices)
    assert "rain" not in answer.model_extra  # each choice carries its own

    chunks = list(client.chat.completions.create(n=3, stream=True, stream_options={"include_usage": True}, **kwargs))
    by_choice = {i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
                 for i in range(3)}
    assert list(by_choice.values()) == texts
    finishes = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(finishes) == [0, 1, 2] and chunks[-1].usage.model_dump() == answer.usage.model_dump()


def test_n_under_rain_gives_each_choice_its_search(rain_server):
    answer = rain_server.client().chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=4, n=2,
                                                          seed=8, extra_body=TINY_RAIN)
    stats = [c.model_extra["rain"] for c in answer.choices]
    assert all(s["enabled"] and s["iterations"] > 0 and s["commit_stats"] for s in stats)


def test_raw_n_stream_opens_every_choice_and_ends_once(rain_server):
    chunks = chunks_of(stream_raw(rain_server.base_url, chat_body(max_tokens=3, n=2, **VANILLA)))
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [{"role": "assistant", "content": ""}] * 2
    assert [c["choices"][0]["index"] for c in chunks[:2]] == [0, 1]
