"""The vLLM backend's compatibility point (rain_core/backends/vllm/compat.py), and the vLLM API surface the
backend calls, checked against the installed release: 0.32 in CI, 0.26 in scripts/gpu_bundle.sh --check."""
import dataclasses
import inspect

import pytest

from rain_core.backends.vllm.compat import FA2_KERNELS, FA3_KERNELS, attention_backend, engine_arguments


def _package(tmp_path, *kernels):
    """A vllm package directory holding only the named kernel files."""
    for kernel in kernels:
        (tmp_path / kernel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / kernel).write_bytes(b"")
    return tmp_path


def test_cpu_keeps_vllms_choice():
    assert engine_arguments("cpu") == {}
    assert attention_backend("cpu", None) is None


@pytest.mark.parametrize("kernels, backend", [
    ((FA2_KERNELS, FA3_KERNELS), None),  # the complete CUDA wheel: vLLM chooses
    ((FA3_KERNELS,), "FLASH_ATTN"),  # the bundle without FA2: FA3 on Hopper
    ((), "TRITON_ATTN"),  # the bundle without any FlashAttention kernels
])
def test_cuda_backend_follows_the_installed_kernels(tmp_path, kernels, backend):
    assert attention_backend("cuda", _package(tmp_path, *kernels)) == backend
    assert attention_backend("cuda:0", _package(tmp_path, *kernels)) == backend


@pytest.mark.parametrize("name", ["FLASH_ATTN", "TRITON_ATTN"])
def test_backend_names_are_the_installed_vllms(name):
    from vllm.config.attention import AttentionConfig
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    assert AttentionConfig.validate_backend_before(name) is AttentionBackendEnum[name]


def test_engine_arguments_the_backend_sets_exist():
    from vllm.engine.arg_utils import AsyncEngineArgs

    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    assert {"model", "served_model_name", "dtype", "tensor_parallel_size", "gpu_memory_utilization",
            "enable_prefix_caching", "logprobs_mode", "max_logprobs", "generation_config", "enforce_eager",
            "disable_log_stats", "attention_backend", "enable_chunked_prefill", "max_num_batched_tokens",
            "block_size"} <= fields


def test_async_llm_calls_the_backend_makes():
    from vllm.v1.engine.async_llm import AsyncLLM

    assert "stat_loggers" in inspect.signature(AsyncLLM.from_engine_args).parameters
    assert list(inspect.signature(AsyncLLM.generate).parameters)[1:4] == ["prompt", "sampling_params", "request_id"]
    assert list(inspect.signature(AsyncLLM.abort).parameters)[1] == "request_id"
    assert callable(AsyncLLM.shutdown)
    assert isinstance(inspect.getattr_static(AsyncLLM, "errored"), property)


def test_request_types_the_backend_builds():
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    prompt = TokensPrompt(prompt_token_ids=[1, 2], cache_salt="s")
    assert prompt["cache_salt"] == "s" and "cache_salt" in TokensPrompt.__annotations__
    judged = SamplingParams(max_tokens=1, temperature=0.0, logprobs=3, prompt_logprobs=2, logprob_token_ids=[4, 5],
                            detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)
    assert (judged.logprobs, judged.prompt_logprobs, judged.logprob_token_ids) == (3, 2, [4, 5])
    grown = SamplingParams(max_tokens=8, temperature=0.7, top_k=5, top_p=0.9, seed=7, stop=["."], stop_token_ids=[0],
                           include_stop_str_in_output=True, detokenize=True, skip_special_tokens=True, logprobs=0,
                           output_kind=RequestOutputKind.DELTA)
    assert (grown.seed, grown.stop, grown.output_kind) == (7, ["."], RequestOutputKind.DELTA)
    assert {RequestOutputKind.FINAL_ONLY, RequestOutputKind.DELTA} <= set(RequestOutputKind)


def test_outputs_and_stats_the_backend_reads():
    from vllm.logprobs import Logprob
    from vllm.outputs import RequestOutput
    from vllm.v1.engine.exceptions import EngineDeadError
    from vllm.v1.metrics.loggers import StatLoggerBase
    from vllm.v1.metrics.stats import IterationStats, PromptTokenStats

    assert "num_cached_tokens" in inspect.signature(RequestOutput).parameters
    assert {"logprob", "rank", "decoded_token"} <= {f.name for f in dataclasses.fields(Logprob)}
    assert issubclass(EngineDeadError, Exception)
    assert list(inspect.signature(StatLoggerBase.record).parameters)[1:] == [
        "scheduler_stats", "iteration_stats", "mm_cache_stats", "engine_idx"]
    stats = IterationStats()
    assert stats.num_generation_tokens == 0 and hasattr(stats.prompt_token_stats, "computed")
    assert "computed" in {f.name for f in dataclasses.fields(PromptTokenStats)}
