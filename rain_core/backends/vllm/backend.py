"""The vLLM backend: the operations of rain_core/search/ops.py as requests to one `AsyncLLM`, asynchronous, so
that the operations of many requests and of a wave's K leaves are in the engine together and its
scheduler batches them (continuous batching); every operation's prompt is the request's state plus a
path, so what states share is served from the automatic prefix cache.

How each operation maps (vLLM 0.32):
- TopTokens: one request at state + path, max_tokens=1, temperature 0, logprobs=k.
- Grow: one request per row (seeded per op and row), max_tokens=spec.max_len, stop_token_ids = the end
  ids, stop = the row's stop chars; a row's `logprob` is the sum of its tokens' processed log-probs.
- Judge: one request per option order at fixed + conversation + answer + suffix, max_tokens=1,
  temperature 0, `logprob_token_ids=[good, bad]` (exact log-probs of both, never renormalised).
  A served judge (`--judge-model`) has an engine of its own, fed with its own tokenizer and template.
- Embed: the local sentence embedder, in a thread.
- Append: extends the state; with top_logprobs, one request with prompt_logprobs on state + tokens.
- Decode: consecutive Decodes are one streaming request from the state (max_tokens = what the answer may
  still take), each Decode taking its next token; an Append in between ends it (aborted). Log-probs at a
  temperature that reshapes the distribution fall back to one request per token (vLLM reports processed ones).

Log-probs: the engine runs with `logprobs_mode="processed_logprobs"` (engine-wide), so a sampled row's
log-probs are under the distribution it was drawn from (after temperature, top-k, top-p), as
Branch.logprob means. Every other number this backend reads is raw: greedy requests (temperature 0)
get top_k = vocab and temperature 1 in the sampler, so their "processed" log-probs are the raw
log-softmax (vllm/v1/sample/sampler.py `sample`, gpu_input_batch.py), and prompt log-probs skip the
sampling processors (gpu_model_runner.py). A greedy Grow row has no processed log-probs in vLLM
(greedy skips the processors), so its log-prob is computed here from the raw top-N of each step:
exact when the row has a top_k up to `max_logprobs` (N = top_k) or when temperature is 1 and top_p is 1; otherwise the
normaliser is taken over the top `max_logprobs` tokens only (a slight over-estimate).
"""
from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from rain_core.backends.base import Backend, EngineDead
from rain_core.backends.vllm.compat import engine_arguments
from rain_core.chat.answer import Vocabulary
from rain_core.chat.template import end_token_ids, text_ids
from rain_core.chat.text import ends_with_any
from rain_core.config import VLLM_GPU_MEMORY, EngineConfig, cpu_share, EvaluatorConfig, GenerationRequest, JudgeChoice
from rain_core.events import EngineLoad, TokenLogprob, TopLogprob, Totals
from rain_core.lru import LRU
from rain_core.models import ModelSource, cache_dir, load_tokenizer, resolve, tokenizer_dir, weights_dir
from rain_core.search.judge_prompt import EvalLayout, answer_ids, build_layout, combine, render_conversation, verdict_memo
from rain_core.search.ops import Append, Branch, Decode, Decoded, Embed, Grow, Judge, Op, Ranked, RowSpec, TopTokens, Verdict

# Imported eagerly: CI installs vLLM, and a missing vLLM must fail loudly, not fall back.
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError
from vllm.v1.metrics.loggers import StatLoggerBase

MAX_LOGPROBS = 64  # the most log-probs a request may ask for: TopTokens asks up to num_candidates + widen_max_children
SEED_SPACE = 2**31
CPU_KV_CACHE_GIB = 2
CPU_BLOCK_SIZE = 32  # the smallest the CPU attention kernels take (16 fails as the engine starts)
USER_CPU_BINDING = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
LAYOUTS_KEPT = 16  # judge prompt layouts per engine: a request's `principle` makes one of its own


