"""What every endpoint's response shares: finish reasons, usage, and our `rain` object."""
from __future__ import annotations

from dataclasses import asdict
from typing import Optional, Sequence, Union

from rain_core.events import OPENAI_FINISH_REASON, GatedJudgment, Judgment

from server.api.bodies import CommitStats, RainSummary, StreamedRain, Usage
from server.workers.pool import Job
from server.workers.protocol import Delta, Done


def finish_reason(done: Done) -> str:
    return OPENAI_FINISH_REASON[done.finish_reason]


def token_counts(dones: Sequence[Done]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of one request's choices: the prompt counts once."""
    return dones[0].totals.prompt_tokens, sum(d.totals.completion_tokens for d in dones)


def usage(dones: Sequence[Done]) -> Usage:
    prompt, completion = token_counts(dones)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _set_search(delta: Delta) -> dict:
    return {"tokens": delta.tokens, **(asdict(delta.stats) if delta.stats else {})}


def commit_stats(delta: Delta) -> CommitStats:
    """The search behind one committed set (RAIN only)."""
    return CommitStats(**_set_search(delta))


def rain_summary(job: Job, done: Done, commits: Optional[list[CommitStats]] = None) -> RainSummary:
    """Search statistics and this generation's measured cost against vanilla decoding."""
    return RainSummary(
        enabled=job.mode == "rain",
        finish_reason=done.finish_reason,
        **done.totals.as_dict(),
        worker_s=done.worker_s,
        queue_s=job.dispatched - job.arrived,
        resubmissions=job.resubmissions,  # workers that died under it; the totals are the last one's
        vanilla_estimate_s=done.vanilla_estimate_s,
        overhead_ratio=done.overhead_ratio,
        engine_work_ratio=done.engine_work,
        **({"commit_stats": commits} if commits is not None else {}),
        **(judgment_fields(done.judgment) if done.judgment is not None else {}),
    )


def judgment_fields(judgment: Judgment) -> dict:
    """How the answer was made and judged; a field that does not apply to the strategy is left out."""
    fields = {"strategy": judgment.strategy, "judge": judgment.judge, "judge_threshold": judgment.threshold,
              "judge_values": judgment.values or None, "chosen": judgment.chosen, "replaced": judgment.replaced}
    if isinstance(judgment, GatedJudgment):
        fields.update(outcome=judgment.outcome, sentences=judgment.sentences)
    return {k: v for k, v in fields.items() if v is not None}


def streamed_rain(job: Job, delta: Optional[Delta], done: Optional[Done]) -> Optional[Union[StreamedRain, RainSummary]]:
    """A stream chunk's `rain`: its set's search (RAIN only), and on a generation's last chunk its summary
    (under `summary`; alone when the generation ended without a last set); None when there is neither."""
    searched = delta is not None and job.mode == "rain"
    if done is None:
        return StreamedRain(**_set_search(delta)) if searched else None
    summary = rain_summary(job, done)
    if delta is None:
        return summary
    return StreamedRain(**(_set_search(delta) if searched else {}), summary=summary)


def full_summary(job: Job, deltas: Sequence[Delta], done: Done) -> RainSummary:
    """A non-streamed choice's `rain` object: the summary plus every commit's search (RAIN only)."""
    return rain_summary(job, done, [commit_stats(d) for d in deltas] if job.mode == "rain" else None)
