"""Prometheus metrics, all `rain_*`, in seconds. The names are an interface: dashboards, alerts and
the autoscaler read them. Recorded in the API process from what the workers report."""
from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from rain_core.events import GatedJudgment

from server.workers.pool import Job
from server.workers.protocol import Done

# 10 ms to 10 min, roughly x2.5 per step
SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 600)
RATIOS = (1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)
BY_MODE = ("mode", "model")


class Metrics:
    def __init__(self, model: str, running: Callable[[], int], waiting: Callable[[], int], alive: Callable[[], int]):
        self.model = model
        self.registry = r = CollectorRegistry()
        self.latency = Histogram("rain_request_latency_seconds", "Arrival to last token", BY_MODE, buckets=SECONDS, registry=r)
        self.ttft = Histogram("rain_time_to_first_token_seconds", "Arrival to first committed token", BY_MODE,
                              buckets=SECONDS, registry=r)
        self.tpot = Histogram("rain_time_per_output_token_seconds",
                              "Time per token after the first commit (a set of k tokens counts k)", BY_MODE,
                              buckets=SECONDS, registry=r)
        self.queue_time = Histogram("rain_queue_time_seconds", "Arrival to dispatch to a worker", BY_MODE,
                                    buckets=SECONDS, registry=r)
        self.overhead = Histogram("rain_overhead_ratio",
                                  "Latency overhead of a judged request: its wall time in its worker over a vanilla "
                                  "latency estimate for the same prompt and answer length, on the same engine under "
                                  "the load of the moment (the same quantity on every backend)", ["model"],
                                  buckets=RATIOS, registry=r)
        self.engine_work = Histogram("rain_engine_work_ratio",
                                     "Engine work of a judged request: tokens a model computed for it (prefix-cache hits "
                                     "excluded) over a vanilla answer's prompt plus completion tokens, by the model "
                                     "that computed them (a --judge-model has series of its own)", ["model"],
                                     buckets=RATIOS, registry=r)
        self.engine_steps = Counter("rain_engine_steps", "Engine steps (forward passes), by the model the engine runs "
                                    "(on the vllm backend a --judge-model's engine has series of its own)", ["model"], registry=r)
        self.engine_rows = Counter("rain_engine_batch_rows", "Sequences computed, summed over engine steps: "
                                   "rate(rain_engine_batch_rows_total) / rate(rain_engine_steps_total) is the batch "
                                   "occupancy", ["model"], registry=r)
        self.engine_tokens = Counter("rain_engine_batch_tokens", "Tokens computed, summed over engine steps",
                                     ["model"], registry=r)
        self.requests = Counter("rain_requests", "Requests by finish reason (also cancelled, error)",
                                [*BY_MODE, "finish_reason"], registry=r)
        self.errors = Counter("rain_errors", "Error responses by OpenAI error type", ["type"], registry=r)
        self.prompt_tokens = Counter("rain_prompt_tokens", "Prompt tokens", BY_MODE, registry=r)
        self.completion_tokens = Counter("rain_completion_tokens", "Completion tokens", BY_MODE, registry=r)
        self.iterations = Counter("rain_search_iterations", "RAIN search iterations", ["model"], registry=r)
        self.self_evaluations = Counter("rain_self_evaluations", "RAIN self-evaluations", ["model"], registry=r)
        self.commits = Counter("rain_committed_sets", "Committed token sets", BY_MODE, registry=r)
        self.gated = Counter("rain_gated_answers", "Answers of the gated strategy by outcome: passed (vanilla "
                             "throughout), rewritten (a flagged sentence searched over) or refused", ["model", "outcome"],
                             registry=r)
        for name, doc, value in (
            ("rain_requests_running", "Requests on a worker", running),
            ("rain_requests_waiting", "Requests in the queue", waiting),
            ("rain_workers_alive", "Workers ready to serve", alive),
        ):
            Gauge(name, doc, registry=r).set_function(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def error(self, error_type: str) -> None:
        self.errors.labels(error_type).inc()

    def finished(self, job: Job, done: Done, finish_reason: str) -> None:
        now, mode, totals = time.monotonic(), job.mode, done.totals
        self.ended(job, finish_reason)
        self.latency.labels(mode, self.model).observe(now - job.arrived)
        if job.first_token is not None:
            self.ttft.labels(mode, self.model).observe(job.first_token - job.arrived)
            later_tokens = totals.completion_tokens - job.first_tokens
            if later_tokens > 0:
                self.tpot.labels(mode, self.model).observe((now - job.first_token) / later_tokens)
        self.prompt_tokens.labels(mode, self.model).inc(totals.prompt_tokens)
        self.completion_tokens.labels(mode, self.model).inc(totals.completion_tokens)
        self.commits.labels(mode, self.model).inc(totals.commits)
        for engine_model, load in (done.engine_loads or {}).items():
            self.engine_steps.labels(engine_model).inc(load.steps)
            self.engine_rows.labels(engine_model).inc(load.rows)
            self.engine_tokens.labels(engine_model).inc(load.tokens)
        if mode == "rain":
            self.iterations.labels(self.model).inc(totals.iterations)
            self.self_evaluations.labels(self.model).inc(totals.self_evaluations)
            if done.overhead_ratio is not None:
                self.overhead.labels(self.model).observe(done.overhead_ratio)
            for engine_model, ratio in (done.engine_work or {}).items():
                self.engine_work.labels(engine_model).observe(ratio)
        if isinstance(done.judgment, GatedJudgment):
            self.gated.labels(self.model, done.judgment.outcome).inc()

    def ended(self, job: Job, finish_reason: str) -> None:
        """Count a request by how it ended: an OpenAI finish reason, `cancelled` or `error`."""
        self.requests.labels(job.mode, self.model, finish_reason).inc()
        if job.dispatched is not None:
            self.queue_time.labels(job.mode, self.model).observe(job.dispatched - job.arrived)