def model_dir(source: ModelSource) -> str:
    """One directory with the weights and the tokenizer, as vLLM reads a model: for a GGUF, links to
    its de-quantised weights and its converted tokenizer (both kept in the cache by rain_core.models;
    a tokenizer directory alone makes vLLM retry to read it as a model config, seconds per process)."""
    if not source.gguf_file:
        return source.path
    weights, tokenizer = weights_dir(source), tokenizer_dir(source)
    if weights is None or tokenizer is None:
        raise RuntimeError(f"the vLLM backend needs the converted {source.gguf_file} in the cache directory")
    joined = cache_dir() / "vllm" / Path(weights).name
    joined.mkdir(parents=True, exist_ok=True)
    for folder in (Path(weights), Path(tokenizer)):
        for item in folder.iterdir():
            link = joined / item.name
            if not link.exists():
                link.symlink_to(item)
    return str(joined)


def cpu_binding(config: EngineConfig, tp: int) -> str:
    """The cores each rank's OpenMP threads are bound to, as VLLM_CPU_OMP_THREADS_BIND lists them
    ("0,1", or "0|1" for two ranks). vLLM's own choice on x86 keeps one core per rank for its scheduler
    and binds every engine on the machine to the same cores: one thread for the model on two cores, and
    two workers' engines on one core."""
    cores = list(config.cpus or cpu_share(0, config.threads))
    per_rank = max(1, len(cores) // tp)  # more ranks than cores: they share, in turn
    ranks = [cores[(r * per_rank) % len(cores):][:per_rank] for r in range(tp)]
    return "|".join(",".join(map(str, rank)) for rank in ranks)


def cpu_scheduling(model: str) -> dict:
    """No chunked prefill on CPU: vLLM 0.32's CPU runner crashes (`CPU Generator does not use offset`)
    when a seeded request's prefill is split across steps, which happens under load. A step then takes
    a whole prompt of up to the model's context.

    KV blocks of CPU_BLOCK_SIZE tokens: the prefix cache shares only whole blocks, and the CPU build's
    default of 128 tokens left a search's short states (a chat prompt is about 40 tokens) uncached, so
    every grown row recomputed its prompt."""
    from transformers import AutoConfig

    context = AutoConfig.from_pretrained(model).max_position_embeddings
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": context, "block_size": CPU_BLOCK_SIZE}


def engine_environment(config: EngineConfig) -> dict[str, str]:
    """What the engines' processes read from the environment, as this backend sets it."""
    if config.device != "cpu":
        return {}
    # vLLM's CPU build sizes its KV cache from this (GiB); SmolLM2's 8k context needs far less than its
    # default, and several servers share a CI machine
    env = {"VLLM_CPU_KVCACHE_SPACE": str(CPU_KV_CACHE_GIB)}
    if config.judge_model:
        # The judge's engine shares the served one's cores, and OpenMP threads that spin while they wait
        # take them from the other engine's working threads; asleep, they leave the cores to the engine
        # that has work (bench.throughput with --server-flags '--judge-model ...' measures it).
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


class Occupancy(StatLoggerBase):
    """Counts every engine step into `load`: the sequences it computed (the running requests) and the
    tokens (prompt tokens computed, prefix-cache hits excluded, plus generated ones)."""

    def __init__(self, load: EngineLoad):
        self.load = load

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
        if scheduler_stats is None or iteration_stats is None:
            return
        # vLLM calls these stats unstable: a renamed field must cost the metric, never the engine's
        # output handler (an exception there fails every request), and tests/server/test_backends.py notices
        prompt = getattr(iteration_stats, "prompt_token_stats", None)
        tokens = getattr(iteration_stats, "num_generation_tokens", 0) + getattr(prompt, "computed", 0)
        if tokens:
            self.load.steps += 1
            self.load.rows += getattr(scheduler_stats, "num_running_reqs", 0)
            self.load.tokens += tokens

    def log_engine_initialized(self) -> None:
        pass


@dataclass
class VllmJudge:
    """A model that judges on this backend: the served model's own engine, or the --judge-model's."""

    name: str  # what responses report: the judge's model id, or "self"
    llm: AsyncLLM
    tokenizer: Any
    load: EngineLoad  # this engine's steps, counted by its Occupancy logger
    separate: bool = False  # a --judge-model's engine, not the served model's: its work counts as the judge's
    layouts: LRU[EvaluatorConfig, EvalLayout] = field(default_factory=lambda: LRU(LAYOUTS_KEPT))

    def layout(self, cfg: EvaluatorConfig) -> EvalLayout:
        return self.layouts.get_or_make(cfg, lambda: build_layout(self.tokenizer, cfg))


def start_engine(source: ModelSource, config: EngineConfig, *, tp: int, gpu_memory: float, enforce_eager: bool,
                 max_logprobs: int, load: EngineLoad, **engine_kwargs) -> AsyncLLM:
    model = model_dir(source)
    engine_kwargs = {**engine_arguments(config.device), **engine_kwargs}  # what this vLLM install needs (0.26 bundle)
    if config.device == "cpu":
        engine_kwargs = {**cpu_scheduling(model), **engine_kwargs}
        # read by the engine's process as it starts; one set by the user wins
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = USER_CPU_BINDING or cpu_binding(config, tp)
    args = AsyncEngineArgs(
        model=model,
        served_model_name=source.name,
        dtype=config.dtype,
        tensor_parallel_size=tp,
        gpu_memory_utilization=gpu_memory,
        enable_prefix_caching=True,
        logprobs_mode="processed_logprobs",
        max_logprobs=max_logprobs,
        generation_config="vllm",  # no sampling defaults or extra stop ids from the model's generation_config.json
        enforce_eager=enforce_eager,
        disable_log_stats=True,  # vLLM's own loggers; ours (the batch occupancy) still runs
        **engine_kwargs,
    )
    return AsyncLLM.from_engine_args(args, stat_loggers=[lambda vllm_config, engine_index=0: Occupancy(load)])


class VllmBackend(Backend):
    """One vLLM engine (AsyncLLM) serving every request's operations, and a second one for the
    --judge-model when there is one."""

    def __init__(self, config: EngineConfig = EngineConfig(), *, source: Optional[ModelSource] = None,
                 tokenizer=None, enforce_eager: Optional[bool] = None, max_logprobs: int = MAX_LOGPROBS, **engine_kwargs):
        """`enforce_eager` None: eager on CPU, where compiling the model costs minutes of start-up on a
        few cores; compiled (and CUDA graphs) on GPUs."""
        self.config = config
        if enforce_eager is None:
            enforce_eager = config.device == "cpu"
        for name, value in engine_environment(config).items():  # read by the engines' processes; the user's win
            os.environ.setdefault(name, value)
        self.source = source or resolve(config.model)
        self.model_name = self.source.name
        tokenizer = tokenizer or load_tokenizer(self.source)
        self.vocab = Vocabulary(tokenizer, end_token_ids(tokenizer))
        self.max_logprobs = max_logprobs
        judge_memory = config.judge_gpu_memory if config.judge_model else 0.0
        load = EngineLoad()
        self.llm = start_engine(self.source, config, tp=config.tp, gpu_memory=VLLM_GPU_MEMORY - judge_memory,
                                enforce_eager=enforce_eager, max_logprobs=max_logprobs, load=load, **engine_kwargs)
        self.context_length = self.llm.model_config.max_model_len
        self.engines: dict[JudgeChoice, VllmJudge] = {"self": VllmJudge("self", self.llm, tokenizer, load)}
        if config.judge_model:
            # unsharded, as on the reference backend: it reads two option log-probs per evaluation
            judge, judge_load = resolve(config.judge_model), EngineLoad()
            llm = start_engine(judge, config, tp=1, gpu_memory=judge_memory, enforce_eager=enforce_eager,
                               max_logprobs=max_logprobs, load=judge_load, **engine_kwargs)
            self.engines["served"] = VllmJudge(judge.name, llm, load_tokenizer(judge), judge_load, separate=True)
        self.judges = {choice: engine.name for choice, engine in self.engines.items()}
        self._embedder = None

    def take_loads(self) -> dict[str, EngineLoad]:
        """Each engine's steps since the previous call, by the id of the model it runs."""
        return {self.model_name if choice == "self" else judge.name: judge.load.take()
                for choice, judge in self.engines.items()}

    @property
    def errored(self) -> bool:
        """Whether an engine of this backend (the served model's or the judge's) has died."""
        return any(judge.llm.errored for judge in self.engines.values())

    @property
    def embedder(self):
        if self._embedder is None:
            import torch

            from rain_core.embedder import SentenceEmbedder

            self._embedder = SentenceEmbedder(self.config.encoder, torch.device("cpu"))
        return self._embedder

    async def open_session(self, request: GenerationRequest, state: list[int], committed: list[int],
                           totals: Totals) -> "VllmSession":
        return VllmSession(self, request, state, committed, totals)

    async def shutdown(self) -> None:
        for judge in self.engines.values():
            judge.llm.shutdown()


class SessionClosed(RuntimeError):
    """An operation of a session that was closed while its requests were in the engine."""


class VllmSession:
    """One request's state on the vLLM backend. `totals.forward_calls` and `totals.tokens_fed` count the
    engine work this request caused: one forward call per engine request it issued, and the prompt tokens
    the engine computed (not served from the prefix cache) plus the tokens it generated."""

    def __init__(self, backend: VllmBackend, request: GenerationRequest, state_ids: list[int],
                 committed: list[int], totals: Totals):
        self.backend, self.llm, self.request, self.totals = backend, backend.llm, request, totals
        self.tokenizer, self.end_ids = backend.vocab.tokenizer, backend.vocab.end_ids
        self.state = list(state_ids)
        self.committed = list(committed)
        seed = request.params.seed
        self.seed = seed if seed is not None else random.getrandbits(31)
        self._ops = itertools.count()
        self._ids = itertools.count()
        self._uid = uuid.uuid4().hex[:12]
        self._live: dict[str, AsyncLLM] = {}  # the requests in an engine, and which engine
        self._verdicts = verdict_memo()
        self._conversation: Optional[list[int]] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None  # where this session's requests run
        self._stream: Optional[DecodeStream] = None  # the generation consecutive Decodes read from
        self.closed = False

    # the session -------------------------------------------------------------------------------
    async def run_all(self, ops: list[Op]) -> list[object]:
        """Several operations at once: all of them are in the engine together, and their Embeds are one
        batch of the sentence embedder (K threads of small batches would contend for the same cores)."""
        if self.closed:
            raise SessionClosed("the session is closed")
        groups = [op.texts for op in ops if isinstance(op, Embed)]
        others = [op for op in ops if not isinstance(op, Embed)]
        embedded, done = await asyncio.gather(self._embed(groups), asyncio.gather(*map(self.run, others)))
        embedded, done = iter(embedded), iter(done)
        return [next(embedded) if isinstance(op, Embed) else next(done) for op in ops]

    async def run(self, op: Op) -> object:
        if self.closed:
            raise SessionClosed("the session is closed")
        execute = self.EXECUTORS.get(type(op))
        if execute is None:
            raise TypeError(f"not a model operation: {op!r}")
        return await execute(self, op)

    def close(self) -> Optional[asyncio.Task]:
        """Abort every request of this session still in the engine. Inside the event loop the abort is
        scheduled (the returned task may be awaited); use `aclose` to wait for it."""
        self.closed = True
        live, self._live = self._live, {}
        if not live:
            return None
        abort = _abort_all(live)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return running.create_task(abort)
        # from another thread: the engine's client lives on the loop that issued the requests
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(abort, self._loop)
        elif not self._loop.is_closed():
            self._loop.run_until_complete(abort)
        else:
            abort.close()
        return None

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        task = self.close()
        if stream is not None:
            await stream.close()
        if task is not None:
            await task

    async def _embed(self, groups: list[tuple[str, ...]]) -> list[object]:
        """The local sentence embedder, in a thread: one batch for every group."""
        return await asyncio.to_thread(self.backend.embedder.embed_groups, groups) if groups else []

    # engine requests ---------------------------------------------------------------------------
    def _op_seed(self, row: int = 0) -> int:
        """A seed per operation and row: a seeded request repeats its samples on this backend."""
        return (self.seed * 1_000_003 + next(self._ops) * 1009 + row) % SEED_SPACE

    def _prompt(self, ids: list[int]) -> TokensPrompt:
        """An engine prompt under the request's cache salt: its prefix-cache blocks are shared only with
        requests of the same salt (vLLM mixes the salt into the first block's hash, so every block after differs)."""
        salt = self.request.cache_salt
        return TokensPrompt(prompt_token_ids=ids, cache_salt=salt) if salt else TokensPrompt(prompt_token_ids=ids)

    async def _generate(self, prompt: list[int], params: SamplingParams, judge: Optional[VllmJudge] = None):
        """One engine request to its end (on the served model's engine unless `judge` names another);
        its final RequestOutput."""
        params.output_kind = RequestOutputKind.FINAL_ONLY
        final = None
        async for out in self._request(prompt, params, judge):
            final = out
        if self.closed:  # aborted by close(): what came back is cut short
            raise SessionClosed("the session is closed")
        cached = final.num_cached_tokens or 0
        self._count(len(prompt) - cached + sum(len(c.token_ids) for c in final.outputs), judge)
        return final

    async def _request(self, prompt: list[int], params: SamplingParams, judge: Optional[VllmJudge] = None):
        """The outputs of one engine request, as the engine yields them; an engine that died is EngineDead."""
        llm = judge.llm if judge is not None else self.llm
        rid = f"rain-{self._uid}-{next(self._ids)}"
        self._loop = asyncio.get_running_loop()
        self._live[rid] = llm
        self.totals.forward_calls += 1
        try:
            async for out in llm.generate(self._prompt(prompt), params, rid):
                yield out
        except EngineDeadError as exc:
            raise EngineDead(str(exc)) from exc
        finally:
            self._live.pop(rid, None)

    def _count(self, tokens: int, judge: Optional[VllmJudge] = None) -> None:
        """Engine work this request caused: tokens computed on the served model's engine or a judge's."""
        self.totals.add_tokens(tokens, judge=judge is not None and judge.separate)

    # operations --------------------------------------------------------------------------------
    async def _top_tokens(self, op: TopTokens) -> Ranked:
        out = await self._generate(self.state + list(op.path),
                                   SamplingParams(max_tokens=1, temperature=0.0, logprobs=op.k, detokenize=False))
        ranked = sorted(out.outputs[0].logprobs[0].items(), key=lambda kv: kv[1].rank)[: op.k]
        return Ranked([t for t, _ in ranked], [math.exp(lp.logprob) for _, lp in ranked])

    async def _grow(self, op: Grow) -> list[Branch]:
        before = self.committed + list(op.path)
        prompt = self.state + list(op.path)
        seeds = [self._op_seed(i) for i in range(len(op.rows))]
        return list(await asyncio.gather(*(self._row(prompt, before, spec, seed) for spec, seed in zip(op.rows, seeds))))

    async def _row(self, prompt: list[int], before: list[int], spec: RowSpec, seed: int) -> Branch:
        branch = Branch()
        while len(branch.tokens) < spec.max_len:
            params = SamplingParams(
                max_tokens=spec.max_len - len(branch.tokens),
                stop_token_ids=sorted(self.end_ids),
                stop=list(spec.stop_chars) or None,
                include_stop_str_in_output=True,
                detokenize=bool(spec.stop_chars),
                skip_special_tokens=True,
                seed=seed,
            )
            if spec.greedy:
                params.temperature = 0.0
                params.logprobs = min(spec.top_k or self.backend.max_logprobs, self.backend.max_logprobs)
            else:
                params.temperature, params.top_k, params.top_p, params.logprobs = spec.temperature, spec.top_k, spec.top_p, 0
            out = (await self._generate(prompt + branch.tokens, params)).outputs[0]
            tokens = list(out.token_ids)
            branch.tokens.extend(tokens)
            if spec.greedy:
                branch.logprob += sum(_filtered_logprob(step, t, spec) for step, t in zip(out.logprobs, tokens))
            else:
                branch.logprob += out.cumulative_logprob or 0.0
            branch.ended = bool(branch.tokens) and branch.tokens[-1] in self.end_ids
            # vLLM stops where a stop char appears anywhere in a token's text; the reference stops only
            # where the text ends with one: a row stopped inside a token goes on from there
            stopped_inside = (isinstance(out.stop_reason, str) and not branch.ended
                              and not ends_with_any(self.tokenizer, before + branch.tokens, spec.stop_chars))
            if not stopped_inside or not tokens:
                break
            seed = (seed * 31 + 7) % SEED_SPACE
        return branch

    async def _judge(self, op: Judge) -> Verdict:
        known = self._verdicts.get(op.answer)
        if known is not None:
            return known
        rain = self.request.rain
        judge = self.backend.engines[rain.judge]  # the engine checked that the request's judge is loaded
        layout = judge.layout(rain.evaluator)
        if self._conversation is None:
            self._conversation = text_ids(judge.tokenizer, render_conversation(self.request.messages, layout.truthful))
        head = layout.fixed + self._conversation + answer_ids(judge.tokenizer, op.answer)
        log_odds = list(await asyncio.gather(*(self._log_odds(judge, head + suffix, good, bad)
                                               for suffix, (good, bad) in zip(layout.suffixes, layout.options))))
        result = Verdict(combine(log_odds, rain.evaluator.score), log_odds)
        self._verdicts.put(op.answer, result)
        self.totals.self_evaluations += 1
        return result

    async def _log_odds(self, judge: VllmJudge, prompt: list[int], good: int, bad: int) -> float:
        out = await self._generate(prompt, SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=[good, bad],
                                                          detokenize=False), judge)
        step = out.outputs[0].logprobs[0]
        return step[good].logprob - step[bad].logprob

    async def _append(self, op: Append) -> Optional[list[TokenLogprob]]:
        await self._end_stream()  # the state changes under it
        tokens = list(op.tokens)
        start = len(self.state)
        self.state.extend(tokens)
        self.committed.extend(tokens)
        if op.top_logprobs is None or not tokens:
            return None if op.top_logprobs is None else []
        # prompt log-probs are raw; vLLM computes the whole prompt for them (no prefix cache read)
        out = await self._generate(list(self.state), SamplingParams(max_tokens=1, temperature=0.0,
                                                                    prompt_logprobs=op.top_logprobs, detokenize=False))
        return [_token_logprob(out.prompt_logprobs[start + i], t, op.top_logprobs) for i, t in enumerate(tokens)]

    async def _decode(self, op: Decode) -> Decoded:
        greedy = not op.temperature
        raw = greedy or (op.temperature == 1.0 and op.top_p >= 1.0)  # processed log-probs == raw ones
        if op.top_logprobs is not None and not raw:
            return await self._decode_one(op)
        taken = None
        while taken is None:
            if self._stream is None or self._stream.op != op:
                await self._end_stream()
                self._stream = self._start_stream(op)
            fresh = self._stream.taken == 0
            taken = await self._stream.next()
            if taken is None:  # it reached its max_tokens, yet the answer asks for more: a fresh one from here
                self._stream = None
                if fresh:
                    raise RuntimeError("the engine ended a decode stream without a token")
        token, logprobs = taken
        self.state.append(token)
        self.committed.append(token)
        return Decoded(token, logprobs)

    def _start_stream(self, op: Decode) -> "DecodeStream":
        """One generation from the state for the Decodes to come, as long as the answer may still grow."""
        greedy = not op.temperature
        left = max(self.request.params.max_new_tokens - len(self.committed), 1)
        params = SamplingParams(max_tokens=left, stop_token_ids=sorted(self.end_ids), detokenize=False,
                                seed=self._op_seed(), temperature=0.0 if greedy else op.temperature,
                                top_p=1.0 if greedy else op.top_p, logprobs=op.top_logprobs,
                                output_kind=RequestOutputKind.DELTA)
        return DecodeStream(self, op, list(self.state), params)

    async def _end_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()

    async def _decode_one(self, op: Decode) -> Decoded:
        """One engine request for one token, whose raw log-probs are read apart from the sampled token."""
        await self._end_stream()
        params = SamplingParams(max_tokens=1, detokenize=False, seed=self._op_seed(), temperature=op.temperature,
                                top_p=op.top_p)
        token = (await self._generate(list(self.state), params)).outputs[0].token_ids[0]
        step = await self._raw_step(list(self.state), token, op.top_logprobs)
        self.state.append(token)
        self.committed.append(token)
        return Decoded(token, [_token_logprob(step, token, op.top_logprobs)])

    async def _raw_step(self, prompt: list[int], token: int, k: int) -> dict:
        """The raw log-probs at `prompt`: its top k and `token`'s (greedy requests read raw log-probs)."""
        top, own = await asyncio.gather(
            self._generate(prompt, SamplingParams(max_tokens=1, temperature=0.0, logprobs=k, detokenize=False)),
            self._generate(prompt, SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=[token], detokenize=False)),
        )
        step = dict(top.outputs[0].logprobs[0])
        if token not in step:
            mine = own.outputs[0].logprobs[0][token]
            rank = sum(1 for lp in top.outputs[0].logprobs[0].values() if lp.logprob > mine.logprob) + 1
            step[token] = type(mine)(logprob=mine.logprob, rank=max(rank, k + 1), decoded_token=mine.decoded_token)
        return step

    # one executor per operation type (Embed runs through run_all's batch of the embedder)
    EXECUTORS = {TopTokens: _top_tokens, Grow: _grow, Judge: _judge, Append: _append, Decode: _decode,
                 Embed: lambda self, op: self._embed_one(op)}

    async def _embed_one(self, op: Embed) -> object:
        return (await self._embed([op.texts]))[0]


