"""rain-generate: answer one prompt from the command line, printing committed sets as they arrive."""
from __future__ import annotations

import argparse
import json
import sys

from rain_core.config import PRESETS, EngineConfig, GenerationRequest, SamplingParams, preset
from rain_core.engine import Engine
from rain_core.events import Commit, Finish


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rain-generate", description=__doc__)
    p.add_argument("prompt")
    p.add_argument("--model", default=None, help="HF id, local dir, .gguf file, or alias (smollm2, qwen2.5-coder-0.5b)")
    p.add_argument("--vanilla", action="store_true", help="plain decoding instead of RAIN")
    p.add_argument("--preset", default="harmless", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--max-iters", type=int, default=None, help="maxT (default: the preset's)")
    p.add_argument("--min-iters", type=int, default=None, help="floor of iterations per commit (default 15)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    engine = Engine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype, backend=args.backend))
    rain = None
    if not args.vanilla:
        overrides = {k: v for k, v in (("max_iters", args.max_iters), ("min_iters", args.min_iters)) if v is not None}
        rain = preset(args.preset).with_overrides(**overrides)
    request = GenerationRequest(
        messages=({"role": "user", "content": args.prompt},),
        params=SamplingParams(max_new_tokens=args.max_tokens, seed=args.seed),
        rain=rain,
    )
    engine.run(print_events(engine, request))
    return 0


async def print_events(engine: Engine, request: GenerationRequest) -> None:
    async for event in engine.generate(request):
        if isinstance(event, Commit):
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, Finish):
            print(f"\n\n[finish: {event.finish_reason}] " + json.dumps(event.totals.as_dict()), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
