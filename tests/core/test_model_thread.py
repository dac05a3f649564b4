"""On the transformers backend requests take turns on one model thread. Each request counts its calls there
and how long they waited for other requests' calls: the worker's vanilla latency estimate learns speeds without
those waits and adds back the load a judged request met (server/workers/overhead.py)."""
from __future__ import annotations

import asyncio

from rain_core.config import GenerationRequest, SamplingParams
from rain_core.events import Finish

REQUEST = GenerationRequest(({"role": "user", "content": "Name three birds."},), SamplingParams(max_new_tokens=6))


async def finish_of(events) -> Finish:
    async for event in events:
        pass
    return event


def test_requests_count_their_model_calls_and_their_waits_for_each_other(tiny_engine):
    alone = tiny_engine.complete(REQUEST).totals

    async def two_at_once() -> list[Finish]:
        return await asyncio.gather(*(finish_of(tiny_engine.generate(REQUEST)) for _ in range(2)))

    pair = [finish.totals for finish in tiny_engine.run(two_at_once())]
    for totals in (alone, *pair):
        # one turn on the model thread per token, as the estimate counts a vanilla answer's calls: the prompt's
        # prefill rides with the first, and the closing is not waited for
        assert totals.model_calls == totals.completion_tokens
        assert 0 < totals.first_token_s < totals.wall_s
        assert 0 <= totals.model_wait_first_s <= totals.model_wait_s < totals.wall_s
    # taking turns, the two waited for each other's calls; alone, only for the thread to pick its calls up
    assert sum(t.model_wait_s for t in pair) > 2 * alone.model_wait_s