class DecodeStream:
    """A streaming generation that consecutive Decode operations read token by token: one engine request
    for a vanilla answer instead of one per token. The engine may run ahead of the reader."""

    def __init__(self, session: VllmSession, op: Decode, prompt: list[int], params: SamplingParams):
        self.session, self.op, self.prompt = session, op, prompt
        self._outputs = session._request(prompt, params)
        self._ready: list[tuple[int, Optional[list[TokenLogprob]]]] = []
        self._counted_prompt = False
        self.taken = 0

    async def next(self) -> Optional[tuple[int, Optional[list[TokenLogprob]]]]:
        """The next token and its log-probs; None once the generation has ended."""
        while not self._ready:
            out = await anext(self._outputs, None)
            if out is None:
                return None
            self._take(out)
        self.taken += 1
        return self._ready.pop(0)

    def _take(self, out) -> None:
        k = self.op.top_logprobs
        if not self._counted_prompt:
            self._counted_prompt = True
            self.session._count(len(self.prompt) - (out.num_cached_tokens or 0))
        c = out.outputs[0]
        self.session._count(len(c.token_ids))
        for i, token in enumerate(c.token_ids):
            self._ready.append((token, None if k is None else [_token_logprob(c.logprobs[i], token, k)]))

    async def close(self) -> None:
        await self._outputs.aclose()  # aborts the request in the engine if it still runs


