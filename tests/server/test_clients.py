"""The clients people point at us, unmodified: the OpenAI SDK, langchain-openai and litellm, each for chat,
a stream with usage, the `rain` object through extra_body, the Responses API, and a 400 raised as the
client's own bad-request error."""
from __future__ import annotations

import os

import openai
import pytest

from serve_helpers import TINY_RAIN

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm fetches a price list from the web otherwise
BAD_RAIN = {"rain": {"max_iters": 0}}
QUESTION = "How do I stay safe online?"


@pytest.fixture(scope="module")
def base(rain_server) -> str:
    return rain_server.base_url + "/v1"


def test_openai_sdk(rain_server):
    client = rain_server.client()
    answer = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=4, extra_body=TINY_RAIN)
    assert answer.model_extra["rain"]["enabled"] and answer.usage.completion_tokens >= 1
    stream = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=4, stream=True, stream_options={"include_usage": True},
                                            extra_body=TINY_RAIN)
    *_, last = stream
    assert last.usage.completion_tokens >= 1
    assert client.responses.create(model="smollm2", input=QUESTION, max_output_tokens=4, extra_body=TINY_RAIN).output_text
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "x"}], extra_body=BAD_RAIN)
    assert caught.value.param == "rain.max_iters"


def test_langchain_openai(base):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=base, api_key="unused", model="smollm2", max_tokens=4, max_retries=0,
                     extra_body=TINY_RAIN)
    message = llm.invoke(QUESTION)
    assert message.content and message.usage_metadata["output_tokens"] >= 1
    chunks = list(llm.stream(QUESTION, stream_usage=True))
    assert "".join(c.content for c in chunks) and sum(c.usage_metadata["output_tokens"] for c in chunks
                                                      if c.usage_metadata) >= 1
    responses = ChatOpenAI(base_url=base, api_key="unused", model="smollm2", max_tokens=4, max_retries=0,
                           extra_body=TINY_RAIN, use_responses_api=True).invoke(QUESTION)
    assert responses.text and responses.usage_metadata["output_tokens"] >= 1
    with pytest.raises(openai.BadRequestError):
        ChatOpenAI(base_url=base, api_key="unused", model="smollm2", max_retries=0, extra_body=BAD_RAIN).invoke("x")


def test_litellm(base):
    import litellm

    # every request carries the rain object (a short search): the server's default mode is RAIN's full search
    common = dict(model="openai/smollm2", api_base=base, api_key="unused", num_retries=0, extra_body=TINY_RAIN)
    answer = litellm.completion(messages=[{"role": "user", "content": QUESTION}], max_tokens=4, **common)
    assert answer.choices[0].message.content and answer.usage.completion_tokens >= 1
    chunks = list(litellm.completion(messages=[{"role": "user", "content": QUESTION}], max_tokens=4, stream=True,
                                     stream_options={"include_usage": True}, **common))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert any(getattr(c, "usage", None) and c.usage.completion_tokens >= 1 for c in chunks)
    response = litellm.responses(input=QUESTION, max_output_tokens=4, **common)
    assert response.output_text
    with pytest.raises(litellm.BadRequestError):
        litellm.completion(messages=[{"role": "user", "content": "x"}], **{**common, "extra_body": BAD_RAIN})
