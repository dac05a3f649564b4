"""OpenAI response bodies (chat.completion and chat.completion.chunk) plus our `rain` object."""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Optional

from .pool import Job
from .protocol import Delta, Done

# rain_core's finish reasons as OpenAI names them: a search that ran out of time stopped short
FINISH_REASONS = {"stop": "stop", "length": "length", "time_budget": "length"}


def finish_reason(done: Done) -> str:
    return FINISH_REASONS[done.finish_reason]


def usage(done: Done) -> dict:
    t = done.totals
    return {"prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
            "total_tokens": t.prompt_tokens + t.completion_tokens}


def commit_stats(delta: Delta) -> dict:
    """The search behind one committed set (RAIN only)."""
    return {"tokens": delta.tokens, **(asdict(delta.stats) if delta.stats else {})}


def rain_summary(job: Job, done: Done, commits: Optional[list[dict]] = None) -> dict:
    """Search statistics and this request's measured cost against vanilla decoding."""
    summary = {
        "enabled": job.mode == "rain",
        "finish_reason": done.finish_reason,
        **done.totals.as_dict(),
        "compute_s": done.compute_s,
        "queue_s": job.dispatched - job.arrived,
        "resubmissions": job.resubmissions,  # workers that died under it; the totals are the last one's
        "vanilla_estimate_s": done.vanilla_estimate_s,
        "overhead_ratio": done.overhead_ratio,
    }
    if commits is not None:
        summary["commit_stats"] = commits
    return summary


def completion(job: Job, model: str, text: str, done: Done, commits: Optional[list[dict]]) -> dict:
    return {
        "id": job.id,
        "object": "chat.completion",
        "created": job.created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": finish_reason(done),
        }],
        "usage": usage(done),
        "rain": rain_summary(job, done, commits),
    }


class Chunks:
    """The `data:` payloads of one streamed completion, as JSON strings."""

    def __init__(self, job: Job, model: str, include_usage: bool):
        self.job, self.model, self.include_usage = job, model, include_usage

    def _chunk(self, choices: list[dict], **extra) -> str:
        body = {"id": self.job.id, "object": "chat.completion.chunk", "created": self.job.created,
                "model": self.model, "choices": choices}
        if self.include_usage:
            body["usage"] = None  # as OpenAI does: only the last chunk carries usage
        return json.dumps({**body, **extra})

    def _choice(self, delta: dict, finish: Optional[str] = None) -> list[dict]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    def role(self) -> str:
        return self._chunk(self._choice({"role": "assistant", "content": ""}))

    def content(self, delta: Delta, done: Optional[Done] = None) -> str:
        """One committed set; the last one also carries the finish reason and the request's summary."""
        extra = {"rain": commit_stats(delta)} if self.job.mode == "rain" else {}
        if done is not None:
            extra["rain"] = {**extra.get("rain", {}), "summary": rain_summary(self.job, done)}
        return self._chunk(self._choice({"content": delta.text}, done and finish_reason(done)), **extra)

    def finish(self, done: Done) -> str:
        return self._chunk(self._choice({}, finish_reason(done)), rain=rain_summary(self.job, done))

    def usage(self, done: Done) -> str:
        return self._chunk([], usage=usage(done))