async def _abort_all(live: dict[str, AsyncLLM]) -> None:
    """Abort every request in `live`, each on its own engine."""
    by_engine: dict[AsyncLLM, list[str]] = {}
    for rid, llm in live.items():
        by_engine.setdefault(llm, []).append(rid)
    for llm, rids in by_engine.items():
        await llm.abort(rids)


def _token_logprob(step: dict, token: int, k: int) -> TokenLogprob:
    ranked = sorted(((t, lp) for t, lp in step.items() if lp.rank is not None and lp.rank <= k), key=lambda kv: kv[1].rank)
    return TokenLogprob(token, step[token].logprob, tuple(TopLogprob(t, lp.logprob) for t, lp in ranked[:k]))


def _filtered_logprob(step: dict, token: int, spec: RowSpec) -> float:
    """A greedy row's token log-prob under the row's filtered distribution (temperature, top-k, top-p),
    from the raw log-probs of the step's top tokens (the chosen token is the most likely of them)."""
    if spec.temperature == 1.0 and not spec.top_k and spec.top_p >= 1.0:
        return step[token].logprob
    scaled = sorted((lp.logprob / max(spec.temperature, 1e-5) for lp in step.values()), reverse=True)
    if spec.top_k:
        scaled = scaled[: spec.top_k]
    top = scaled[0]
    norm = top + math.log(sum(math.exp(s - top) for s in scaled))
    if spec.top_p < 1.0:
        kept, mass = [], 0.0
        for s in scaled:
            if mass >= spec.top_p:
                break
            kept.append(s)
            mass += math.exp(s - norm)
        norm = top + math.log(sum(math.exp(s - top) for s in kept))
    return step[token].logprob / max(spec.temperature, 1e-5) - norm
