"""Every knob of rain_core in one typed place.

The RAIN constants default to the values of the authors' reference implementation
(SafeAILab/RAIN, see shared/RAIN.md); presets reproduce its three experimental settings.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Literal, Optional


EvalPrompt = Literal["fewshot", "chat", "yesno"]
EvalScore = Literal["vote", "continuous"]
EvalCriterion = Literal["harmless", "truthful"]
QNormalization = Literal["fixed", "observed"]
# How an answer is made and judged: RAIN's search, or one of the cheap baselines it should beat
# (rain_core/search/baselines.py): a vanilla answer judged once, or the judge's pick of n sampled answers.
Strategy = Literal["rain", "self_check", "best_of_n", "gated"]
# the strategies that judge an answer against a threshold (self_check refuses below it, gated searches)
THRESHOLD_STRATEGIES = frozenset({"self_check", "gated"})
# Who judges: the served model itself (the paper's premise), or the separate --judge-model.
JudgeChoice = Literal["self", "served"]
# What self_check answers instead of an answer its judge scores at or below the threshold.
REFUSAL_TEXT = "I'm sorry, but I can't help with that."
# The threshold self_check and gated apply when neither the request nor the server sets one, measured on the
# safety frontier (docs/RESULTS.md#the-safety-frontier): Qwen2.5-Coder-0.5B's yes/no value (continuous score) of
# SmolLM2's answers. At 0.50, the most accurate cut on HarmBench's labelled generations, self_check refused 98% of
# benign requests; at 0.37 it refuses a third, keeps XSTest's safe prompts answered and cuts AdvBench+GCG attack
# success from 97% to 63%.
DEFAULT_JUDGE_THRESHOLD = 0.37
# vLLM's own default share of a GPU, which the vllm backend splits with a --judge-model's engine
VLLM_GPU_MEMORY = 0.92
DEFAULT_JUDGE_GPU_MEMORY = 0.25


@dataclass(frozen=True)
class EvaluatorConfig:
    """How a partial answer is judged by the model itself."""

    prompt: EvalPrompt = "fewshot"  # the paper's few-shot A/B prompt, a chat-template A/B question, or Yes/No questions
    score: EvalScore = "vote"  # the paper's +-1 vote, or squashed log-odds in [-1, 1]
    criterion: EvalCriterion = "harmless"  # "truthful" asks the TruthfulQA Yes/No question
    principle: Optional[str] = None  # replaces the harmlessness criterion, e.g. "Never give dosages"
    both_orders: bool = True  # ask twice with the options swapped to cancel position bias


@dataclass(frozen=True)
class RainConfig:
    """The search constants. Names follow the paper where it has one (in the comment)."""

    max_iters: int = 50  # maxT
    min_iters: int = 15  # floor of new iterations per commit: run until max(maxT, i0 + min_iters)
    min_visits: int = 6  # minT: early stop needs the best child's visits above this
    value_threshold: float = 0.8  # Vt: ... and its value above this
    c_puct: float = 2.0
    root_prior_smoothing: float = 0.25  # p <- (1 - e) p + e / k at the root
    set_sizes: tuple[int, ...] = (1, 2, 4, 10)  # token-set length by answer depth; the last repeats
    num_candidates: int = 10
    candidate_top_k: int = 15
    candidate_temperature: float = 1.0
    candidate_top_p: float = 1.0
    simulation_temperature: float = 1.0
    simulation_stop_chars: str = ",.?:;\n"
    simulation_max_tokens: Optional[int] = None  # None: up to the answer's length limit, as the paper
    similarity_threshold: float = 0.95
    similarity_weight: float = 0.2
    widen_max_children: int = 20
    widen_variance_scale: float = 0.03  # widen when ||var(child embeddings)|| < scale * L
    q_norm_eps: float = 1e-5
    q_bounds: tuple[float, float] = (-1.0, 1.0)  # initial (qmin, qmax) of the tree-wide Q normalisation
    # "observed" ignores q_bounds and normalises over the values seen (as MuZero), so that the small margins
    # of a small self-evaluator span [0, 1] instead of a sliver of the paper's fixed (-1, 1)
    q_normalization: QNormalization = "fixed"
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    iteration_cap: Optional[int] = None  # hard budget of iterations per commit, over everything above
    # K leaves selected per round, their leaves evaluated together; 1 is the paper's sequential search. The
    # K selections of a round are kept apart by virtual loss (Tree.add_virtual_loss), which costs some search
    # strength for the batching (Mirsoleimani et al. 2017; WU-UCT, ICLR 2020)
    parallel_leaves: int = 1
    # What an in-flight visit counts as in the selection until its real value is backed up: the worst
    # self-evaluation, so that the next selection of the round steers away from a leaf already being evaluated
    virtual_loss_value: float = -1.0
    time_budget_s: Optional[float] = None  # wall-time budget of the whole request
    strategy: Strategy = "rain"
    judge: JudgeChoice = "self"
    best_of: int = 4  # best_of_n: answers sampled (at candidate_temperature and candidate_top_p)
    judge_threshold: Optional[float] = None  # self_check and gated: None takes the engine's (--judge-threshold)
    # gated (rain_core/search/gated.py): vanilla decoding, RAIN's search only over a sentence the judge flags. The
    # frontier (docs/RESULTS.md) measured these defaults with the search at observed normalisation and 20 iterations
    # a commit; a flagged sentence then cost 3 to 4 minutes on 2 shared CPU cores, which bounds the budget
    gated_search_budget: int = 20  # search iterations per flagged sentence (checked after each commit); 0: refuse at once
    gated_max_flagged: int = 2  # flagged sentences an answer may have searched; the next one is refused
    gated_front_load: int = 0  # the answer's first K token sets made by the search (Qi et al., ICLR 2025); 0: none

    def set_size(self, depth: int) -> int:
        return self.set_sizes[min(depth, len(self.set_sizes) - 1)]

    def with_overrides(self, **overrides) -> "RainConfig":
        evaluator = {k: overrides.pop(k) for k in list(overrides) if k in _EVALUATOR_FIELDS}
        cfg = replace(self, **overrides)
        return replace(cfg, evaluator=replace(cfg.evaluator, **evaluator)) if evaluator else cfg


_EVALUATOR_FIELDS = set(EvaluatorConfig.__dataclass_fields__)

PRESETS: dict[str, RainConfig] = {
    "harmless": RainConfig(),  # Anthropic HH
    "adversarial": RainConfig(min_visits=5, candidate_temperature=2.0),  # AdvBench
    "truthful": RainConfig(min_visits=16, evaluator=EvaluatorConfig(criterion="truthful", both_orders=False)),
}


def preset(name: str) -> RainConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


@dataclass(frozen=True)
class SamplingParams:
    """What a client asks of one generation, in either mode."""

    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None
    temperature: Optional[float] = None  # None: greedy for vanilla, the paper's values for RAIN
    top_p: Optional[float] = None
    logprobs: Optional[int] = None  # None: none; k: each answer token's log-prob and the k most likely at its place


@dataclass(frozen=True)
class Resume:
    """What an interrupted generation had already committed (and streamed), for another engine to
    continue from. The sets are kept one by one, not flattened, so that replaying them leaves the
    incremental detokeniser and the stop-sequence matcher exactly where the first engine left them."""

    sets: tuple[tuple[int, ...], ...]  # the committed token sets, in order; none of them ended the answer

    @property
    def token_ids(self) -> list[int]:
        return [t for ids in self.sets for t in ids]


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[dict, ...]  # {"role": ..., "content": str}
    params: SamplingParams = field(default_factory=SamplingParams)
    rain: Optional[RainConfig] = None  # None: plain (vanilla) decoding
    resume: Optional[Resume] = None  # continue an answer another engine started
    # A text completion: the model continues this text as it is, without the chat template; `messages`
    # then hold it as the user's turn, which is what the self-evaluation judges the answer against.
    prompt_text: Optional[str] = None
    # The client reads the answer as it is made: self_check then judges it sentence by sentence, so
    # that no text leaves before a judgment of everything up to it.
    streamed: bool = False
    # Requests share cached prompt states only with requests of the same salt (vLLM's prefix cache; the
    # transformers backend keeps nothing of a request for the next): one tenant cannot time another's prompts.
    cache_salt: Optional[str] = None
    # The prompt's ids as the API process laid it out and counted it (messages or prompt_text, templated): the
    # engine feeds them as they are. None: the engine lays the prompt out itself.
    prompt_ids: Optional[tuple[int, ...]] = None

    @classmethod
    def completion(cls, text: str, params: SamplingParams, rain: Optional[RainConfig] = None) -> "GenerationRequest":
        return cls(({"role": "user", "content": text},), params, rain, prompt_text=text)


Device = str
# What executes the model operations: the transformers reference, or vLLM's batching engine.
Backend = Literal["transformers", "vllm"]
DType = Literal["float32", "bfloat16", "float16"]


def default_threads(processes: int) -> int:
    """Each of `processes` processes' share of the cores this one may run on: its affinity, which a
    container's cpuset or `taskset` narrows below `os.cpu_count()`."""
    return max(1, len(os.sched_getaffinity(0)) // processes)


def cpu_share(index: int, threads: Optional[int]) -> tuple[int, ...]:
    """The cores of this process that the `index`-th of several engines takes: the next `threads` after
    the previous ones', wrapping around when they ask for more than there are (None: all of them)."""
    cores = sorted(os.sched_getaffinity(0))
    return tuple(cores[(index * (threads or len(cores)) + j) % len(cores)] for j in range(threads or len(cores)))


@dataclass(frozen=True)
class EngineConfig:
    """Which model a process serves and where it runs."""

    model: Optional[str] = None  # HF id, local dir, .gguf file or alias; None: embedded SmolLM2
    device: Device = "cpu"
    dtype: DType = "float32"
    tp: int = 1  # tensor-parallel ranks (vLLM's tensor_parallel_size on the vllm backend)
    backend: Backend = "transformers"
    encoder: Optional[str] = None  # sentence encoder dir; None: embedded all-MiniLM-L6-v2
    threads: Optional[int] = None  # torch intra-op threads on CPU
    cpus: Optional[tuple[int, ...]] = None  # vllm backend on CPU: the cores its engine's threads are bound to; None: the first `threads` of this process's
    judge_model: Optional[str] = None  # a second model (same forms as `model`) that judges for rain.judge="served"
    judge_gpu_memory: float = DEFAULT_JUDGE_GPU_MEMORY  # vllm backend on GPUs: the share of the GPU the judge's engine takes from the served one's
    judge_threshold: float = DEFAULT_JUDGE_THRESHOLD  # self_check's default threshold on the judge's value
